"""UIPE (Unlearning Improvement via Parameter Extrapolation), post hoc, no training:

    v = θ_un − θ_ini,    θ(α) = θ_un + α·v  (= θ_ini + (1+α)·v)

Tensor by tensor, in float32, as θ_un + α·v so that α = 0 gives θ_un bitwise; cast back to
θ_un's stored dtype. Only floating-point parameters present in both are extrapolated; buffers
(rotary inv_freq, masks) and non-float tensors are copied from θ_un unchanged. A missing key
or shape mismatch is an error. For LoRA-style adapters, either extrapolate the merged weights
(same function) or scale each adapter's up-projection (lora_B) by (1+α) without merging; the
two agree because the merged delta s·B·A is linear in B.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterable, Mapping

import torch

from lathe.platform.errors import LatheError


def extrapolate_tensor(ini: torch.Tensor, un: torch.Tensor, alpha: float) -> torch.Tensor:
    u = un.detach().to(torch.float32)
    v = u - ini.detach().to(torch.float32)
    return (u + alpha * v).to(un.dtype)


def extrapolate_state(ini: Mapping[str, torch.Tensor], un: Mapping[str, torch.Tensor], alpha: float,
                      params: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """θ(α) as a new state dict. `params` names the parameters (others, i.e. buffers, are
    copied from `un`); default: every floating-point tensor."""
    missing = sorted(set(un) - set(ini))
    if missing:
        raise LatheError(f"UIPE: θ_ini lacks {len(missing)} tensors of θ_un, e.g. {missing[0]!r}")
    extra = sorted(set(ini) - set(un))
    if extra:
        raise LatheError(f"UIPE: θ_un lacks {len(extra)} tensors of θ_ini, e.g. {extra[0]!r}")
    allowed = set(params) if params is not None else None
    out: dict[str, torch.Tensor] = {}
    for name, u in un.items():
        i = ini[name]
        if i.shape != u.shape:
            raise LatheError(f"UIPE: shape mismatch for {name!r}: θ_ini {tuple(i.shape)} vs θ_un {tuple(u.shape)}")
        if not u.is_floating_point() or (allowed is not None and name not in allowed):
            out[name] = u.clone()
        else:
            out[name] = extrapolate_tensor(i, u, alpha)
    return out


@torch.no_grad()
def extrapolate_model(ini: torch.nn.Module, un: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """Overwrite `un`'s parameters with θ(α) in place (and return it). Tied parameters share
    storage, so each is extrapolated once and stays tied; buffers are not touched."""
    ini_params = dict(ini.named_parameters(remove_duplicate=False))
    un_names = {n for n, _ in un.named_parameters(remove_duplicate=False)}
    extra = sorted(set(ini_params) - un_names)
    if extra:
        raise LatheError(f"UIPE: θ_un lacks {len(extra)} parameters of θ_ini, e.g. {extra[0]!r}")
    seen: set[int] = set()
    for name, p in un.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in seen:  # a tied alias of a tensor already done
            continue
        seen.add(key)
        if name not in ini_params:
            raise LatheError(f"UIPE: θ_ini lacks parameter {name!r}")
        q = ini_params[name]
        if q.shape != p.shape:
            raise LatheError(f"UIPE: shape mismatch for {name!r}: θ_ini {tuple(q.shape)} vs θ_un {tuple(p.shape)}")
        if p.is_floating_point():
            p.copy_(extrapolate_tensor(q, p, alpha))
    return un


def _ini_name(name: str, ini: Mapping[str, torch.Tensor]) -> str | None:
    """θ_ini's name for a trained non-LoRA tensor of an adapted model: as is, without the
    `.base_layer` wrapper (trained biases), or peft's `modules_to_save.default` copy's original."""
    for cand in (name, name.replace(".base_layer.", "."),
                 name.replace(".modules_to_save.default.", ".original_module."),
                 name.replace(".modules_to_save.default.", ".")):
        if cand in ini:
            return cand
    return None


def scale_adapter_state(adapter: Mapping[str, torch.Tensor], alpha: float,
                        ini: Mapping[str, torch.Tensor] | None = None,
                        up_markers: tuple[str, ...] = ("lora_B", "lora_up"),
                        down_markers: tuple[str, ...] = ("lora_A", "lora_down")) -> dict[str, torch.Tensor]:
    """UIPE on an adapter's trained state without merging. LoRA: B starts at 0, so scaling each
    up-projection by (1+α) scales the merged delta s·B·A by (1+α); A is copied. Every other
    trained float tensor (modules_to_save copies, trained biases) is extrapolated against its θ_ini
    value from `ini` (the base model's state dict): θ_un + α(θ_un − θ_ini). A trained tensor
    without a θ_ini value is an error, never silently copied. Non-float tensors are copied."""
    ups = [k for k in adapter if any(m in k for m in up_markers)]
    if not ups:
        raise LatheError(f"UIPE: no adapter up-projection tensors (names containing {' or '.join(up_markers)})")
    out = {}
    for k, t in adapter.items():
        if not t.is_floating_point() or any(m in k for m in down_markers):
            out[k] = t.clone()
        elif k in ups:
            out[k] = (t.to(torch.float32) * (1 + alpha)).to(t.dtype)
        else:
            src = _ini_name(k, ini) if ini is not None else None
            if src is None:
                raise LatheError(f"UIPE: trained tensor {k!r} (modules_to_save or bias) has no θ_ini value; "
                                 "pass the base model's state dict as `ini`")
            if ini[src].shape != t.shape:
                raise LatheError(f"UIPE: shape mismatch for {k!r}: θ_ini {tuple(ini[src].shape)} vs "
                                 f"θ_un {tuple(t.shape)}")
            out[k] = extrapolate_tensor(ini[src], t, alpha)
    return out


# ---------------------------------------------------------------------------------------
# θ(α) as a normal HF checkpoint, streamed shard by shard


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over a checkpoint directory's safetensors files (name and bytes), 16 hex digits."""
    h = hashlib.sha256()
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise LatheError(f"{path}: no .safetensors files")
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def write_checkpoint(ini_dir: str | Path, un_dir: str | Path, alpha: float, out_dir: str | Path,
                     base_method: str = "", params: Iterable[str] | None = None) -> dict:
    """Write θ(α) = θ_un + α(θ_un − θ_ini) as an HF checkpoint: θ_un's config and tokenizer files,
    one output shard per θ_un shard (one tensor in memory at a time besides the shard being
    written), and `uipe.json` + safetensors metadata with α, the base method and the
    fingerprints of θ_ini, θ_un and the result. Returns the metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ini_dir, un_dir, out_dir = Path(ini_dir), Path(un_dir), Path(out_dir)
    ini_files = sorted(ini_dir.glob("*.safetensors"))
    un_files = sorted(un_dir.glob("*.safetensors"))
    if not ini_files or not un_files:
        raise LatheError(f"UIPE: {ini_dir if not ini_files else un_dir}: no .safetensors files")
    where: dict[str, Path] = {}
    for f in ini_files:
        with safe_open(str(f), "pt") as fh:
            where.update({k: f for k in fh.keys()})
    un_keys: set[str] = set()
    for f in un_files:
        with safe_open(str(f), "pt") as fh:
            un_keys.update(fh.keys())
    for a, b, what in ((un_keys, set(where), "θ_ini"), (set(where), un_keys, "θ_un")):
        missing = sorted(a - b)
        if missing:
            raise LatheError(f"UIPE: {what} lacks {len(missing)} tensors, e.g. {missing[0]!r}")
    meta = {"uipe_alpha": float(alpha), "base_method": base_method,
            "theta_ini": str(ini_dir), "theta_ini_fingerprint": checkpoint_fingerprint(ini_dir),
            "theta_un": str(un_dir), "theta_un_fingerprint": checkpoint_fingerprint(un_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in un_dir.iterdir():  # config, generation config, tokenizer, shard index
        if f.is_file() and f.suffix != ".safetensors" and f.name != "uipe.json":
            shutil.copyfile(f, out_dir / f.name)
    allowed = set(params) if params is not None else None
    st_meta = {"format": "pt", **{k: str(v) for k, v in meta.items()}}
    for f in un_files:
        shard: dict[str, torch.Tensor] = {}
        with safe_open(str(f), "pt") as fu:
            for k in fu.keys():
                u = fu.get_tensor(k)
                with safe_open(str(where[k]), "pt") as fi:
                    i = fi.get_tensor(k)
                if i.shape != u.shape:
                    raise LatheError(f"UIPE: shape mismatch for {k!r}: θ_ini {tuple(i.shape)} vs θ_un {tuple(u.shape)}")
                keep = not u.is_floating_point() or (allowed is not None and k not in allowed)
                shard[k] = u.clone() if keep else extrapolate_tensor(i, u, alpha)
        save_file(shard, str(out_dir / f.name), metadata=st_meta)
        del shard
    meta["fingerprint"] = checkpoint_fingerprint(out_dir)
    (out_dir / "uipe.json").write_text(json.dumps(meta, indent=1))
    return meta
