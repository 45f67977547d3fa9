"""Plain-PyTorch references for the MEFT kernels. CPU always uses these; the Triton kernels in
`lathe.kernels.triton_meft` are tested against them."""

from __future__ import annotations

import torch


def gather_rows(src: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = src[ids[i]] for i < len(ids); the remaining rows of `out` are zeroed."""
    n = ids.numel()
    out[:n].copy_(src.index_select(0, ids.long()))
    out[n:].zero_()
    return out


def scatter_add_rows(dest: torch.Tensor, ids: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dest[ids[i]] += src[i] (repeated ids accumulate)."""
    return dest.index_add_(0, ids.long(), src.to(dest.dtype))


def masked_adapter(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor,
                   gate: torch.Tensor) -> torch.Tensor:
    """The top-k-masked adapter matmul over a row buffer, differentiable by autograd.

    x (T, d'), keys (n, d'), values (n, d), slot (T, k) buffer rows picked per token (−1: none),
    gate (T, k). out_t = Σ_j ReLU(gate_tj · ⟨x_t, keys[slot_tj]⟩) · values[slot_tj]."""
    valid = slot >= 0
    s_idx = slot.clamp(min=0)
    raw = (x @ keys.T).gather(1, s_idx)
    act = torch.relu(raw * gate) * valid
    dense = torch.zeros(x.shape[0], keys.shape[0], dtype=act.dtype, device=x.device).scatter_add(1, s_idx, act)
    return dense @ values
