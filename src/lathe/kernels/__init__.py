"""lathe.kernels: Triton kernels, each beside the plain-PyTorch reference it is tested against.

`gather_rows`, `scatter_add_rows` and `masked_adapter` pick the Triton kernel for CUDA tensors
when Triton imports (mode "auto"), else the reference. CPU always uses the reference, and this
package imports cleanly without Triton.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from lathe.kernels import reference

Mode = Literal["auto", "torch", "triton"]

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_triton_mod = None


def triton_available() -> bool:
    return _HAS_TRITON and torch.cuda.is_available()


def _impl(t: torch.Tensor, mode: Mode):
    global _triton_mod
    if mode == "torch" or (mode == "auto" and not (t.is_cuda and _HAS_TRITON)):
        return reference
    if not t.is_cuda:
        raise RuntimeError("kernels=triton needs CUDA tensors (CPU uses the torch reference)")
    if not _HAS_TRITON:
        raise RuntimeError("kernels=triton: triton is not installed")
    if _triton_mod is None:
        from lathe.kernels import triton_meft

        _triton_mod = triton_meft
    return _triton_mod


def gather_rows(src: torch.Tensor, ids: torch.Tensor, out: torch.Tensor, mode: Mode = "auto") -> torch.Tensor:
    return _impl(out, mode).gather_rows(src, ids, out)


def scatter_add_rows(dest: torch.Tensor, ids: torch.Tensor, src: torch.Tensor, mode: Mode = "auto") -> torch.Tensor:
    return _impl(dest, mode).scatter_add_rows(dest, ids, src)


def masked_adapter(x, keys, values, slot, gate, mode: Mode = "auto") -> torch.Tensor:
    return _impl(x, mode).masked_adapter(x, keys, values, slot, gate)


class GatherRows(torch.autograd.Function):
    """src[ids] with the kernels: the gather forward, the scatter-add of row gradients backward."""

    @staticmethod
    def forward(ctx, src, ids, mode):
        ctx.ids, ctx.mode, ctx.shape = ids, mode, src.shape
        out = torch.empty(ids.numel(), src.shape[1], dtype=src.dtype, device=src.device)
        return gather_rows(src.contiguous(), ids, out, mode)

    @staticmethod
    def backward(ctx, g):
        dest = torch.zeros(ctx.shape, dtype=torch.float32, device=g.device)
        return scatter_add_rows(dest, ctx.ids, g.contiguous(), ctx.mode), None, None


def gather_rows_autograd(src: torch.Tensor, ids: torch.Tensor, mode: Mode = "auto") -> torch.Tensor:
    return GatherRows.apply(src, ids, mode)
