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


def scale_adapter_state(adapter: Mapping[str, torch.Tensor], alpha: float,
                        up_markers: tuple[str, ...] = ("lora_B", "lora_up")) -> dict[str, torch.Tensor]:
    """UIPE on an adapter state dict whose θ_ini delta is zero (LoRA: B starts at 0): scale each
    up-projection by (1+α), i.e. the merged delta s·B·A by (1+α). Other tensors are copied."""
    ups = [k for k in adapter if any(m in k for m in up_markers)]
    if not ups:
        raise LatheError(f"UIPE: no adapter up-projection tensors (names containing {' or '.join(up_markers)})")
    out = {}
    for k, t in adapter.items():
        if k in ups and t.is_floating_point():
            out[k] = (t.to(torch.float32) * (1 + alpha)).to(t.dtype)
        else:
            out[k] = t.clone()
    return out
