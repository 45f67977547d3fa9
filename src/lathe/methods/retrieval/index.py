"""Vector index on faiss: exact inner product (Flat), HNSW or IVF for large corpora.

faiss-gpu is used for Flat/IVF when the installed faiss has GPUs; the saved file is always the
CPU form, so an index saved on a GPU machine loads anywhere. Also `numpy_topk`, the brute-force
baseline the speed benchmark compares against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from lathe.platform.errors import LatheError

Kind = Literal["flat", "hnsw", "ivf"]


# faiss routes a query batch to BLAS (one GEMM + fused top-k) only when it has at least this many
# queries; this wheel's default (128,000) sends every realistic batch to the per-query SIMD loop, which
# is ~5-10x slower than GEMM for a batch of hundreds of queries. Single queries are unaffected.
BLAS_THRESHOLD = 20
# Documents x queries per GEMM block on that path. 256 queries over 43k x 384 vectors, 2 threads
# (docs/performance.md): 4,096 x 512 29-30 ms, faiss's default 1,024 x 4,096 31 ms, 16,384 x 512
# 33-35 ms; the score block (8 MiB) stays in cache.
BLAS_DATABASE_BS, BLAS_QUERY_BS = 4096, 512


_tuned = False


def _faiss():
    """faiss with the settings above, applied once per process (a caller's later change stands)."""
    global _tuned
    import faiss

    if not _tuned:
        faiss.cvar.distance_compute_blas_threshold = min(faiss.cvar.distance_compute_blas_threshold, BLAS_THRESHOLD)
        faiss.cvar.distance_compute_blas_database_bs = BLAS_DATABASE_BS
        faiss.cvar.distance_compute_blas_query_bs = BLAS_QUERY_BS
        _tuned = True
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def numpy_topk(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (scores, indices), best first."""
    scores = queries @ docs.T
    k = min(k, docs.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


class VectorIndex:
    def __init__(self, kind: Kind = "flat", hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
                 nlist: int = 0, nprobe: int = 16, use_gpu: bool | str = "auto"):
        if kind not in ("flat", "hnsw", "ivf"):
            raise LatheError(f"index kind must be flat, hnsw or ivf (got {kind!r})")
        self.kind, self.hnsw_m, self.ef_construction, self.ef_search = kind, hnsw_m, ef_construction, ef_search
        self.nlist, self.nprobe, self.use_gpu = nlist, nprobe, use_gpu
        self.ids: list[str] = []
        self._index = None
        self._search_index = None

    @property
    def size(self) -> int:
        return len(self.ids)

    def build(self, vectors: np.ndarray, ids: list[str]) -> "VectorIndex":
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != vectors.shape[0]:
            raise LatheError(f"index.build: {vectors.shape} vectors for {len(ids)} ids")
        dim = vectors.shape[1]
        if self.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            nlist = self.nlist or max(1, int(4 * np.sqrt(len(ids))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        index.add(vectors)
        self._index, self.ids = index, list(ids)
        self._prepare()
        return self

    def _prepare(self) -> None:
        faiss = _faiss()
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.ef_search
        if self.kind == "ivf":
            self._index.nprobe = self.nprobe
        self._search_index = self._index
        want_gpu = gpu_available() if self.use_gpu == "auto" else bool(self.use_gpu)
        if want_gpu and self.kind != "hnsw":
            if not gpu_available():
                raise LatheError("index.use_gpu=true but faiss has no GPU support here (install faiss-gpu)")
            self._search_index = faiss.index_cpu_to_all_gpus(self._index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        if self._index is None:
            raise LatheError("the index is empty: build or load it first")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.size)
        scores, idx = self._search_index.search(q, k)
        return scores, [[self.ids[i] for i in row if i >= 0] for row in idx]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self._index, str(path / "index.faiss"))
        meta = {"kind": self.kind, "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "nlist": self.nlist, "nprobe": self.nprobe}
        (path / "index.json").write_text(json.dumps({"meta": meta, "ids": self.ids}))
        return path

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool | str = "auto") -> "VectorIndex":
        path = Path(path)
        if not (path / "index.faiss").is_file() or not (path / "index.json").is_file():
            raise LatheError(f"{path}: not a saved index (expected index.faiss and index.json)")
        data = json.loads((path / "index.json").read_text())
        self = cls(**data["meta"], use_gpu=use_gpu)
        self._index = _faiss().read_index(str(path / "index.faiss"))
        self.ids = data["ids"]
        if self._index.ntotal != len(self.ids):
            raise LatheError(f"{path}: index holds {self._index.ntotal} vectors but {len(self.ids)} ids")
        self._prepare()
        return self
