"""Score fusion of several retrievers (typically BM25 + dense).

Each member retrieves its top `depth` for the query in its own family's format; scores are
min-max normalised per query (a tool a member did not return scores 0 for it) and summed
with the weights, or fused by reciprocal rank (`fusion="rrf"`, 1 / (rrf_k + rank)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from lathe.methods.retrieval.base import Hits, Retriever
from lathe.platform.errors import LatheError


class HybridRetriever(Retriever):
    family = "hybrid"

    def __init__(self, members: Sequence[Retriever], weights: Sequence[float] | None = None,
                 fusion: Literal["minmax", "rrf"] = "minmax", depth: int = 100, rrf_k: int = 60):
        if not members:
            raise LatheError("hybrid retriever needs at least one member")
        weights = list(weights) if weights is not None else [1.0 / len(members)] * len(members)
        if len(weights) != len(members):
            raise LatheError(f"hybrid: {len(members)} members but {len(weights)} weights")
        if fusion not in ("minmax", "rrf"):
            raise LatheError(f"hybrid.fusion must be minmax or rrf (got {fusion!r})")
        self.members, self.weights, self.fusion, self.depth, self.rrf_k = list(members), weights, fusion, depth, rrf_k

    @property
    def size(self) -> int:
        return min(m.size for m in self.members)

    def index(self, tools) -> None:
        for m in self.members:
            m.index(tools)

    def search(self, queries, instructions=None, k: int = 10) -> Hits:
        self._check(queries, instructions, k)
        per_member = [m.search(queries, instructions, max(k, self.depth)) for m in self.members]
        out: Hits = []
        for qi in range(len(queries)):
            fused: dict[str, float] = {}
            for w, hits in zip(self.weights, per_member):
                row = hits[qi]
                if not row:
                    continue
                if self.fusion == "rrf":
                    norm = {d: 1.0 / (self.rrf_k + r + 1) for r, (d, _) in enumerate(row)}
                else:
                    hi, lo = row[0][1], row[-1][1]
                    span = hi - lo
                    norm = {d: (s - lo) / span if span > 0 else 1.0 for d, s in row}
                for d, s in norm.items():
                    fused[d] = fused.get(d, 0.0) + w * s
            out.append(sorted(fused.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k])
        return out

    def save(self, path) -> Path:
        path = Path(path)
        for i, m in enumerate(self.members):
            m.save(path / f"member_{i}")
        return path
