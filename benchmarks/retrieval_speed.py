"""faiss Flat vs numpy brute force (identical top-10), and HNSW recall@10 / speedup over Flat.

Corpus: 43,215 x 384 unit vectors (ToolRet's size, MiniLM's width), clustered like real embeddings.
  python benchmarks/retrieval_speed.py [--quick]    -> runs/bench/retrieval_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lathe.methods.retrieval.index import VectorIndex, numpy_topk


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, reps=3):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=43215)
    ap.add_argument("--dim", type=int, default=384)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    nq = 200 if args.quick else 1000
    centers = rng.normal(size=(256, args.dim))
    docs = unit(centers[rng.integers(0, 256, args.n)] + 0.6 * rng.normal(size=(args.n, args.dim)))
    queries = unit(docs[rng.integers(0, args.n, nq)] + 0.5 * rng.normal(size=(nq, args.dim)))
    ids = [str(i) for i in range(args.n)]
    flat = VectorIndex("flat", use_gpu="auto").build(docs, ids)
    t_np, (_, np_idx) = timed(lambda: numpy_topk(docs, queries, 10))
    t_flat, (_, flat_ids) = timed(lambda: flat.search(queries, 10))
    identical = float(np.mean([[ids[i] for i in row] == f for row, f in zip(np_idx, flat_ids)]))
    t0 = time.perf_counter()
    hnsw = VectorIndex("hnsw", hnsw_m=32, ef_construction=80 if args.quick else 200, ef_search=64).build(docs, ids)
    t_build = time.perf_counter() - t0
    t_hnsw, (_, hnsw_ids) = timed(lambda: hnsw.search(queries, 10))
    recall = float(np.mean([len(set(h) & set(f)) / 10 for h, f in zip(hnsw_ids, flat_ids)]))
    res = {"n": args.n, "dim": args.dim, "queries": nq, "numpy_qps": nq / t_np, "flat_qps": nq / t_flat,
           "flat_vs_numpy": t_np / t_flat, "flat_identical_top10": identical, "hnsw_qps": nq / t_hnsw,
           "hnsw_vs_flat": t_flat / t_hnsw, "hnsw_recall@10": recall, "hnsw_build_s": t_build}
    out = Path("runs/bench/retrieval_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(f"faiss Flat {res['flat_vs_numpy']:.2f}x numpy (top-10 identical {identical:.3f}); "
          f"HNSW {res['hnsw_vs_flat']:.1f}x Flat at recall@10 {recall:.3f}")


if __name__ == "__main__":
    main()
