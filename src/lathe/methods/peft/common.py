"""Pieces every lathe adapter shares: strict base config, target matching, the adapter-layer
base class (merge/unmerge/disable), injection, parameter reports and merge_and_unload.

Pure PyTorch (no Ray). Follows HF peft conventions: `target_modules` is a list of names
(matched as the full module name or its last dotted components) or one regex string
(full match); the wrapped layer keeps the original as `base_layer`; adapter weights live
in dicts keyed by adapter name.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from pydantic import Field, ValidationError
from torch import nn

from lathe.platform.config import Strict
from lathe.platform.errors import ConfigError

# Suffix sets tried in order when `target_modules` is not given.
DEFAULT_TARGETS = [["q_proj", "v_proj"], ["query", "value"], ["c_attn"], ["q_lin", "v_lin"]]


class AdapterConfig(Strict):
    """Options shared by every adapter (HF peft LoraConfig semantics)."""

    r: int = Field(8, ge=1, description="rank (MELoRA: the mini-rank)")
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str | None = Field(
        None, description="names/suffixes, or one regex (full match); default: q_proj,v_proj / query,value")
    modules_to_save: list[str] = Field(default_factory=list, description="extra modules trained in full")
    bias: Literal["none", "all", "lora_only"] = "none"
    fan_in_fan_out: bool | None = Field(None, description="weight stored (in, out) like GPT-2 Conv1D; auto-detected")
    use_rslora: bool = False
    adapter_name: str = Field("default", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_config(cls: type[Strict], options: dict | Strict | None, method: str) -> Any:
    """Validate `options` against `cls`; any problem -> one-line ConfigError naming the key."""
    if isinstance(options, cls):
        return options
    try:
        return cls.model_validate(dict(options or {}))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"adapter.{key} ({method}): {err['msg']}"
                          + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" else "")) from None


# ---------------------------------------------------------------------------------------
# Target selection


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def is_linear_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or _is_conv1d(m)


def linear_dims(m: nn.Module) -> tuple[int, int, bool]:
    """(d_in, d_out, fan_in_fan_out) of an nn.Linear or a GPT-2 Conv1D."""
    if _is_conv1d(m):
        d_in, d_out = m.weight.shape
        return d_in, d_out, True
    return m.in_features, m.out_features, False


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, targets: list[str] | str | None, method: str) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to adapt. Errors name the pattern and show candidates."""
    linear = [(n, m) for n, m in model.named_modules() if is_linear_like(m) and n]
    if targets is None:
        for cand in DEFAULT_TARGETS:
            hit = [(n, m) for n, m in linear if _matches(n, cand)]
            if hit:
                return hit
        raise ConfigError(f"adapter.target_modules ({method}): not set and no default ({DEFAULT_TARGETS}) "
                          f"matches this model; linear layers: {_suffixes(linear)}")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise ConfigError(f"adapter.target_modules ({method}): bad regex {targets!r}: {e}") from None
    hit = [(n, m) for n, m in linear if _matches(n, targets)]
    if not hit:
        other = [n for n, m in model.named_modules() if n and _matches(n, targets)]
        why = (f"it matches only non-linear modules ({other[0]}: {type(dict(model.named_modules())[other[0]]).__name__})"
               if other else "it matches no module")
        raise ConfigError(f"adapter.target_modules={targets!r} ({method}): {why}; "
                          f"linear layers here end in: {_suffixes(linear)}")
    return hit


def _suffixes(linear) -> str:
    return ", ".join(sorted({n.rsplit(".", 1)[-1] for n, _ in linear})) or "none"


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ---------------------------------------------------------------------------------------
# Adapter layers


