"""The dense retriever app answers a batch of concurrent /search requests with one encoder call
and one index search: each request still gets its own query's top-k, at its own k."""

from __future__ import annotations

import asyncio
import socket

import pytest

httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_answer_batch_equals_one_request_at_a_time(one_torch_thread):
    """The batch function itself (no Ray): searches at different k and embeddings, mixed."""
    import numpy as np

    from lathe.data import toolret
    from lathe.methods.retrieval.dense import DenseRetriever, build_tiny_encoder
    from lathe.serve.retriever_app import answer_batch

    data = toolret.toolret_synthetic(4, 30, n_queries=5, n_train=0)
    tools = [toolret.tool_from_row(r, "synthetic", r["id"].split("_tool_")[0]) for r in data["tools"]]
    enc, tok = build_tiny_encoder([t.documentation for t in tools] + [q["query"] for q in data["queries"]])
    r = DenseRetriever(encoder=enc, tokenizer=tok)
    r.index(tools)
    qs = [q["query"] for q in data["queries"]]
    items = [("d", qs[0], 1), ("d", qs[1]), ("d", qs[2], 7), ("d", qs[3], 3), ("d", qs[4])]
    out = answer_batch({"d": r}, items)
    for item, got in zip(items, out):
        if len(item) == 3:
            want = r.search([item[1]], k=item[2])[0]  # alone: padded to its own length, so ~1e-7 apart
            assert [i for i, _ in got] == [i for i, _ in want] and len(got) == item[2]
            assert [sc for _, sc in got] == pytest.approx([sc for _, sc in want], abs=1e-5)
        else:
            np.testing.assert_allclose(got, r.encode([item[1]])[0], rtol=1e-5, atol=1e-6)
    assert out[0] != out[2][:1] or qs[0] == qs[2]  # answers are per item, not one shared list


@pytest.mark.ray
def test_batched_search_keeps_each_request_apart(ray_local):
    from ray import serve

    from lathe.data import toolret
    from lathe.methods.retrieval.dense import DenseRetriever
    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy
    from lathe.serve.retriever_app import load_corpus

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        cfg = ServeConfig.model_validate({
            "job": "serve", "http": {"host": "127.0.0.1", "port": port},
            "retriever": {"synthetic_tools": 40, "seed": 3,
                          "retrievers": [{"kind": "dense", "label": "dense", "doc_max_length": 64}],
                          # a long wait: the concurrent requests below land in one batch
                          "batching": {"enabled": True, "max_batch_size": 8, "wait_timeout_s": 0.5},
                          "replicas": {"num_cpus": 0.5}}})
        url = deploy(cfg)["retriever"]
        assert url.startswith("http://127.0.0.1:")
        qs = [q["query"] for q in toolret.toolret_synthetic(3, 40, n_queries=6, n_train=0)["queries"]][:6]
        ks = [1, 3, 5, 2, 4, 6]

        async def send():
            async with httpx.AsyncClient(timeout=120) as c:
                await c.post(url + "/search", json={"query": "warm up", "k": 1})
                rs = await asyncio.gather(*(c.post(url + "/search", json={"query": q, "k": k})
                                            for q, k in zip(qs, ks)))
                return [r.json() for r in rs], (await c.get(url + "/stats")).json()

        bodies, stats = asyncio.run(send())
        assert stats["max_batch"] >= 2, stats  # the requests were merged
        offline = DenseRetriever(doc_max_length=64)
        offline.index(load_corpus(cfg.retriever))
        for q, k, body in zip(qs, ks, bodies):
            want = offline.search([q], k=k)[0]
            assert [h["id"] for h in body["results"]] == [i for i, _ in want], q
            assert [h["score"] for h in body["results"]] == pytest.approx([s for _, s in want], abs=1e-4)
            assert body["retriever"] == "dense" and body["mode"] == "query_only" and body["took_ms"] > 0
        assert len({tuple(h["id"] for h in b["results"]) for b in bodies}) > 1  # the queries differ
        serve.delete("retriever")
    finally:
        serve.shutdown()
