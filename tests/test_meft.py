"""MEFT: the masked reference against hand-computed outputs, the offload engine against the
masked reference (outputs, gradients, parameters after 3 steps), the row Adam, the budget rule."""

from __future__ import annotations

import copy

import pytest
import torch

from lathe.methods.meft import Meft, MeftConfig, RowAdam, meft_layers, reference_num_experts
from lathe.methods.meft import routing as R
from lathe.platform.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTS = dict(num_neurons=64, topk=4, num_experts=8, n_probe=2)


@pytest.fixture(scope="module")
def base():
    from lathe.platform.zoo import build_tiny

    return build_tiny("tiny-1m", vocab_size=256, seed=0)


def _ids(seed=0, b=2, t=9):
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def _pair(base, **extra):
    """A gpu-engine and an offload-engine copy with identical (random, non-zero) V."""
    g = Meft().apply(copy.deepcopy(base), {**OPTS, "engine": "gpu", **extra})
    o = Meft().apply(copy.deepcopy(base), {**OPTS, "engine": "offload", **extra})
    store = o.lathe_meft["store"]
    gen = torch.Generator().manual_seed(1)
    for (_, a), (_, b) in zip(meft_layers(g), meft_layers(o)):
        with torch.no_grad():
            a.values.copy_(torch.randn(a.values.shape, generator=gen) * 0.2)
            store.table(b.layer, "values").copy_(a.values)
    return g, o


def _full_grad(store, layer, name, like):
    ids, g = store.coalesced(layer, name)
    full = torch.zeros_like(like)
    full[ids] = g
    return full


def test_zero_values_leave_logits_unchanged(base):
    ids = _ids()
    want = base(input_ids=ids).logits
    for engine in ("gpu", "offload"):
        m = Meft().apply(copy.deepcopy(base), {**OPTS, "engine": engine})
        assert torch.equal(m(input_ids=ids).logits, want), engine


