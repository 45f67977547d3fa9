"""The agents graph on Ray Serve over loopback HTTP: both apps answer, stream steps, survive a tool
that raises and one that hangs, reject bad requests with one clear 4xx, and compose with the LLM
deployment through handles."""

from __future__ import annotations

import json
import socket
import time

import pytest

httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 240.0) -> dict:
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready: {last}")


def _events(resp) -> list:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


@pytest.fixture(scope="module")
def graph(ray_local, tmp_path_factory):
    from ray import serve

    from lathe.serve.agents_app import build_app as build_agents
    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy

    port = _free_port()
    cfg = ServeConfig.model_validate({
        "job": "serve", "http": {"port": port}, "output_root": str(tmp_path_factory.mktemp("runs")),
        "llm": {"model": {"preset": "tiny-1m", "tokenizer_vocab": 512}, "engine": "transformers",
                "replicas": {"num_cpus": 0.25}},
        "sandbox": {"faults": {"GET /movie/top_rated": "raise", "GET /me/player": "hang"}, "hang_s": 20},
        "agents": {"llm": {"kind": "oracle"}, "tool_timeout_s": 2, "max_wall_s": 60}})
    urls = deploy(cfg)
    # the same graph with the LLM deployment (tiny random model) behind the agents, through its handle
    llm_cfg = cfg.agents.model_copy(update={"llm": cfg.agents.llm.model_copy(update={"kind": "handle"}),
                                            "route_prefix": "/agents-llm",
                                            "conagents": {"max_tokens": 8, "max_steps": 1, "exec_retries": 1},
                                            "genground": {"max_tokens": 8, "max_iters": 1}})
    serve.run(build_agents(llm_cfg), name="agents-llm", route_prefix="/agents-llm", blocking=False)
    base = f"http://127.0.0.1:{port}"
    _wait(urls["agents"] + "/healthz")
    _wait(base + "/agents-llm/healthz")
    yield urls, base
    for app in ("agents-llm", "agents", "sandbox", "llm"):
        serve.delete(app)
    serve.shutdown()


def test_conagents_over_http_streams_and_survives_faulty_tools(graph):
    from lathe.data import restbench as rb

    urls, base = graph
    agents = urls["agents"]
    tasks = rb.generate("tmdb", 0).tasks
    director = next(t for t in tasks if t.query.startswith("Who directed"))
    r = httpx.post(agents + "/conagents/run", json={"query": director.query, "task_id": director.q_id}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] == director.answer and out["success"] == 1.0 and out["path"] == 1.0

    with httpx.stream("POST", agents + "/conagents/run", timeout=120,
                      json={"query": director.query, "task_id": director.q_id, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        ev = _events(s)
    assert [e["type"] for e in ev[:-1]] == ["step", "step", "final", "result"] and ev[-1] == "[DONE]"
    assert ev[0]["status"] == 200 and ev[-2]["answer"] == director.answer

    top = next(t for t in tasks if "top rated" in t.query)  # its only tool raises
    t0 = time.time()
    bad = httpx.post(agents + "/conagents/run", json={"query": top.query, "task_id": top.q_id}, timeout=60)
    assert bad.status_code == 502 and "crashed (configured fault)" in bad.json()["error"]
    playing = next(t for t in rb.generate("spotify", 0).tasks if "playing now" in t.query)  # its tool hangs
    hung = httpx.post(agents + "/conagents/run", timeout=60,
                      json={"query": playing.query, "task_id": playing.q_id, "domain": "spotify"})
    assert hung.status_code == 502 and "did not answer within 2 s" in hung.json()["error"]
    assert time.time() - t0 < 30
    with httpx.stream("POST", agents + "/conagents/run", timeout=60,
                      json={"query": top.query, "task_id": top.q_id, "stream": True}) as s:
        ev = _events(s)
    assert ev[-2]["type"] == "error" and "crashed" in ev[-2]["error"] and ev[-1] == "[DONE]"

    for body, code, msg in [({"query": 5}, 422, "query"), ({"query": "x", "bogus": 1}, 422, "bogus"),
                            ({"query": "x", "task_id": "nope"}, 404, "task_id"),
                            ({"query": director.query, "task_id": director.q_id, "max_steps": 99}, 422, "max_steps")]:
        e = httpx.post(agents + "/conagents/run", json=body, timeout=30)
        assert e.status_code == code and msg in e.text, (body, e.text)
    assert httpx.post(agents + "/conagents/run", content=b"{oops", timeout=30,
                      headers={"content-type": "application/json"}).status_code == 422
    # still serving, and the ReAct baseline runs through the same app
    again = httpx.post(agents + "/conagents/run", json={"query": director.query, "task_id": director.q_id,
                                                        "method": "react"}, timeout=120).json()
    assert again["success"] == 1.0
    # the sandbox also answers plain HTTP, with its status codes
    sb = urls["sandbox"]
    assert httpx.get(sb + "/tmdb/search/person", timeout=30).status_code == 400
    assert httpx.get(sb + "/tmdb/person/1", timeout=30).status_code == 404
    assert httpx.get(sb + "/tmdb/movie/popular", timeout=30).json()["results"]


def test_genground_over_http_and_llm_handle_composition(graph):
    from lathe.data import multihop as mh

    urls, base = graph
    agents = urls["agents"]
    rows, _ = mh.generate(0)
    row = next(r for r in rows if r["type"] == "3-hop")
    with httpx.stream("POST", agents + "/genground/answer", timeout=120,
                      json={"question": row["question"], "qid": row["qid"], "stream": True}) as s:
        ev = _events(s)
    kinds = [e["type"] for e in ev[:-1]]
    assert kinds == ["step"] * 3 + ["final", "result"] and ev[-2]["answer"] == row["answers"][0]
    assert ev[-2]["acc"] == 1.0 and all(e["citation"] for e in ev[:3])
    rtr = httpx.post(agents + "/genground/answer", json={"question": row["question"], "qid": row["qid"],
                                                         "method": "rtr"}, timeout=60)
    assert rtr.status_code == 200 and "documents" in rtr.json()
    assert httpx.post(agents + "/genground/answer", json={"question": "x", "qid": "nope"}, timeout=30).status_code == 404

    # the LLM deployment answers the agents' calls through its handle: bounded, no crash
    r = httpx.post(base + "/agents-llm/conagents/run", json={"query": "Who directed The Iron Orbit?"}, timeout=180)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["llm_calls"] >= 5 and len(out["steps"]) <= 1 and not out["finished"]
    g = httpx.post(base + "/agents-llm/genground/answer", json={"question": row["question"]}, timeout=180)
    assert g.status_code == 200 and g.json()["llm_calls"] >= 1
    assert _wait(agents + "/healthz")["requests"] >= 6
