"""Unlearning losses (one step moves forget NLL the right way; step-0 identities) and UIPE."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from lathe.methods import sft as sft_lib
from lathe.methods import unlearning as ul
from lathe.methods.unlearning.common import logits_of, mean_nll, split_batch
from lathe.platform.errors import ConfigError, LatheError
from lathe.platform.registry import lookup, names


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FORGET = [("Where was Kalo Ren born?", "Kalo Ren was born in Vorsa."),
          ("What does Kalo Ren write?", "Kalo Ren writes mystery.")]
RETAIN = [("Where was Mia Tus born?", "Mia Tus was born in Dorlo."),
          ("What does Mia Tus write?", "Mia Tus writes poetry.")]


def _batch(tok):
    enc = lambda rows: [sft_lib.encode_qa(tok, q, a, 64) for q, a in rows]  # noqa: E731
    items = [{"forget": f, "retain": r} for f, r in zip(enc(FORGET), enc(RETAIN))]
    return ul.pair_collate(tok.pad_token_id)(items)


def _nll(model, batch, part):
    with torch.no_grad():
        b = split_batch(batch, part)
        return float(mean_nll(logits_of(model, b), b["labels"]))


def _step(model, loss_fn, batch, lr=3e-3):
    ref = copy.deepcopy(model).eval() if loss_fn.needs_reference else None
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss, metrics = loss_fn(model, ref, batch)
    loss.backward()
    opt.step()
    model.eval()
    return float(loss.detach()), metrics


def test_registry_lists_losses():
    assert {"ga", "graddiff", "kl", "npo"} <= set(names("unlearning_loss"))
    with pytest.raises(ConfigError, match="did you mean 'npo'"):
        lookup("unlearning_loss", "nop")
    with pytest.raises(ConfigError, match="unlearn.loss: unknown key 'betta'"):
        ul.build_loss("npo", {"betta": 0.1})


@pytest.mark.parametrize("method,options", [("ga", {}), ("graddiff", {}), ("kl", {}), ("npo", {})])
def test_one_step_raises_forget_nll(method, options, tiny_tokenizer, tiny_model):
    batch = _batch(tiny_tokenizer)
    before = _nll(tiny_model, batch, "forget")
    _, metrics = _step(tiny_model, ul.build_loss(method, options), batch, lr=0.5 if method == "npo" else 0.05)
    assert "forget_loss" in metrics
    assert _nll(tiny_model, batch, "forget") > before + 1e-4


def test_graddiff_gamma0_lowers_retain_nll(tiny_tokenizer, tiny_model):
    batch = _batch(tiny_tokenizer)
    before = _nll(tiny_model, batch, "retain")
    _step(tiny_model, ul.build_loss("graddiff", {"gamma": 0.0}), batch, lr=0.05)
    assert _nll(tiny_model, batch, "retain") < before - 1e-4


def test_step0_identities(tiny_tokenizer, tiny_model):
    batch = _batch(tiny_tokenizer)
    ref = copy.deepcopy(tiny_model).eval()
    tiny_model.eval()
    with torch.no_grad():
        _, m = ul.build_loss("kl", {"gamma": 1.0})(tiny_model, ref, batch)
        assert abs(m["kl"]) < 1e-6
        for pos in ("all", "answer"):
            _, m = ul.build_loss("kl", {"kl_positions": pos})(tiny_model, ref, batch)
            assert abs(m["kl"]) < 1e-6
        loss, m = ul.build_loss("npo", {"beta": 0.1, "alpha": 0.0})(tiny_model, ref, batch)
        assert m["npo"] == pytest.approx(2 / 0.1 * math.log(2), abs=1e-4)
        assert float(loss) == pytest.approx(13.8629, abs=1e-3)


# ------------------------------------------------------------------------------------ UIPE


def test_uipe_state_rules():
    torch.manual_seed(0)
    ini = {"w": torch.randn(4, 3), "b": torch.randn(3).to(torch.bfloat16), "ids": torch.arange(5)}
    un = {"w": ini["w"] + 0.1 * torch.randn(4, 3), "b": (ini["b"].float() + 0.05).to(torch.bfloat16),
          "ids": torch.arange(5) + 1}
    out0 = ul.extrapolate_state(ini, un, 0.0)
    assert all(torch.equal(out0[k], un[k]) for k in un)  # α = 0: bitwise θ_un
    back = ul.extrapolate_state(ini, un, -1.0)
    assert torch.allclose(back["w"], ini["w"], rtol=0, atol=torch.finfo(torch.float32).eps * 4)
    assert torch.equal(back["b"], ini["b"]) and back["b"].dtype == torch.bfloat16
    assert torch.equal(back["ids"], un["ids"])  # non-float: copied from θ_un
    out = ul.extrapolate_state(ini, un, 1.5)
    assert torch.allclose(out["w"] - un["w"], 1.5 * (un["w"] - ini["w"]), rtol=1e-6, atol=1e-6)
    kept = ul.extrapolate_state(ini, un, 1.5, params=["w"])  # b treated as a buffer
    assert torch.equal(kept["b"], un["b"])
    with pytest.raises(LatheError, match="shape mismatch for 'w'"):
        ul.extrapolate_state({**ini, "w": torch.zeros(2)}, un, 1.0)
    with pytest.raises(LatheError, match="lacks"):
        ul.extrapolate_state({"w": ini["w"]}, un, 1.0)


def test_uipe_model_buffers_tied_and_alpha0(tiny_model):
    ini = tiny_model
    un = copy.deepcopy(ini)
    with torch.no_grad():
        for p in un.parameters():
            p.add_(0.01 * torch.randn_like(p))
    bufs = {k: v.clone() for k, v in un.named_buffers()}
    assert bufs, "the Llama model has rotary buffers"
    same = ul.extrapolate_model(ini, copy.deepcopy(un), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), un.state_dict().values()))
    out = ul.extrapolate_model(ini, copy.deepcopy(un), 0.7)
    assert out.lm_head.weight.data_ptr() == out.model.embed_tokens.weight.data_ptr()  # still tied
    for k, v in out.named_buffers():
        assert torch.equal(v, bufs[k])
    pi, pu, po = (dict(m.named_parameters()) for m in (ini, un, out))
    for n in pu:
        assert torch.allclose(po[n] - pu[n], 0.7 * (pu[n] - pi[n]), rtol=1e-5, atol=1e-7)
    back = ul.extrapolate_model(ini, copy.deepcopy(un), -1.0)
    for n in pi:
        assert torch.allclose(dict(back.named_parameters())[n], pi[n], rtol=0, atol=1e-6)


def test_uipe_lora_merged_equals_adapter_scaling():
    torch.manual_seed(1)
    d_in, d_out, r, scaling, alpha = 16, 12, 4, 2.0, 0.8
    w0 = torch.randn(d_out, d_in)
    adapter = {"layer.lora_A.weight": torch.randn(r, d_in) * 0.1, "layer.lora_B.weight": torch.randn(d_out, r) * 0.1}
    merged_un = w0 + scaling * adapter["layer.lora_B.weight"] @ adapter["layer.lora_A.weight"]
    via_merge = ul.extrapolate_state({"layer.weight": w0}, {"layer.weight": merged_un}, alpha)["layer.weight"]
    scaled = ul.scale_adapter_state(adapter, alpha)
    assert torch.equal(scaled["layer.lora_A.weight"], adapter["layer.lora_A.weight"])
    via_adapter = w0 + scaling * scaled["layer.lora_B.weight"] @ scaled["layer.lora_A.weight"]
    x = torch.randn(5, d_in)
    assert torch.allclose(x @ via_merge.T, x @ via_adapter.T, atol=1e-5)
    with pytest.raises(LatheError, match="up-projection"):
        ul.scale_adapter_state({"w": torch.zeros(2)}, 1.0)


def test_uipe_on_a_lora_model_merged_vs_adapter_scaling(tiny_tokenizer, tiny_model):
    """A LoRA-unlearned tiny Llama (lathe.methods.peft): extrapolating the merged weights and
    scaling the adapters by (1+α) give the same logits; frozen tensors stay bitwise θ_ini."""
    from lathe.methods.peft import merge_and_unload
    from lathe.platform.registry import lookup

    alpha = 0.6
    base = copy.deepcopy(tiny_model).eval()
    lora = lookup("peft", "lora")
    lora = lora() if isinstance(lora, type) else lora
    un = lora.apply(copy.deepcopy(tiny_model), {"r": 4, "lora_alpha": 8})
    torch.manual_seed(3)
    with torch.no_grad():  # stand-in for an unlearning run: move the adapters off zero
        for n, p in un.named_parameters():
            if "lora_" in n:
                p.copy_(0.05 * torch.randn_like(p))
    adapter = {n: p.detach().clone() for n, p in un.named_parameters() if "lora_" in n}
    scaled = copy.deepcopy(un).eval()
    params = dict(scaled.named_parameters())
    with torch.no_grad():
        for n, t in ul.scale_adapter_state(adapter, alpha).items():
            params[n].copy_(t)
    merged_un = merge_and_unload(copy.deepcopy(un)).eval()
    ini_sd, un_sd = base.state_dict(), merged_un.state_dict()
    out_sd = ul.extrapolate_state(ini_sd, un_sd, alpha)
    changed = [k for k in out_sd if not torch.equal(out_sd[k], ini_sd[k])]
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # only adapted weights move
    extrap = copy.deepcopy(base)
    extrap.load_state_dict(out_sd)
    ids = torch.tensor([tiny_tokenizer("Where was Kalo Ren born?")["input_ids"]])
    with torch.no_grad():
        a, b = extrap(input_ids=ids).logits, scaled(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------ KL and NPO, θ ≠ ref


def test_kl_direction_and_positions_by_hand():
    """KL(π_ref ‖ π_θ) = Σ p_ref (log p_ref − log p_θ) per position, averaged over all, attended
    or answer positions; the reverse direction gives another number on these inputs."""
    from lathe.methods.unlearning.kl import kl_ref_to_model

    torch.manual_seed(0)
    logits, ref = torch.randn(2, 4, 5) * 2, torch.randn(2, 4, 5) * 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 3, -100], [-100, 2, 4, 1]])
    p, q = logits.softmax(-1).double(), ref.softmax(-1).double()
    per = (q * (q.log() - p.log())).sum(-1)  # B×T, p_ref first
    rev = (p * (p.log() - q.log())).sum(-1)
    want = {"all": per.mean(),
            "attended": (per * mask).sum() / mask.sum(),
            # position t counts when token t+1 is a label: (0,1), (1,0), (1,1), (1,2)
            "answer": (per[0, 1] + per[1, 0] + per[1, 1] + per[1, 2]) / 4}
    for pos, w in want.items():
        got = float(kl_ref_to_model(logits, ref, mask, labels, pos))
        assert got == pytest.approx(float(w), abs=1e-6), pos
    assert abs(float(want["attended"]) - float((rev * mask).sum() / mask.sum())) > 1e-2
    assert len({round(float(v), 6) for v in want.values()}) == 3  # the three choices really differ


def _perturbed(model, scale=0.05, seed=4):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other.eval()


def test_npo_and_kl_losses_where_theta_differs_from_ref(tiny_tokenizer, tiny_model):
    """θ ≠ π_ref: L_NPO and KL_r against a computation from scratch (sequence log-probs as sums
    of answer-token log-probabilities)."""
    import torch.nn.functional as F

    batch = _batch(tiny_tokenizer)
    model, ref = _perturbed(tiny_model), tiny_model.eval()

    def seq_lp(m, part):
        b = split_batch(batch, part)
        with torch.no_grad():
            lp = F.log_softmax(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.double(), -1)
        out = []
        for i in range(b["labels"].shape[0]):
            tot = 0.0
            for t in range(1, b["labels"].shape[1]):
                y = int(b["labels"][i, t])
                if y != -100:
                    tot += float(lp[i, t - 1, y])
            out.append(tot)
        return torch.tensor(out, dtype=torch.float64)

    beta = 0.1
    d = seq_lp(model, "forget") - seq_lp(ref, "forget")
    assert d.abs().max() > 0.05  # θ really differs from π_ref on the forget answers
    want = float(-(2 / beta) * F.logsigmoid(-beta * d).mean())
    with torch.no_grad():
        loss, m = ul.build_loss("npo", {"beta": beta, "alpha": 0.0})(model, ref, batch)
    assert m["npo"] == pytest.approx(want, rel=1e-5) and float(loss) == pytest.approx(want, rel=1e-5)
    assert abs(m["npo"] - 2 / beta * math.log(2)) > 1e-2
    # KL_r on the retain inputs, attended positions, direction Σ p_ref (log p_ref − log p_θ)
    r = split_batch(batch, "retain")
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits.double(), -1)
        lq = F.log_softmax(ref(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits.double(), -1)
        per = (lq.exp() * (lq - lp)).sum(-1)
        kl_want = float((per * r["attention_mask"]).sum() / r["attention_mask"].sum())
        _, km = ul.build_loss("kl", {})(model, ref, batch)
    assert km["kl"] == pytest.approx(kl_want, rel=1e-4) and km["kl"] > 1e-4


# ------------------------------------------------------------------ UIPE: keys, adapters, checkpoint


def test_uipe_missing_key_either_way_is_an_error(tiny_model):
    ini = {"w": torch.ones(2), "extra": torch.ones(3)}
    un = {"w": torch.zeros(2)}
    with pytest.raises(LatheError, match="θ_un lacks 1 tensors of θ_ini, e.g. 'extra'"):
        ul.extrapolate_state(ini, un, 1.0)
    un_model = copy.deepcopy(tiny_model)
    un_model.model.norm.register_parameter("weight", None)  # θ_un has lost a parameter of θ_ini
    with pytest.raises(LatheError, match="model.norm.weight"):
        ul.extrapolate_model(tiny_model, un_model, 0.5)


def test_uipe_adapter_scaling_extrapolates_modules_to_save_and_biases():
    """Adapter-scaling UIPE on a LoRA state with a trained bias and a modules_to_save copy: the
    merged model equals the merged-delta extrapolation, biases and saved modules included."""
    torch.manual_seed(2)
    d, r, s, alpha = 6, 2, 1.5, 0.7
    ini = {"q.weight": torch.randn(d, d), "q.bias": torch.randn(d), "head.weight": torch.randn(4, d)}
    adapter = {"q.lora_A.weight": torch.randn(r, d), "q.lora_B.weight": torch.randn(d, r),
               "q.base_layer.bias": ini["q.bias"] + 0.1 * torch.randn(d),              # bias="lora_only"
               "head.modules_to_save.default.weight": ini["head.weight"] + 0.1 * torch.randn(4, d)}

    def merged(ad):
        return {"q.weight": ini["q.weight"] + s * ad["q.lora_B.weight"] @ ad["q.lora_A.weight"],
                "q.bias": ad["q.base_layer.bias"], "head.weight": ad["head.modules_to_save.default.weight"]}

    want = ul.extrapolate_state(ini, merged(adapter), alpha)
    got = merged(ul.scale_adapter_state(adapter, alpha, ini=ini))
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5), k
    assert not torch.allclose(want["q.bias"], adapter["q.base_layer.bias"])  # the bias really moved
    with pytest.raises(LatheError, match="has no θ_ini value"):
        ul.scale_adapter_state(adapter, alpha)  # never silently copied


def test_uipe_checkpoint_streams_and_records_alpha_and_fingerprints(tmp_path, tiny_tokenizer, tiny_model):
    from safetensors import safe_open

    from lathe.platform.zoo import load_pretrained, save_pretrained

    ini_dir = save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "ini")
    un = _perturbed(tiny_model, 0.01)
    un_dir = save_pretrained(un, tiny_tokenizer, tmp_path / "un")
    meta = ul.write_checkpoint(ini_dir, un_dir, 0.5, tmp_path / "out", "npo")
    assert meta["uipe_alpha"] == 0.5 and meta["base_method"] == "npo"
    assert meta["theta_ini_fingerprint"] == ul.checkpoint_fingerprint(ini_dir) != meta["theta_un_fingerprint"]
    assert meta["fingerprint"] == ul.checkpoint_fingerprint(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "uipe.json").read_text()) == meta
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.metadata()["uipe_alpha"] == "0.5"
        assert f.metadata()["theta_un_fingerprint"] == meta["theta_un_fingerprint"]
    out, _ = load_pretrained(tmp_path / "out")  # a normal HF checkpoint
    pi, pu = dict(tiny_model.named_parameters()), dict(un.named_parameters())
    for n, p in out.named_parameters():
        assert torch.allclose(p, pu[n] + 0.5 * (pu[n] - pi[n]), atol=1e-6), n
    assert out.lm_head.weight.data_ptr() == out.model.embed_tokens.weight.data_ptr()
    zero = ul.write_checkpoint(ini_dir, un_dir, 0.0, tmp_path / "zero")
    assert zero["fingerprint"] != meta["fingerprint"]
    z, _ = load_pretrained(tmp_path / "zero")
    assert all(torch.equal(p, pu[n]) for n, p in z.named_parameters())  # α = 0 is θ_un bitwise
