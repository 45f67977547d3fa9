"""Paths that only the CLI reaches: `lathe tune` and `lathe serve`, called as a user calls them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lathe_tune_picks_the_best_trial(ray_local, tmp_path, capsys):
    from lathe.cli import main

    rc = main(["tune", "configs/sft/tiny_tune.yaml", "tune.num_samples=2", "tune.max_concurrent=1",
               "tune.scheduler=fifo", "train.max_steps=6", "train.checkpoint_every=6", "data.synthetic_size=48",
               "model.tokenizer_vocab=256", f"output_root={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(next(tmp_path.glob("*/results.json")).read_text())
    trials = res["trials"]
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    losses = [t["loss"] for t in trials]
    assert res["best_value"] == min(losses) and f"best loss = {min(losses)}" in out
    best = next(t for t in trials if t["loss"] == min(losses))
    assert res["best_config"] == {"train.lr": best["train.lr"], "train.batch_size": best["train.batch_size"]}
    assert all(3e-4 <= t["train.lr"] <= 1e-2 and t["train.batch_size"] in (8, 16) for t in trials)
    assert len({t["train.lr"] for t in trials}) == 2  # two different samples of the space really ran
    assert len(list(tmp_path.glob("*/trials/*/metrics.jsonl"))) == 2


@pytest.mark.parametrize("ingress", [pytest.param("proxy", marks=pytest.mark.slow), "direct"])
def test_lathe_serve_cli_serves_the_retriever_and_stops_on_ctrl_c(tmp_path, ingress):
    """`lathe serve configs/serve/retriever.yaml ...` in a subprocess (its own embedded Ray): prints
    the URL, answers /search with the offline BM25 ranking, and shuts down on SIGINT (Ctrl-C).
    With http.ingress=direct the URL is the replica's own port, on loopback, and the proxy's
    port answers the same."""
    import httpx
    import psutil

    from lathe.methods.retrieval.bm25 import BM25Retriever
    from lathe.serve.retriever_app import load_corpus
    from lathe.serve.config import RetrieverAppConfig

    port = _free_port()
    over = [f"http.port={port}", "retriever.synthetic_tools=60", "retriever.seed=3", "retriever.index_dir=null",
            "retriever.retrievers=[{kind: bm25, label: bm25}]", "retriever.default_retriever=bm25",
            "retriever.replicas.num_cpus=0.5", f"output_root={tmp_path}", f"http.ingress={ingress}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "lathe.cli", "serve", "configs/serve/retriever.yaml", *over],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        url, lines, deadline = None, [], time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("lathe serve: retriever at "):
                url = line.split(" at ", 1)[1].split()[0]
        proxy_url = f"http://127.0.0.1:{port}/retriever"
        if ingress == "proxy":
            assert url == proxy_url, "".join(lines[-20:])
        else:
            assert url and url.startswith("http://127.0.0.1:") and url.endswith("/retriever"), "".join(lines[-20:])
            replica_port = int(url.rsplit(":", 1)[1].split("/")[0])
            assert replica_port != port
            listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                         if c.laddr and c.laddr.port == replica_port and c.status == psutil.CONN_LISTEN}
            assert listening == {"127.0.0.1"}, listening
        tools = load_corpus(RetrieverAppConfig(synthetic_tools=60, seed=3))
        offline = BM25Retriever()
        offline.index(tools)
        name = tools[11].doc["name"]
        body = httpx.post(url + "/search", json={"query": name, "k": 5}, timeout=60).json()
        assert [h["id"] for h in body["results"]] == [i for i, _ in offline.search([name], k=5)[0]]
        assert body["results"][0]["id"] == tools[11].id
        if ingress == "direct":
            via_proxy = httpx.post(proxy_url + "/search", json={"query": name, "k": 5}, timeout=60).json()
            assert via_proxy["results"] == body["results"]
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) in (0, 130)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
