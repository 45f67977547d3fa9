"""Load test of the ToolRetriever Ray Serve app: dense /search with and without dynamic batching.

Starts embedded Ray bound to 127.0.0.1 (lathe.platform.runtime), deploys the retriever app of
lathe.serve (one replica, dense MiniLM over the synthetic tool corpus, exact Flat index) on a free
loopback port, and sends a bounded load: N POST /search requests (synthetic ToolRet queries, k=10)
from 32 concurrent clients (httpx), first with `batching.enabled=false`, then with serve.batch
(max_batch_size 32, wait 10 ms), both through Serve's HTTP proxy, and then batched with
`http.ingress: direct` (the replica serves HTTP itself: no proxy, no actor call per request). All
runs use the same replica settings and the same saved index.

    .venv/bin/python benchmarks/serve_load.py --quick    # 200 requests per setting, 120 tools (~1 min after start-up)
    .venv/bin/python benchmarks/serve_load.py            # 2,000 requests per setting, 500 tools

Prints throughput (requests/s), p50 / p99 latency, errors (non-200 or transport errors) and the
mean batch the replica saw, and the in-process ceiling: the same retriever (same encoder, same
saved index, the replica's thread count) answering the same queries in this process in batches
of the size the replica saw (1 unbatched; the batched run's mean batch), measured right after
each HTTP run so that machine load hits both alike.
Targets (exit 1 when one is missed; `--no-enforce` only reports): no request fails, batched
throughput >= 3x unbatched (through the proxy), and the faster batched setting >= 0.8x the
in-process ceiling (both are printed).
Writes runs/bench/serve_load-<time>.json; the last line is the headline (served / in-process).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from _common import add_enforce, parser, save, verdict  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s: {last}")


async def load(url: str, bodies: list[dict], concurrency: int, timeout_s: float) -> dict:
    """Send every body once with `concurrency` workers; bounded by len(bodies) and a per-request timeout."""
    latencies: list[float] = []
    errors: list[str] = []
    next_i = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < len(bodies):
            body = bodies[next_i]
            next_i += 1
            t = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                r.json()
            except (httpx.HTTPError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": len(bodies), "ok": len(latencies), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": wall, "rps": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean())}


def encode_ceiling(texts: list[str], threads: int) -> dict:
    """CPU time of the dense encoder alone: one query at a time vs one batch (what serve.batch can save)."""
    import torch

    from lathe.methods.retrieval.dense import DenseRetriever

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        r = DenseRetriever(batch_size=len(texts))
        r.encode(texts)

        def cpu(fn) -> float:
            best = float("inf")
            for _ in range(3):
                t = time.process_time()
                fn()
                best = min(best, time.process_time() - t)
            return best

        single = cpu(lambda: [r.encode([t]) for t in texts]) / len(texts)
        batch = cpu(lambda: r.encode(texts)) / len(texts)
    finally:
        torch.set_num_threads(prev)
    return {"single_ms": single * 1000, "batch_ms": batch * 1000, "ratio": single / batch}


def in_process_ceiling(retriever, texts: list[str], k: int, threads: int, batch: int = 32) -> float:
    """Queries/s of the retriever alone (format-free: texts are the formatted queries) answering
    `texts` in batches of `batch` on `threads` torch threads: what the replica could do with no
    HTTP, no proxy and no Serve in between. Best of 3 passes, wall clock."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for s in range(0, len(texts), batch):
                retriever.search_vectors(retriever.encode(texts[s: s + batch]), k)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(prev)
    return len(texts) / best