def test_masked_reference_equals_per_token_loop(base):
    """Spec 4.2 by hand, token by token: probe experts, gate the candidate scores, top-k, ReLU, V."""
    m = Meft().apply(copy.deepcopy(base), {**OPTS, "engine": "gpu"})
    layer = meft_layers(m)[1][1]
    with torch.no_grad():
        layer.values.normal_(0, 0.5)
    x = torch.randn(7, 128, generator=torch.Generator().manual_seed(3))
    out = layer.adapter_out(x)
    layer.requires_grad_(False)
    per = 64 // 8
    for t in range(7):
        g = layer.router.weight @ x[t]
        probed = g.topk(2).indices.tolist()
        cand = {j: float(g[j // per] * (layer.keys[j] @ x[t])) for e in probed for j in range(e * per, (e + 1) * per)}
        top = sorted(cand, key=cand.get, reverse=True)[:4]
        assert sum(cand[j] > 0 for j in top) <= 4
        want = sum(max(cand[j], 0.0) * layer.values[j] for j in top)
        torch.testing.assert_close(out[t], want, atol=1e-5, rtol=1e-5)


def test_all_experts_with_unit_gates_is_plain_topk(base):
    m = Meft().apply(copy.deepcopy(base), {**OPTS, "n_probe": 8, "engine": "gpu"})
    layer = meft_layers(m)[0][1]
    layer.fixed_gates = True
    with torch.no_grad():
        layer.values.normal_(0, 0.5)
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(4))
    s = x @ layer.keys.T
    vals, idx = s.topk(4, dim=1)
    want = torch.zeros_like(s).scatter(1, idx, torch.relu(vals)) @ layer.values
    torch.testing.assert_close(layer.adapter_out(x), want)


def test_union_differs_from_per_token(base):
    ids = _ids()
    a, _ = _pair(base)
    b = copy.deepcopy(a)
    for _, layer in meft_layers(b):
        layer.cfg = layer.cfg.model_copy(update={"mask": "union"})
    assert not torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-4)


@pytest.mark.parametrize("mask", ["per_token", "union"])
def test_offload_equals_reference_outputs_and_grads(base, mask):
    g, o = _pair(base, mask=mask, train_keys_offload=True)
    ids = _ids(1)
    lg, lo = g(input_ids=ids).logits, o(input_ids=ids).logits
    torch.testing.assert_close(lo, lg, atol=1e-5, rtol=1e-5)
    (lg.square().mean()).backward()
    (lo.square().mean()).backward()
    store = o.lathe_meft["store"]
    for (_, a), (_, b) in zip(meft_layers(g), meft_layers(o)):
        assert a.values.grad.abs().max() > 0
        torch.testing.assert_close(_full_grad(store, b.layer, "values", a.values), a.values.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(_full_grad(store, b.layer, "keys", a.keys), a.keys.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(b.router.weight.grad, a.router.weight.grad, atol=1e-6, rtol=1e-4)


def _train(model, steps, lr=1e-2, wd=0.0, eps=1e-8):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd, eps=eps)
    store = model.lathe_meft["store"]
    touched = []
    for s in range(steps):
        loss = model(input_ids=_ids(10 + s)).logits.square().mean()
        loss.backward()
        if store is not None:
            touched.append({lay: store.coalesced(lay, "values")[0].clone() for lay in store.layer_ids()})
            Meft().before_step(model, s + 1, opt)
        opt.step()
        opt.zero_grad()
    return touched


def test_offload_dense_adam_equals_reference_after_3_steps(base):
    # eps 1e-5 in both: Adam turns noise-level gradient differences (summation order) into
    # lr-sized steps when |g| << eps; a larger eps keeps the comparison about the update rule.
    g, o = _pair(base, train_keys_offload=True, cpu_adam="dense", offload_weight_decay=0.01, eps=1e-5)
    _train(g, 3, wd=0.01, eps=1e-5)
    _train(o, 3, wd=0.01, eps=1e-5)
    store = o.lathe_meft["store"]
    for (_, a), (_, b) in zip(meft_layers(g), meft_layers(o)):
        torch.testing.assert_close(store.table(b.layer, "values"), a.values.detach(), atol=3e-5, rtol=1e-4)
        torch.testing.assert_close(store.table(b.layer, "keys"), a.keys.detach(), atol=3e-5, rtol=1e-4)
        torch.testing.assert_close(b.router.weight, a.router.weight, atol=3e-5, rtol=1e-4)


def test_sparse_adam_touches_only_selected_rows(base):
    _, o = _pair(base)
    store = o.lathe_meft["store"]
    before = {lay: {k: v.clone() for k, v in t.items()} for lay, t in store.tables.items()}
    touched = _train(o, 3)
    for lay, t in store.tables.items():
        ever = torch.zeros(64, dtype=torch.bool)
        count = torch.zeros(64, dtype=torch.long)
        for step in touched:
            ever[step[lay]] = True
            count[step[lay]] += 1
        assert 0 < ever.sum() < 64
        assert torch.equal(t["values.step"], count)  # per-row counters advance only on touch
        assert torch.equal(t["values"][~ever], before[lay]["values"][~ever])  # bitwise
        assert not (t["values.exp_avg"][~ever].any() or t["values.exp_avg_sq"][~ever].any())
        assert (t["values"][ever] != before[lay]["values"][ever]).any(dim=1).all()
        assert torch.equal(t["keys"], before[lay]["keys"])  # frozen on the host by default


def test_row_adam_matches_adamw_per_row():
    """Row j's update is AdamW run for the t_j steps that touched it (bias correction at t_j)."""
    torch.manual_seed(0)
    p0 = torch.randn(4, 5)
    param, m, v = p0.clone(), torch.zeros(4, 5), torch.zeros(4, 5)
    steps = torch.zeros(4, dtype=torch.long)
    adam = RowAdam(weight_decay=0.1, impl="torch")
    touches = [[0, 1], [1, 2], [0, 1]]
    grads = [torch.randn(2, 5) for _ in touches]
    for ids, g in zip(touches, grads):
        adam.step_rows(param, m, v, steps, torch.tensor(ids), g, lr=0.05)
    for row in range(3):
        ref = torch.nn.Parameter(p0[row].clone())
        opt = torch.optim.AdamW([ref], lr=0.05, weight_decay=0.1)
        for ids, g in zip(touches, grads):
            if row in ids:
                ref.grad = g[ids.index(row)].clone()
                opt.step()
        torch.testing.assert_close(param[row], ref.detach(), atol=1e-6, rtol=1e-6)
    assert steps.tolist() == [2, 3, 1, 0]
    assert torch.equal(param[3], p0[3]) and not m[3].any() and not v[3].any()


def test_budget_rule_by_hand():
    ids = torch.tensor([[0, 1], [1, 2], [3, 0]])
    act = torch.tensor([[1.0, 0.5], [0.2, 3.0], [0.1, 0.4]])
    kept, keep = R.apply_budget(ids, act, n_max=2, num_neurons=5)  # sums: 0:1.4 1:0.7 2:3.0 3:0.1
    assert kept.tolist() == [0, 2]
    assert keep.tolist() == [[True, False], [False, True], [False, True]]
    assert R.slot_map(ids, kept, keep).tolist() == [[0, -1], [-1, 1], [-1, 0]]
    kept, _ = R.apply_budget(torch.tensor([[4, 2]]), torch.tensor([[1.0, 1.0]]), 1, 5)
    assert kept.tolist() == [2]  # ties: the lower id


@pytest.mark.parametrize("mask", ["per_token", "union"])
def test_offload_with_overflowing_union_follows_budget_rule(base, mask):
    """Buffer of 6 rows << union: both engines cut by the same rule, so they still agree, and the
    result differs from the unbounded run."""
    g, o = _pair(base, mask=mask, on_gpu_size=6)
    full, _ = _pair(base, mask=mask)
    ids = _ids(2)
    lg, lo = g(input_ids=ids).logits, o(input_ids=ids).logits
    torch.testing.assert_close(lo, lg, atol=1e-5, rtol=1e-5)
    assert all(lay.stats["union"] == 6 for _, lay in meft_layers(o))
    assert not torch.allclose(full(input_ids=ids).logits, lg, atol=1e-4)
    lg.square().mean().backward()
    lo.square().mean().backward()
    store = o.lathe_meft["store"]
    for (_, a), (_, b) in zip(meft_layers(g), meft_layers(o)):
        torch.testing.assert_close(_full_grad(store, b.layer, "values", a.values), a.values.grad, atol=1e-6, rtol=1e-4)
        assert (a.values.grad.abs().sum(1) > 0).sum() <= 6


def test_pre_look_selects_from_earlier_layer_input(base):
    _, o = _pair(base, pre_look_layers=1)
    store = o.lathe_meft["store"]
    seen, inputs = {}, {}
    plan = store.plan

    def spy(layer, xk, gsel, probe):
        seen[layer] = xk.clone()
        return plan(layer, xk, gsel, probe)

    store.plan = spy
    hooks = [lay.register_forward_pre_hook(lambda mod, a: inputs.__setitem__(mod.layer, a[0].reshape(-1, 128)))
             for _, lay in meft_layers(o)]
    o(input_ids=_ids(3)).logits.sum().backward()
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen[0], inputs[0])
    for lay in (1, 2, 3):  # layer l scored with layer l-1's MLP input
        torch.testing.assert_close(seen[lay], inputs[lay - 1])
        assert not torch.allclose(inputs[lay], inputs[lay - 1])
    assert all(lay._future is None for _, lay in meft_layers(o))


def test_transfer_bytes_equal_formula(base):
    _, o = _pair(base, train_keys_offload=True)
    meter = o.lathe_meft["meter"]
    meter.reset()
    ids = _ids(4)
    o(input_ids=ids).logits.sum().backward()
    T, d, p, k = ids.numel(), 128, 2, 4
    ns = meter.unions[:]
    up = sum(T * d * 4 + T * p * 4 + T * p * 4 + n * d * 4 + n * d * 4 for n in ns)
    down = sum(n * d * 4 + n * d * 4 + n * 4 + T * k * 4 for n in ns)
    assert len(ns) == 4
    got = meter.reset()
    assert (got["meft_bytes_up"], got["meft_bytes_down"]) == (up, down)


def test_save_load_round_trip_across_engines(base, tmp_path):
    _, o = _pair(base)
    _train(o, 1)
    Meft().save(o, tmp_path)
    back = Meft().load(copy.deepcopy(base), tmp_path, engine="gpu")
    ids = _ids(5)
    torch.testing.assert_close(back(input_ids=ids).logits, o(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opts,match", [
    ({"num_neurons": 60, "num_experts": 8}, "does not divide"),
    ({"topk": 40, "num_experts": 8, "n_probe": 2}, "candidate keys"),
    ({"engine": "offload", "num_experts": 1, "n_probe": 1}, "device-trained router"),
    ({"topk": 0, "num_experts": 8}, "takes no router"),
    ({"n_probe": 9}, "n_probe=9 exceeds"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_options_are_one_line(base, opts, match):
    with pytest.raises(ConfigError, match=match) as e:
        Meft().apply(copy.deepcopy(base), {**OPTS, **opts})
    assert "\n" not in str(e.value)


def test_from_model_keys_and_limits(base):
    m = Meft().apply(copy.deepcopy(base), {**OPTS, "key_init": "from_model"})
    layers = meft_layers(m)
    down = base.model.layers[0].mlp.down_proj.weight.T  # layer 1's keys are rows of layer 0's down_projᵀ
    k1 = layers[1][1].keys
    assert all(any(torch.equal(row, cand) for cand in down) for row in k1[:5])
    torch.testing.assert_close(layers[1][1].router.weight, 50 * k1.view(8, 8, -1).mean(1))
    with pytest.raises(ConfigError, match="d_ff=344"):
        Meft().apply(copy.deepcopy(base), {**OPTS, "num_neurons": 400, "num_experts": 1, "n_probe": 1, "key_init": "from_model"})


def test_dense_adapter_and_reference_expert_rule(base):
    m = Meft().apply(copy.deepcopy(base), {"num_neurons": 32, "topk": 0, "num_experts": 1})
    layer = meft_layers(m)[0][1]
    with torch.no_grad():
        layer.values.normal_()
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer.adapter_out(x), torch.nn.functional.silu(x @ layer.keys.T) @ layer.values)
    assert reference_num_experts(4096) == 64 and reference_num_experts(4096, 4) == 16
    assert reference_num_experts(2500, 3) == 50  # 50 // 3 = 16 does not divide 2500
    assert MeftConfig(num_neurons=64, num_experts=8, topk=4, on_gpu_size=1000).n_max == 64
