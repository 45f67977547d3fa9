"""Model-agnostic plumbing for editors: module resolver, token positions, hooks, weights, stats.

Pure PyTorch. Modules are found through name templates (`model.layers.{}.mlp.down_proj`);
defaults exist per *architecture* (config.model_type), anything else needs explicit templates.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from pydantic import Field

from lathe.platform.config import Strict
from lathe.platform.errors import ConfigError, LatheError

log = logging.getLogger(__name__)


class ModuleTemplates(Strict):
    layers: str | None = Field(None, description="decoder block i, e.g. model.layers.{}")
    rewrite: str | None = Field(None, description="MLP output projection of block i, e.g. model.layers.{}.mlp.down_proj")
    final_norm: str | None = None
    lm_head: str | None = None


ARCH_TEMPLATES: dict[str, dict[str, str]] = {
    "llama": dict(layers="model.layers.{}", rewrite="model.layers.{}.mlp.down_proj", final_norm="model.norm",
                  lm_head="lm_head"),
    "mistral": dict(layers="model.layers.{}", rewrite="model.layers.{}.mlp.down_proj", final_norm="model.norm",
                    lm_head="lm_head"),
    "qwen2": dict(layers="model.layers.{}", rewrite="model.layers.{}.mlp.down_proj", final_norm="model.norm",
                  lm_head="lm_head"),
    "gptj": dict(layers="transformer.h.{}", rewrite="transformer.h.{}.mlp.fc_out", final_norm="transformer.ln_f",
                 lm_head="lm_head"),
    "gpt2": dict(layers="transformer.h.{}", rewrite="transformer.h.{}.mlp.c_proj", final_norm="transformer.ln_f",
                 lm_head="lm_head"),
    "gpt_neox": dict(layers="gpt_neox.layers.{}", rewrite="gpt_neox.layers.{}.mlp.dense_4h_to_h",
                     final_norm="gpt_neox.final_layer_norm", lm_head="embed_out"),
    "opt": dict(layers="model.decoder.layers.{}", rewrite="model.decoder.layers.{}.fc2",
                final_norm="model.decoder.final_layer_norm", lm_head="lm_head"),
}


@dataclass
class Resolver:
    model: torch.nn.Module
    t: dict[str, str]

    @classmethod
    def of(cls, model: torch.nn.Module, templates: ModuleTemplates | None = None) -> "Resolver":
        arch = getattr(getattr(model, "config", None), "model_type", None)
        base = dict(ARCH_TEMPLATES.get(arch, {}))
        if templates is not None:
            base.update({k: v for k, v in templates.model_dump().items() if v is not None})
        missing = [k for k in ("layers", "rewrite", "final_norm", "lm_head") if k not in base]
        if missing:
            raise ConfigError(f"modules: architecture {arch!r} has no default templates; set modules.{missing[0]} "
                              f"(e.g. 'model.layers.{{}}.mlp.down_proj')")
        return cls(model, base)

    def get(self, name: str) -> torch.nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"modules: the model has no module {name!r}") from None

    def layer(self, i: int) -> torch.nn.Module:
        return self.get(self.t["layers"].format(i))

    def rewrite_name(self, i: int) -> str:
        return self.t["rewrite"].format(i)

    def rewrite(self, i: int) -> torch.nn.Module:
        return self.get(self.rewrite_name(i))

    def logit_lens(self, h: torch.Tensor) -> torch.Tensor:
        return self.get(self.t["lm_head"])(self.get(self.t["final_norm"])(h))


def num_layers(model) -> int:
    cfg = model.config
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, k, None):
            return int(getattr(cfg, k))
    raise LatheError("cannot tell the number of layers from the model config")


def preset_layers(n: int) -> dict[str, Any]:
    """Team defaults for a depth-n model (spec section 8); 4 layers -> ROME 1, MEMIT [1, 2], L_mid 2."""
    if n == 4:
        return {"rome_layer": 1, "memit_layers": [1, 2], "mid_layer": 2}
    return {"rome_layer": round(0.17 * n), "memit_layers": list(range(round(0.12 * n), round(0.28 * n) + 1)),
            "mid_layer": round(0.5 * n)}


# ---------------------------------------------------------------------------------------
# Weights (nn.Linear orientation d_out x d_in; GPT-2 Conv1D stores the transpose)


def is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_of(module) -> torch.Tensor:
    """The weight in nn.Linear orientation (a view; do not modify)."""
    return module.weight.T if is_conv1d(module) else module.weight


def add_delta(module, delta: torch.Tensor) -> None:
    """W += delta, with delta in nn.Linear orientation."""
    with torch.no_grad():
        d = delta.T if is_conv1d(module) else delta
        module.weight.add_(d.to(module.weight.dtype))


def snapshot(model, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def restore(model, originals: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in originals.items():
            params[n].copy_(t)


@dataclass
class EditResult:
    """What an editor changed: new weights and originals (restore with `restore(model, originals)`)."""

    weights: dict[str, torch.Tensor]
    originals: dict[str, torch.Tensor]
    info: dict[str, Any]

    def deltas(self) -> dict[str, torch.Tensor]:
        return {n: self.weights[n] - self.originals[n] for n in self.weights}


def finish(model, originals: dict[str, torch.Tensor], info: dict | None = None) -> EditResult:
    params = dict(model.named_parameters())
    return EditResult({n: params[n].detach().clone() for n in originals}, originals, info or {})


# ---------------------------------------------------------------------------------------
# Tokens and positions


def encode(tok, texts: list[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
    ids = [tok(t)["input_ids"] for t in texts]
    return pad(ids, tok.pad_token_id if tok.pad_token_id is not None else 0, padding_side)


def pad(ids: list[list[int]], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    w = max(len(x) for x in ids)
    out = torch.full((len(ids), w), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), w), dtype=torch.long)
    offs = []
    for i, x in enumerate(ids):
        o = w - len(x) if side == "left" else 0
        out[i, o:o + len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, o:o + len(x)] = 1
        offs.append(o)
    return {"input_ids": out, "attention_mask": mask, "offsets": torch.tensor(offs), "lengths":
            torch.tensor([len(x) for x in ids])}


def continuation_ids(tok, prompt: str, cand: str, legacy_llama: bool = False) -> list[int]:
    """Token ids of candidate `cand` after `prompt` (spec section 3)."""
    if legacy_llama:
        return tok(cand, add_special_tokens=False)["input_ids"]
    p = tok(prompt)["input_ids"]
    full = tok(prompt + " " + cand)["input_ids"]
    if len(full) > len(p) and full[:len(p)] == p:
        return full[len(p):]
    log.warning("prompt ids are not a prefix of prompt+candidate ids; tokenising ' ' + candidate")
    ids = tok(" " + cand, add_special_tokens=False)["input_ids"]
    if len(ids) > 1 and tok.convert_ids_to_tokens(ids[0]) in ("▁", "Ġ"):
        ids = ids[1:]
    return ids


def subject_last_index(tok, text: str, subject: str) -> int:
    """Index of the last token of the subject's last occurrence in tok(text) (unpadded)."""
    start = text.rfind(subject)
    if start < 0:
        raise LatheError(f"subject {subject!r} does not occur in prompt {text!r}")
    end = start + len(subject)
    try:
        enc = tok(text, return_offsets_mapping=True)
        offs = enc["offset_mapping"]
        idx = [i for i, (a, b) in enumerate(offs) if a < end and b > a]
        if idx:
            return idx[-1]
    except (NotImplementedError, TypeError, KeyError):
        pass
    return len(tok(text[:end])["input_ids"]) - 1