def main() -> int:
    p = add_enforce(parser(__doc__))
    p.add_argument("--requests", type=int, default=None, help="requests per setting (default 2000; --quick 200)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tools", type=int, default=None, help="synthetic corpus size (default 500; --quick 120)")
    p.add_argument("--instruct", action="store_true", help="send each query with its instruction")
    p.add_argument("--replica-cpus", type=int, default=1, help="CPUs (= torch threads) of the replica")
    args = p.parse_args()
    n_req = args.requests or (200 if args.quick else 2000)
    n_tools = args.tools or (120 if args.quick else 500)

    from ray import serve

    from lathe.data import toolret
    from lathe.platform.runtime import ray_session
    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy

    qs = toolret.toolret_synthetic(1, n_tools, n_queries=256, n_train=0)["queries"]
    bodies = []
    for i in range(n_req):
        q = qs[i % len(qs)]
        bodies.append({"query": q["query"], "k": 10, "retriever": "dense",
                       **({"instruction": q["instruction"]} if args.instruct else {})})
    ceiling = encode_ceiling([b["query"] for b in bodies[:32]], args.replica_cpus)
    print(f"encoder alone ({args.replica_cpus} thread(s)): 32 single encodes {ceiling['single_ms']:.1f} ms/query, "
          f"one batch of 32 {ceiling['batch_ms']:.1f} ms/query -> batching can save at most {ceiling['ratio']:.2f}x "
          f"of the encoder's time", flush=True)
    port = free_port()
    index_dir = Path(args.out) / "serve_load_index" / f"seed0-{n_tools}"
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    from lathe.methods.retrieval.formatting import format_query
    from lathe.serve.retriever_app import build_all, load_corpus

    local = None
    with ray_session(serve_direct_ingress=True):
        try:
            for label, batching, ingress in (("unbatched", False, "proxy"), ("batched", True, "proxy"),
                                             ("direct", True, "direct")):
                cfg = ServeConfig.model_validate({
                    "job": "serve", "name": "bench-serve-load",
                    "http": {"host": HOST, "port": port, "ingress": ingress},
                    "retriever": {"synthetic_tools": n_tools, "seed": 0, "index_dir": str(index_dir),
                                  "retrievers": [{"kind": "dense", "label": "dense", "index": "flat"}],
                                  "batching": {"enabled": batching, "max_batch_size": 32, "wait_timeout_s": 0.01},
                                  "replicas": {"num_replicas": 1, "num_cpus": args.replica_cpus,
                                               "max_ongoing_requests": 64}}})
                if local is None:  # the replica's retriever, built the same way from the same saved index
                    local = build_all(cfg.retriever, load_corpus(cfg.retriever))["dense"]
                    texts = [format_query(local.family, b["query"], b.get("instruction"),
                                          legacy_empty_instruction=local.legacy_empty_instruction)
                             for b in bodies[:128]]
                base = deploy(cfg)["retriever"]
                assert base.startswith(f"http://{HOST}:"), base  # loopback only
                wait_ready(base + "/healthz", 300)
                asyncio.run(load(base + "/search", bodies[: args.concurrency], args.concurrency, 60))  # warm-up
                before = httpx.get(base + "/stats", timeout=10).json()
                res = asyncio.run(load(base + "/search", bodies, args.concurrency, 60))
                after = httpx.get(base + "/stats", timeout=10).json()
                calls = after["batches"] - before["batches"]
                res["mean_batch"] = ((after["mean_batch"] * after["batches"] - before["mean_batch"] * before["batches"])
                                     / calls) if calls else 1.0
                results[label] = res
                print(f"{label:>10}: {res['rps']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms"
                      f"  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  mean batch {res['mean_batch']:.1f}",
                      flush=True)
                serve.delete("retriever")
                size = max(1, round(res["mean_batch"])) if batching else 1
                res["in_process_qps"] = in_process_ceiling(local, texts, 10, args.replica_cpus, size)
                res["served_vs_in_process"] = res["rps"] / res["in_process_qps"]
                print(f"{'':>10}  in-process, batches of {size}, {args.replica_cpus} thread(s): "
                      f"{res['in_process_qps']:7.1f} q/s -> served/in-process {res['served_vs_in_process']:.2f}x",
                      flush=True)
        finally:
            serve.shutdown()
    ratio = results["batched"]["rps"] / results["unbatched"]["rps"]
    best = max(("batched", "direct"), key=lambda k: results[k]["served_vs_in_process"])
    ceiling_qps = results[best]["in_process_qps"]  # at that run's batch size
    errors = sum(r["errors"] for r in results.values())
    out = {"requests_per_setting": n_req, "concurrency": args.concurrency, "tools": n_tools,
           "mode": "instruct" if args.instruct else "query_only", "cpus": os.cpu_count(),
           "replica_cpus": args.replica_cpus,
           "encoder_alone": ceiling, "results": results, "in_process_qps": [r["in_process_qps"] for r in results.values()],
           "in_process_ceiling_qps": ceiling_qps, "served_vs_in_process": results[best]["served_vs_in_process"],
           "best_setting": best,
           "throughput_ratio": ratio, "errors": errors, "wall_s": time.perf_counter() - t0}
    path = save("serve_load", args.out, out)
    print(f"json: {path}")
    b, u, d = results["batched"], results["unbatched"], results["direct"]
    for r in results.values():
        for e in r["error_samples"]:
            print(f"request error: {e}", file=sys.stderr)
    served = out["served_vs_in_process"]
    status = verdict({f"no request failed ({errors} errors)": errors == 0,
                      "batched throughput >= 3x unbatched": ratio >= 3,
                      f"batched throughput ({best}) >= 0.8x the in-process ceiling": served >= 0.8}, args.no_enforce)
    print(f"serve_load: proxy batched {b['rps']:.1f} req/s (p50/p99 {b['p50_ms']:.0f}/{b['p99_ms']:.0f} ms), unbatched "
          f"{u['rps']:.1f} req/s (p50/p99 {u['p50_ms']:.0f}/{u['p99_ms']:.0f} ms), batching {ratio:.2f}x (target >= 3x); "
          f"direct ingress batched {d['rps']:.1f} req/s (p50/p99 {d['p50_ms']:.0f}/{d['p99_ms']:.0f} ms); errors {errors}; "
          f"{n_req} requests x 3 at concurrency {args.concurrency}; served/in-process: proxy "
          f"{b['served_vs_in_process']:.2f}x, direct {d['served_vs_in_process']:.2f}x (target >= 0.8x)")
    return status


if __name__ == "__main__":
    sys.exit(main())
