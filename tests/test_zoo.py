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