def target_positions(n: int, m: int, offset: int = 0) -> list[int]:
    """Positions whose logits predict the m target tokens of a sequence of real length n ending in
    target[:-1], plus the left-padding offset."""
    return [offset + n - m + j for j in range(m)]


# ---------------------------------------------------------------------------------------
# Hooks


def _out_tensor(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_out(out, new):
    return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


@contextlib.contextmanager
def add_at_positions(module, delta: torch.Tensor, rows: list[int], cols: list[int],
                     capture: dict | None = None) -> Iterator[None]:
    """Adds `delta` to module output at (rows[i], cols[i]); stores the pre-delta output in capture."""

    def hook(mod, inp, out):
        h = _out_tensor(out)
        if capture is not None and "out" not in capture:
            capture["out"] = h[rows, cols].detach().clone()
        h = h.clone()
        h[rows, cols] = h[rows, cols] + delta.to(h.dtype)
        return _replace_out(out, h)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by `capture_io(stop=True)` once the module ran: later layers cannot change its input."""


@contextlib.contextmanager
def capture_io(module, stop: bool = False) -> Iterator[dict]:
    got: dict = {}

    def hook(mod, inp, out):
        got["in"] = inp[0].detach()
        got["out"] = _out_tensor(out).detach()
        if stop:
            raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_blocks(resolver: "Resolver", layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Each listed decoder block's output (the residual stream, before any final norm), with its
    graph. Use instead of `output_hidden_states`, whose last entry is already final-normed."""
    got: dict[int, torch.Tensor] = {}
    handles = []
    for layer in sorted(set(layers)):
        def hook(mod, inp, out, layer=layer):
            got[layer] = _out_tensor(out)
        handles.append(resolver.layer(layer).register_forward_hook(hook))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def io_at_subject(model, tok, module, texts: list[str], subjects: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, outputs) of `module` at the subject-last token of each text: (n, d_in), (n, d_out)."""
    enc = encode(tok, texts)
    cols = [subject_last_index(tok, t, s) for t, s in zip(texts, subjects)]
    with capture_io(module) as got:
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    rows = list(range(len(texts)))
    return got["in"][rows, cols].float(), got["out"][rows, cols].float()


# ---------------------------------------------------------------------------------------
# KL and context templates


def kl_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Reverse KL(p_student || q_teacher) = sum_v p (log p - log q), summed over vocab, mean over rows."""
    return F.kl_div(teacher_logp, student_logp, log_target=True, reduction="sum") / student_logp.shape[0]


@torch.no_grad()
def context_templates(model, tok, length_params: list[list[int]], seed: int = 0) -> list[str]:
    """["{}"] + generated prefixes + ". {}", top-k 5 sampling from the unedited model, seeded."""
    out = ["{}"]
    words = ["The", "Therefore", "Because", "I", "You"]
    gen = torch.Generator().manual_seed(seed)
    for length, count in length_params:
        for c in range(count):
            ids = tok(words[c % len(words)])["input_ids"]
            x = torch.tensor([ids])
            for _ in range(length):
                logits = model(input_ids=x).logits[0, -1].float()
                top = torch.topk(logits, 5)
                pick = top.indices[torch.multinomial(F.softmax(top.values, -1), 1, generator=gen)]
                x = torch.cat([x, pick.view(1, 1)], 1)
            text = tok.decode(x[0], skip_special_tokens=True).replace("{", " ").replace("}", " ")
            out.append(text + ". {}")
    return out


# ---------------------------------------------------------------------------------------
# Second-moment statistics of the rewrite module's input


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Every byte of a tensor in its stored dtype (bf16 included)."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_fingerprint(t: torch.Tensor) -> str:
    h = hashlib.sha256(tensor_bytes(t))
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    return h.hexdigest()[:16]


def param_fingerprints(model) -> dict[str, str]:
    """Per-parameter hash over the whole tensor (the single protocol's restore check)."""
    return {n: tensor_fingerprint(p) for n, p in model.named_parameters()}


def model_fingerprint(model) -> str:
    """Hash of the whole state dict: every tensor's name, dtype, shape and every byte."""
    h = hashlib.sha256()
    for n, p in sorted(model.state_dict().items()):
        h.update(n.encode())
        h.update(tensor_fingerprint(p).encode())
    return h.hexdigest()[:16]


def texts_hash(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


@torch.no_grad()
def second_moment(model, tok, module, texts: list[str], n_samples: int, max_length: int = 128,
                  batch_size: int = 16, seed: int = 0) -> torch.Tensor:
    """C = E[k k^T] over every real token of up to n_samples texts (float32 accumulation in float64)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    chosen = [texts[i] for i in order[:n_samples]]
    if not chosen:
        raise LatheError("covariance statistics need a non-empty corpus")
    acc, count = None, 0
    for i in range(0, len(chosen), batch_size):
        ids = [tok(t)["input_ids"][:max_length] for t in chosen[i:i + batch_size]]
        enc = pad(ids, tok.pad_token_id or 0)
        with capture_io(module, stop=True) as got:  # skip the layers above the module
            try:
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            except StopForward:
                pass
        k = got["in"][enc["attention_mask"].bool()].double()
        acc = k.T @ k if acc is None else acc + k.T @ k
        count += k.shape[0]
    c = (acc / count)
    return ((c + c.T) / 2).float()


def stats_key(fingerprint: str, layer: int, corpus_hash: str, n_samples: int, dtype: str = "float32",
              seed: int = 0, module: str = "") -> str:
    """Cache key: model, layer, rewrite module (its resolved name), corpus, subset size and seed, dtype."""
    mod = re.sub(r"[^A-Za-z0-9_.]", "_", module)
    return f"{fingerprint}-l{layer}-{mod}-{corpus_hash}-n{n_samples}-s{seed}-{dtype}"


def load_or_compute_stats(model, tok, resolver: Resolver, layers: list[int], texts: list[str], n_samples: int,
                          cache_dir: str | Path | None, seed: int = 0) -> dict[int, torch.Tensor]:
    """Per-layer C cached as safetensors keyed by (model fingerprint, layer, rewrite module, corpus hash,
    n, subset seed, dtype)."""
    from safetensors.torch import load_file, save_file

    fp, ch = model_fingerprint(model), texts_hash(texts)
    out = {}
    for layer in layers:
        key = stats_key(fp, layer, ch, n_samples, seed=seed, module=resolver.rewrite_name(layer))
        path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
        if path is not None and path.is_file():
            out[layer] = load_file(str(path))["mom2"]
            continue
        c = second_moment(model, tok, resolver.rewrite(layer), texts, n_samples, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"mom2": c.contiguous()}, str(path))
        out[layer] = c
    return out


def with_ridge(c: torch.Tensor, rho: float) -> torch.Tensor:
    if rho <= 0:
        return c
    d = c.shape[0]
    return c + rho * (torch.trace(c) / d) * torch.eye(d, dtype=c.dtype)
