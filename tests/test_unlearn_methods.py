"""Unlearning losses (one step moves forget NLL the right way; step-0 identities) and UIPE."""

from __future__ import annotations

import copy
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
