"""Model zoo: preset sizes, deterministic builds, and a safetensors round trip."""

from __future__ import annotations

import torch

from lathe.platform.zoo import (ModelSource, build_tiny, count_parameters, load_pretrained, preset_config,
                                save_pretrained)


def test_preset_sizes_match_their_names():
    from transformers import LlamaForCausalLM

    sizes = {}
    for name in ("tiny-1m", "tiny-20m"):
        with torch.device("meta"):
            sizes[name] = count_parameters(LlamaForCausalLM(preset_config(name)))
    assert 0.7e6 < sizes["tiny-1m"] < 1.5e6
    assert 15e6 < sizes["tiny-20m"] < 25e6


def test_same_seed_same_weights(tiny_tokenizer):
    a = build_tiny("tiny-1m", len(tiny_tokenizer), seed=3)
    b = build_tiny("tiny-1m", len(tiny_tokenizer), seed=3)
    c = build_tiny("tiny-1m", len(tiny_tokenizer), seed=4)
    pa, pb, pc = (next(m.model.layers[0].mlp.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_save_load_round_trip_identical_logits(tmp_path, tiny_model, tiny_tokenizer):
    out = save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "m")
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    model, tok = load_pretrained(out)
    ids = tok("What is the capital of Kalomi?", return_tensors="pt")["input_ids"]
    assert torch.equal(ids, tiny_tokenizer("What is the capital of Kalomi?", return_tensors="pt")["input_ids"])
    tiny_model.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(tiny_model(ids).logits, model(ids).logits)


def test_model_source_is_reproducible_on_any_worker(tiny_tokenizer):
    src = ModelSource(preset="tiny-1m", tokenizer_json=tiny_tokenizer.backend_tokenizer.to_str(), seed=1)
    (m1, t1), (m2, t2) = src.load(), src.load()
    ids = t1("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)


def test_load_rejects_non_hf_dir_and_pickles(tmp_path):
    import pytest

    from lathe.platform.errors import LatheError

    with pytest.raises(LatheError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(LatheError, match="no .safetensors"):
        load_pretrained(tmp_path)


LOCAL_FIRST = {"use_sliding_window": True, "sliding_window": 2,
               "layer_types": ["sliding_attention"] + ["full_attention"] * 3}


def test_preset_as_another_architecture_with_a_local_first_layer(tiny_tokenizer):
    src = ModelSource(preset="tiny-1m", tokenizer_json=tiny_tokenizer.backend_tokenizer.to_str(), seed=0,
                      architecture="qwen2", config_overrides=LOCAL_FIRST)
    model, _ = src.load()
    assert model.config.model_type == "qwen2" and model.config.layer_types[0] == "sliding_attention"
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    captured = {}
    model.model.layers[0].self_attn.register_forward_hook(lambda m, i, o: captured.update(out=o[0]))
    with torch.no_grad():
        model(ids)
        first = captured["out"][0, -1].clone()
        model(torch.tensor([[11, 12, 13, 14, 9, 10]]))  # same last two tokens, different earlier ones
    # block 0 sees only a 2-token window: its output at the last position ignores earlier tokens
    assert torch.allclose(captured["out"][0, -1], first, atol=1e-6)


def test_config_overrides_errors():
    import pytest

    from lathe.platform.config import ModelConfig
    from lathe.platform.errors import LatheError

    with pytest.raises(LatheError, match="no config field"):
        preset_config("tiny-1m", architecture="qwen2", sliding_windw=2)
    with pytest.raises(LatheError, match="architecture"):
        preset_config("tiny-1m", architecture="gpt9")
    with pytest.raises(ValueError, match="brings its own config"):
        ModelConfig(path="/x", config_overrides={"sliding_window": 2})
