"""Every MELoRA formulation equals the einsum reference, forward and gradients, and the rule picks
the one measured fastest for the shape."""

from __future__ import annotations

import pytest
import torch

from lathe.methods.peft import melora as M

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = [(16, 24, 8, 1), (16, 24, 8, 2), (32, 16, 4, 4), (12, 12, 1, 3), (20, 30, 10, 1)]  # d_in, d_out, n, r


def _grads(fn, x, a, b, s, w):
    x, a, b = (t.detach().clone().requires_grad_(True) for t in (x, a, b))
    n = a.shape[0]
    y = fn(x.reshape(*x.shape[:-1], n, x.shape[-1] // n), a, b, s)
    (y.reshape(w.shape) * w).sum().backward()  # a non-uniform upstream gradient
    return y.detach(), x.grad, a.grad, b.grad


@pytest.mark.parametrize("how", ["bmm", "mulsum", "blockdiag"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_formulation_equals_einsum_reference(how, shape):
    d_in, d_out, n, r = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(2, 5, d_in, generator=g)  # two leading dims, as (batch, seq)
    a = torch.randn(n, r, d_in // n, generator=g)
    b = torch.randn(n, d_out // n, r, generator=g)
    w = torch.randn(2, 5, d_out, generator=g)
    ref = _grads(M.einsum_out, x, a, b, 0.7, w)
    got = _grads(M._OUT[how], x, a, b, 0.7, w)
    for name, u, v in zip(("output", "grad x", "grad A", "grad B"), ref, got):
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-5, msg=f"{how} {shape}: {name}")


def test_layer_uses_the_rule_and_matches_the_reference():
    base = torch.nn.Linear(32, 48)
    layer = M.MeloraLayer(base)
    layer.add_adapter("default", r=1, n=8, alpha=4, dropout=0.0, scaling="per_mini", rslora=False)
    with torch.no_grad():
        layer.melora_B["default"].normal_()
    x = torch.randn(3, 7, 32)
    auto = layer.adapter_out("default", x)
    layer.formulation = "einsum"
    ref = layer.adapter_out("default", x)
    torch.testing.assert_close(auto, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref, torch.zeros_like(ref))  # B was set non-zero: the path is live
    layer.formulation = "bmm"
    torch.testing.assert_close(layer.adapter_out("default", x), ref, rtol=1e-5, atol=1e-5)


def test_rule():
    assert M.pick_formulation(8, 1, "cpu") == "mulsum"
    assert M.pick_formulation(8, 2, "cpu") == "blockdiag"
    assert M.pick_formulation(4, 4, "cpu") == "blockdiag"
    assert M.pick_formulation(8, 8, "cpu") == "bmm"
    assert M.pick_formulation(8, 1, "meta") == "einsum"
