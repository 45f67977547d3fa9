"""lathe.kernels: the Triton kernels equal their torch references (CUDA only), and CPU always takes
the references without importing Triton."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lathe import kernels as K
from lathe.kernels import reference as ref

cuda = pytest.mark.skipif(not K.triton_available(), reason="needs CUDA and Triton")


def test_cpu_uses_references_without_importing_triton():
    x = torch.randn(3, 8)
    keys, values = torch.randn(5, 8), torch.randn(5, 6)
    slot = torch.tensor([[0, 4], [-1, 2], [3, 3]])
    gate = torch.tensor([[1.0, -2.0], [0.5, 1.0], [1.0, 0.0]])
    out = K.masked_adapter(x, keys, values, slot, gate)
    want = torch.stack([
        sum(torch.relu(gate[t, j] * (x[t] @ keys[s])) * values[s] for j, s in enumerate(slot[t].tolist()) if s >= 0)
        for t in range(3)])
    torch.testing.assert_close(out, want)
    buf = torch.full((4, 8), 7.0)
    K.gather_rows(keys, torch.tensor([4, 1]), buf)
    assert torch.equal(buf[:2], keys[[4, 1]]) and not buf[2:].any()
    dest = torch.zeros(5, 8)
    K.scatter_add_rows(dest, torch.tensor([1, 1, 3]), torch.ones(3, 8))
    assert dest[:, 0].tolist() == [0, 2, 0, 1, 0]
    assert "lathe.kernels.triton_meft" not in sys.modules
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        K.masked_adapter(x, keys, values, slot, gate, mode="triton")


_INTERPRET = r"""
import torch
from lathe.kernels import reference as R, triton_meft as TM
torch.manual_seed(0)
for T, dk, dv, n, k, need_dk in ((5, 40, 136, 12, 6, True), (3, 130, 7, 4, 1, False)):
    x = torch.randn(T, dk, requires_grad=True)
    K = torch.randn(n, dk, requires_grad=need_dk)
    V = torch.randn(n, dv, requires_grad=True)
    slot = torch.randint(0, n, (T, k)); slot[0, 0] = -1
    gate = torch.randn(T, k, requires_grad=True)
    ins = [t for t in (x, K, V, gate) if t.requires_grad]
    a = R.masked_adapter(x, K, V, slot, gate); g = torch.randn_like(a)
    ga = torch.autograd.grad(a, ins, g)
    b = TM.masked_adapter(x, K, V, slot, gate)
    gb = torch.autograd.grad(b, ins, g)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    for u, v in zip(gb, ga):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
src = torch.randn(20, 130); ids = torch.tensor([3, 7, 7, 19, 0])
out, ref = torch.full((8, 130), 5.0), torch.full((8, 130), 5.0)
TM.gather_rows(src, ids, out); R.gather_rows(src, ids, ref)
assert torch.equal(out, ref)
assert not TM.gather_rows(src, ids[:0], out).any()
d1, d2, rows = torch.zeros(20, 130), torch.zeros(20, 130), torch.randn(5, 130)
TM.scatter_add_rows(d1, ids, rows); R.scatter_add_rows(d2, ids, rows)
torch.testing.assert_close(d1, d2)
print("INTERPRETED_OK")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (absent on the CPU install)")
def test_triton_kernels_in_the_interpreter_equal_references():
    """TRITON_INTERPRET=1 runs the same kernel code on CPU tensors: a check of the kernels' logic
    wherever Triton is installed, GPU or not (the interpreter must be set before triton loads)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _INTERPRET], env=env, capture_output=True, text=True, timeout=600)
    assert "INTERPRETED_OK" in out.stdout, out.stderr[-2000:]


def _case(T=37, dk=200, dv=136, n=50, k=6, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, dk, device="cuda", generator=g, requires_grad=True)
    keys = torch.randn(n, dk, device="cuda", generator=g, requires_grad=True)
    values = torch.randn(n, dv, device="cuda", generator=g, requires_grad=True)
    slot = torch.randint(0, n, (T, k), device="cuda", generator=g)
    slot[torch.rand(T, k, device="cuda", generator=g) < 0.2] = -1
    gate = torch.randn(T, k, device="cuda", generator=g, requires_grad=True)
    return x, keys, values, slot, gate


@cuda
@pytest.mark.parametrize("shape", [dict(), dict(T=1, k=1), dict(T=256, dk=512, dv=512, n=1024, k=64)])
def test_masked_adapter_triton_equals_reference(shape):
    x, keys, values, slot, gate = _case(**shape)
    dout = torch.randn(x.shape[0], values.shape[1], device="cuda")
    a = ref.masked_adapter(x, keys, values, slot, gate)
    ga = torch.autograd.grad(a, (x, keys, values, gate), dout)
    b = K.masked_adapter(x, keys, values, slot, gate, mode="triton")
    gb = torch.autograd.grad(b, (x, keys, values, gate), dout)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    for u, v in zip(gb, ga):
        torch.testing.assert_close(u, v, atol=1e-3, rtol=1e-4)


@cuda
def test_gather_and_scatter_triton_equal_reference():
    g = torch.Generator(device="cuda").manual_seed(1)
    src = torch.randn(300, 130, device="cuda", generator=g)
    ids = torch.randint(0, 300, (70,), device="cuda", generator=g)  # repeats included
    a, b = torch.full((90, 130), 3.0, device="cuda"), torch.full((90, 130), 3.0, device="cuda")
    ref.gather_rows(src, ids, a)
    K.gather_rows(src, ids, b, mode="triton")
    assert torch.equal(a, b)
    rows = torch.randn(70, 130, device="cuda", generator=g)
    da, db = torch.zeros_like(src), torch.zeros_like(src)
    ref.scatter_add_rows(da, ids, rows)
    K.scatter_add_rows(db, ids, rows, mode="triton")
    torch.testing.assert_close(db, da, atol=1e-5, rtol=1e-5)
    out = K.gather_rows_autograd(src.requires_grad_(True), ids, "triton")
    (grad,) = torch.autograd.grad(out, src, rows)
    torch.testing.assert_close(grad, da, atol=1e-5, rtol=1e-5)


@cuda
def test_offload_engine_on_cuda_equals_cpu_reference():
    """The CUDA path (pinned tables, side-stream copies, Triton masked matmul) against the CPU masked
    reference, with pre_look_layers overlap off and on."""
    import copy

    from lathe.methods.meft import Meft, meft_layers
    from lathe.platform.zoo import build_tiny

    base = build_tiny("tiny-1m", vocab_size=256, seed=0)
    opts = dict(num_neurons=64, topk=4, num_experts=8, n_probe=2)
    ref_model = Meft().apply(copy.deepcopy(base), {**opts, "engine": "gpu"})
    gen = torch.Generator().manual_seed(1)
    for _, lay in meft_layers(ref_model):
        with torch.no_grad():
            lay.values.copy_(torch.randn(lay.values.shape, generator=gen) * 0.2)
    ids = torch.randint(0, 256, (2, 9))
    want = ref_model(input_ids=ids).logits
    for p in (0, 1):
        off = Meft().apply(copy.deepcopy(base), {**opts, "engine": "offload", "pre_look_layers": p})
        store = off.lathe_meft["store"]
        for (_, a), (_, b) in zip(meft_layers(ref_model), meft_layers(off)):
            store.table(b.layer, "values").copy_(a.values.detach())
        assert store.table(0, "values").is_pinned()
        got = off.cuda()(input_ids=ids.cuda()).logits
        if p == 0:
            torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
        got.square().mean().backward()
        assert store.coalesced(0, "values")[0].numel() > 0
