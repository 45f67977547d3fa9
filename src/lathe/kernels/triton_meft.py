"""Triton kernels for MEFT: the row gather into the fixed buffers, the scatter-add of row
gradients, and the top-k-masked adapter matmul (forward and backward).

Imported only when Triton is present (never on the CPU-only install); `lathe.kernels` picks
these on CUDA tensors and the references in `lathe.kernels.reference` otherwise. The masked
matmul costs T·k·(d' + d) multiply-adds instead of the reference's T·n·(d' + d): each token
reads only its own k rows of the buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_D = 128


@triton.jit
def _gather_rows_kernel(src_ptr, ids_ptr, out_ptr, n, D, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < D
    row = tl.load(ids_ptr + tl.minimum(i, n - 1)).to(tl.int64)  # rows past n: read a valid id, store 0
    live = (tl.zeros([BLOCK], dtype=tl.int32) + i) < n
    vals = tl.load(src_ptr + row * D + cols, mask=cmask & live, other=0.0)
    tl.store(out_ptr + i.to(tl.int64) * D + cols, vals, mask=cmask)


@triton.jit
def _scatter_add_rows_kernel(dest_ptr, ids_ptr, src_ptr, D, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < D
    row = tl.load(ids_ptr + i).to(tl.int64)
    vals = tl.load(src_ptr + i.to(tl.int64) * D + cols, mask=cmask, other=0.0)
    tl.atomic_add(dest_ptr + row * D + cols, vals, mask=cmask)


def gather_rows(src: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    assert src.is_contiguous() and out.is_contiguous() and src.shape[1] == out.shape[1]
    ids = ids.contiguous()
    n_out, D = out.shape
    if ids.numel() == 0:
        return out.zero_()
    if n_out:
        grid = (n_out, triton.cdiv(D, BLOCK_D))
        _gather_rows_kernel[grid](src, ids, out, ids.numel(), D, BLOCK=BLOCK_D)
    return out


def scatter_add_rows(dest: torch.Tensor, ids: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    assert dest.is_contiguous() and dest.dtype == torch.float32
    src = src.to(torch.float32).contiguous()
    ids = ids.contiguous()
    if ids.numel():
        grid = (ids.numel(), triton.cdiv(dest.shape[1], BLOCK_D))
        _scatter_add_rows_kernel[grid](dest, ids, src, dest.shape[1], BLOCK=BLOCK_D)
    return dest


@triton.jit
def _masked_fwd_kernel(x_ptr, k_ptr, v_ptr, slot_ptr, gate_ptr, out_ptr, raw_ptr, DK, DV,
                       K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    kmask = kk < K
    slot = tl.load(slot_ptr + t * K + kk, mask=kmask, other=-1)
    valid = slot >= 0
    srow = tl.where(valid, slot, 0).to(tl.int64)
    gate = tl.load(gate_ptr + t * K + kk, mask=kmask, other=0.0)
    raw = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, DK, BLOCK):
        cols = d0 + tl.arange(0, BLOCK)
        cm = cols < DK
        xv = tl.load(x_ptr + t * DK + cols, mask=cm, other=0.0)
        kt = tl.load(k_ptr + srow[:, None] * DK + cols[None, :], mask=valid[:, None] & cm[None, :], other=0.0)
        raw += tl.sum(kt * xv[None, :], axis=1)
    s = raw * gate
    act = tl.where(valid & (s > 0), s, 0.0)
    tl.store(raw_ptr + t * K + kk, raw, mask=kmask)
    for d0 in range(0, DV, BLOCK):
        cols = d0 + tl.arange(0, BLOCK)
        cm = cols < DV
        vt = tl.load(v_ptr + srow[:, None] * DV + cols[None, :], mask=valid[:, None] & cm[None, :], other=0.0)
        tl.store(out_ptr + t * DV + cols, tl.sum(act[:, None] * vt, axis=0), mask=cm)


@triton.jit
def _masked_bwd_kernel(x_ptr, k_ptr, v_ptr, slot_ptr, gate_ptr, raw_ptr, dout_ptr,
                       dx_ptr, dk_ptr, dv_ptr, dgate_ptr, DK, DV,
                       K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr, NEED_DK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    kmask = kk < K
    slot = tl.load(slot_ptr + t * K + kk, mask=kmask, other=-1)
    valid = slot >= 0
    srow = tl.where(valid, slot, 0).to(tl.int64)
    gate = tl.load(gate_ptr + t * K + kk, mask=kmask, other=0.0)
    raw = tl.load(raw_ptr + t * K + kk, mask=kmask, other=0.0)
    s = raw * gate
    on = valid & (s > 0)
    act = tl.where(on, s, 0.0)
    dact = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, DV, BLOCK):
        cols = d0 + tl.arange(0, BLOCK)
        cm = cols < DV
        g = tl.load(dout_ptr + t * DV + cols, mask=cm, other=0.0)
        m2 = on[:, None] & cm[None, :]
        vt = tl.load(v_ptr + srow[:, None] * DV + cols[None, :], mask=m2, other=0.0)
        dact += tl.sum(vt * g[None, :], axis=1)
        tl.atomic_add(dv_ptr + srow[:, None] * DV + cols[None, :], act[:, None] * g[None, :], mask=m2)
    ds = tl.where(on, dact, 0.0)
    tl.store(dgate_ptr + t * K + kk, ds * raw, mask=kmask)
    draw = ds * gate
    for d0 in range(0, DK, BLOCK):
        cols = d0 + tl.arange(0, BLOCK)
        cm = cols < DK
        m2 = on[:, None] & cm[None, :]
        kt = tl.load(k_ptr + srow[:, None] * DK + cols[None, :], mask=m2, other=0.0)
        tl.store(dx_ptr + t * DK + cols, tl.sum(draw[:, None] * kt, axis=0), mask=cm)
        if NEED_DK:
            xv = tl.load(x_ptr + t * DK + cols, mask=cm, other=0.0)
            tl.atomic_add(dk_ptr + srow[:, None] * DK + cols[None, :], draw[:, None] * xv[None, :], mask=m2)


class MaskedAdapter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keys, values, slot, gate):
        x, keys, values, gate = (t.float().contiguous() for t in (x, keys, values, gate))
        slot = slot.to(torch.int32).contiguous()
        T, k = slot.shape
        out = torch.empty(T, values.shape[1], device=x.device, dtype=torch.float32)
        raw = torch.empty(T, k, device=x.device, dtype=torch.float32)
        if T:
            _masked_fwd_kernel[(T,)](x, keys, values, slot, gate, out, raw, keys.shape[1], values.shape[1],
                                     K=k, BLOCK_K=triton.next_power_of_2(k), BLOCK=BLOCK_D)
        ctx.save_for_backward(x, keys, values, slot, gate, raw)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, keys, values, slot, gate, raw = ctx.saved_tensors
        T, k = slot.shape
        need_dk = ctx.needs_input_grad[1]
        dout = dout.float().contiguous()
        dx = torch.empty_like(x)
        dk = torch.zeros_like(keys) if need_dk else keys.new_empty(1)
        dv = torch.zeros_like(values)
        dgate = torch.empty_like(gate)
        if T:
            _masked_bwd_kernel[(T,)](x, keys, values, slot, gate, raw, dout, dx, dk, dv, dgate,
                                     keys.shape[1], values.shape[1], K=k, BLOCK_K=triton.next_power_of_2(k),
                                     BLOCK=BLOCK_D, NEED_DK=need_dk)
        return dx, (dk if need_dk else None), dv, None, dgate


def masked_adapter(x, keys, values, slot, gate):
    return MaskedAdapter.apply(x, keys, values, slot, gate)