class AdapterLayer(nn.Module):
    """Wraps a frozen linear layer; subclasses implement `adapter_out` and `delta_weight`.

    h = base(x) + Σ_{active, unmerged adapters} adapter_out(name, x)
    """

    method = "adapter"

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features, auto_fifo = linear_dims(base_layer)
        self.fan_in_fan_out = auto_fifo if fan_in_fan_out is None else fan_in_fan_out
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        self.scaling: dict[str, float] = {}
        self.dropout = nn.ModuleDict()

    @property
    def weight(self) -> torch.Tensor:  # models that read `.weight` of a projection still work
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def adapter_names(self) -> list[str]:
        return list(self.scaling)

    def adapter_out(self, name: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW in the base weight's own layout ((out, in), or (in, out) when fan_in_fan_out)."""
        raise NotImplementedError

    def adapter_dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        out = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            dt = self.adapter_dtype(name)
            out = out + self.adapter_out(name, x.to(dt)).to(out.dtype)
        return out

    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> None:
        for name in names or self.active_adapters:
            if name in self.merged_adapters:
                continue
            w = self.base_layer.weight
            # fp32 product on CPU for half weights (peft convention)
            delta = self.delta_weight(name).to(torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype)
            w.data = (w.data.to(delta.dtype) + delta).to(w.dtype)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w = self.base_layer.weight
            delta = self.delta_weight(name).to(torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype)
            w.data = (w.data.to(delta.dtype) - delta).to(w.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names()}"


def make_dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


def kaiming_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """kaiming_uniform_(a=√5) with an explicit fan-in: bound = 1/√fan_in."""
    bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    for n, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            yield n, m


def freeze_base(model: nn.Module, cfg: AdapterConfig, targets: list[str]) -> None:
    """Freeze everything; then open biases / modules_to_save as the config asks."""
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.bias == "all":
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.requires_grad_(True)
    elif cfg.bias == "lora_only":
        for t in targets:
            b = getattr(model.get_submodule(t), "bias", None)
            if b is not None:
                b.requires_grad_(True)
    for pattern in cfg.modules_to_save:
        hits = [m for n, m in model.named_modules() if n and _matches(n, [pattern])]
        if not hits:
            raise ConfigError(f"adapter.modules_to_save: {pattern!r} matches no module")
        for m in hits:
            for p in m.parameters():
                p.requires_grad_(True)


def extra_trainable_state(model: nn.Module, cfg: dict) -> dict[str, torch.Tensor]:
    """Biases and modules_to_save tensors (saved next to the adapter)."""
    out = {}
    bias = cfg.get("bias", "none")
    mts = cfg.get("modules_to_save") or []
    for n, p in model.named_parameters():
        clean = strip_wrapper(n)
        if bias != "none" and n.endswith("bias") and p.requires_grad:
            out[clean] = p
        elif any(_matches(mn, [pat]) for pat in mts for mn in _prefixes(clean)):
            out[clean] = p
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def strip_wrapper(name: str) -> str:
    """Parameter name as in the un-adapted model (drop `.base_layer`)."""
    return name.replace(".base_layer.", ".")


def load_extra_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = {strip_wrapper(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for k, v in state.items():
            if k not in params:
                raise ConfigError(f"adapter file holds {k!r}, which this model lacks")
            params[k].copy_(v)


# ---------------------------------------------------------------------------------------
# Whole-model helpers


def get_nb_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts, counting shared tensors once."""
    seen, train, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        train += p.numel() if p.requires_grad else 0
    return train, total


def trainable_report(model: nn.Module) -> dict:
    """Counts per method: trainable (as stored) and effective (distinct, for ASLoRA)."""
    train, total = get_nb_trainable_parameters(model)
    eff = train
    for m in model.modules():
        fn = getattr(m, "effective_param_savings", None)
        if fn is not None:
            eff -= fn()
    return {"trainable": train, "effective_trainable": eff, "total": total,
            "trainable_pct": 100.0 * eff / max(total, 1),
            "adapted_layers": sum(1 for _ in adapter_layers(model))}


def print_trainable_parameters(model: nn.Module) -> str:
    r = trainable_report(model)
    line = (f"trainable params: {r['effective_trainable']:,} || all params: {r['total']:,} "
            f"|| trainable%: {r['trainable_pct']:.4f}")
    print(line)
    return line


def set_adapter_enabled(model: nn.Module, enabled: bool) -> None:
    for _, layer in adapter_layers(model):
        layer.disabled = not enabled


@contextlib.contextmanager
def disable_adapter(model: nn.Module):
    """`with disable_adapter(model): ...` runs the base model (unmerging if merged)."""
    states = [(layer, layer.disabled) for _, layer in adapter_layers(model)]
    try:
        for layer, _ in states:
            layer.disabled = True
        yield model
    finally:
        for layer, was in states:
            layer.disabled = was


def set_active_adapters(model: nn.Module, names: list[str]) -> None:
    for _, layer in adapter_layers(model):
        layer.active_adapters = [n for n in names if n in layer.adapter_names()]


def merge_adapters(model: nn.Module) -> nn.Module:
    for _, layer in adapter_layers(model):
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    for _, layer in adapter_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every active adapter into the base weights and drop the wrappers: a plain HF model."""
    for name, layer in list(adapter_layers(model)):
        layer.merge()
        set_submodule(model, name, layer.base_layer)
    for n in [n for n, _ in model.named_children() if n.startswith("lathe_")]:
        delattr(model, n)
    model.__dict__.pop("lathe_peft", None)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_merged(model: nn.Module, tokenizer: Any, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """merge_and_unload into a standalone HF model dir (safetensors) that vLLM can load.

    Works on a deep copy, so `model` keeps its adapters.
    """
    import copy

    from lathe.platform.zoo import save_pretrained

    merged = merge_and_unload(copy.deepcopy(model))
    if dtype is not None:
        merged = merged.to(dtype)
    out = save_pretrained(merged, tokenizer, out_dir) if tokenizer is not None else _save_model(merged, out_dir)
    return Path(out)


def _save_model(model, out_dir) -> Path:
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(p, safe_serialization=True)
    return p


def read_adapter_config(path: str | Path) -> dict:
    f = Path(path) / "adapter_config.json"
    if not f.is_file():
        raise ConfigError(f"{f}: no adapter_config.json here (not an adapter directory)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f}: invalid JSON ({e.msg} at line {e.lineno})") from None


def read_adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    f = Path(path) / "adapter_model.safetensors"
    if not f.is_file():
        raise ConfigError(f"{f}: missing adapter weights")
    return load_file(str(f))


def write_adapter(out_dir: str | Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"))
    return out
