"""PEFT fidelity (issue 17): HF peft adapter options are honoured or refused; ASLoRA's global A
init fan-in; ASLoRA's merge schedule takes its step count from the training loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lathe.methods import peft as P
from lathe.platform.errors import ConfigError
from lathe.platform.zoo import build_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V = 300


def tiny(seed=0):
    return build_tiny("tiny-1m", vocab_size=V, seed=seed).eval()


def peft_config(**over) -> dict:
    """adapter_config.json as HF peft (0.17) writes it for a LoraConfig."""
    cfg = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": None, "bias": "none",
           "corda_config": None, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
           "inference_mode": True, "init_lora_weights": True, "layer_replication": None, "layers_pattern": None,
           "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 16, "lora_bias": False,
           "lora_dropout": 0.0, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
           "peft_type": "LORA", "qalora_group_size": 16, "r": 4, "rank_pattern": {}, "revision": None,
           "target_modules": ["v_proj", "q_proj"], "target_parameters": None, "task_type": "CAUSAL_LM",
           "trainable_token_indices": None, "use_dora": False, "use_qalora": False, "use_rslora": False}
    return {**cfg, **over}


def write_peft_dir(path, cfg: dict, tensors: dict):
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "adapter_model.safetensors"))
    return path


def lora_pair(r, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, d, generator=g) * 0.1, torch.randn(d, r, generator=g) * 0.1


def test_peft_alpha_rank_pattern_and_layers_to_transform_are_honoured(tmp_path):
    """Layers 1 and 3 only; q_proj alpha 32 (s = 32/4), v_proj rank 2 (s = 16/2). The oracle merges
    s·B·A into a plain copy of the base weights by hand."""
    cfg = peft_config(alpha_pattern={"q_proj": 32}, rank_pattern={"v_proj": 2}, layers_to_transform=[1, 3],
                      layers_pattern="layers")
    tensors, expect = {}, {}
    for layer in (1, 3):
        for proj, r, s in (("q_proj", 4, 32 / 4), ("v_proj", 2, 16 / 2)):
            A, B = lora_pair(r, 128, seed=10 * layer + r)
            name = f"model.layers.{layer}.self_attn.{proj}"
            tensors[f"base_model.model.{name}.lora_A.weight"] = A
            tensors[f"base_model.model.{name}.lora_B.weight"] = B
            expect[name + ".weight"] = s * B @ A
    d = write_peft_dir(tmp_path / "peft", cfg, tensors)
    loaded = P.load_adapter(tiny(), d).eval()
    adapted = sorted(n for n, _ in P.adapter_layers(loaded))
    assert adapted == [f"model.layers.{i}.self_attn.{p}" for i in (1, 3) for p in ("q_proj", "v_proj")]
    oracle = tiny()
    with torch.no_grad():
        params = dict(oracle.named_parameters())
        for k, dw in expect.items():
            params[k].add_(dw)
    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loaded(x).logits, oracle(x).logits, atol=1e-5)
    # and lathe writes the options back in peft's fields
    P.get("lora").save(loaded, tmp_path / "again")
    back = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert back["alpha_pattern"] == {"q_proj": 32} and back["rank_pattern"] == {"v_proj": 2}
    assert back["layers_to_transform"] == [1, 3]
    again = P.load_adapter(tiny(), tmp_path / "again").eval()
    assert torch.allclose(again(x).logits, oracle(x).logits, atol=1e-5)


def _plain_tensors():
    out = {}
    for layer in range(4):
        for proj in ("q_proj", "v_proj"):
            A, B = lora_pair(4, 128, seed=layer)
            out[f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_A.weight"] = A
            out[f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_B.weight"] = B
    return out


def test_peft_dora_and_other_unimplemented_options_are_refused(tmp_path):
    t = _plain_tensors()
    dora = dict(t)
    for k in list(t):
        if k.endswith("lora_B.weight"):
            dora[k.replace("lora_B.weight", "lora_magnitude_vector")] = torch.ones(128)
    with pytest.raises(ConfigError, match=r"DoRA \(use_dora\).*not supported"):
        P.load_adapter(tiny(), write_peft_dir(tmp_path / "a", peft_config(use_dora=True), dora))
    # magnitudes present while the config does not say use_dora: still refused, never ignored
    with pytest.raises(ConfigError, match=r"DoRA magnitudes \(lora_magnitude_vector\)"):
        P.load_adapter(tiny(), write_peft_dir(tmp_path / "b", peft_config(), dora))
    with pytest.raises(ConfigError, match=r"lora_bias"):
        P.load_adapter(tiny(), write_peft_dir(tmp_path / "c", peft_config(lora_bias=True), t))
    with pytest.raises(ConfigError, match=r"layers_to_transform cannot be used with a regex"):
        P.get("lora").apply(tiny(), {"target_modules": ".*q_proj", "layers_to_transform": [0]})
    ok = P.load_adapter(tiny(), write_peft_dir(tmp_path / "d", peft_config(), t))  # the plain adapter loads
    assert len(list(P.adapter_layers(ok))) == 8


def test_aslora_global_a_fan_in_per_width():
    """A 128-wide (q_proj) and a 344-wide (down_proj) target in one global A: the columns every layer reads start with
    the 128-wide layer's own kaiming bound 1/sqrt(128), not 1/sqrt(max_in) = 1/sqrt(344)."""
    torch.manual_seed(0)
    m = P.get("aslora").apply(tiny(), {"r": 8, "share_scope": "global", "target_modules": ["q_proj", "down_proj"],
                                       "target_slots": 4})
    A = m.lathe_aslora.A_global.detach()
    d_ff = A.shape[1]
    assert d_ff > 128
    narrow, wide = A[:, :128], A[:, 128:]
    assert float(narrow.abs().max()) > 1 / math.sqrt(d_ff) * 1.2  # max_in init keeps every value below this
    assert float(narrow.abs().max()) <= 1 / math.sqrt(128) + 1e-7
    assert float(wide.abs().max()) <= 1 / math.sqrt(d_ff) + 1e-7
    assert abs(float(narrow.std()) - 1 / math.sqrt(3 * 128)) < 0.1 / math.sqrt(128)  # uniform(±b): std b/sqrt(3)
    old = P.get("aslora").apply(tiny(), {"r": 8, "share_scope": "global", "target_modules": ["q_proj", "down_proj"],
                                         "target_slots": 4, "global_a_fan_in": "max_in"})
    assert float(old.lathe_aslora.A_global.detach().abs().max()) <= 1 / math.sqrt(d_ff) + 1e-7


def test_aslora_total_steps_comes_from_the_loop():
    from lathe.jobs.sft import SFTTask
    from lathe.platform.zoo import ModelSource, train_tokenizer

    tok = train_tokenizer(["a b c d e f"] * 4, vocab_size=64)
    src = ModelSource(preset="tiny-1m", tokenizer_json=tok.backend_tokenizer.to_str())
    task = SFTTask(src, [{"question": "q", "answer": "a"}] * 4, 16, "aslora", {"target_slots": 1})
    model = task.build().model
    task.on_train_start(model, 37)  # what trainer._worker calls with its own total
    assert model.lathe_aslora.cfg["total_steps"] == 37
    assert model.lathe_peft["default"]["config"]["total_steps"] == 37
    events = P.get("aslora").event_steps(model.lathe_aslora.cfg, 3)
    assert events[0] == math.ceil(0.1 * 37) and events[-1] == math.floor(0.6 * 37)
    hand = SFTTask(src, [{"question": "q", "answer": "a"}] * 4, 16, "aslora", {"target_slots": 1, "total_steps": 50})
    with pytest.raises(ConfigError, match=r"adapter.total_steps=50 \(aslora\) but the training loop runs 37"):
        hand.on_train_start(hand.build().model, 37)
