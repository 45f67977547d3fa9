"""The retriever interface shared by BM25, dense and hybrid back ends."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lathe.platform.errors import LatheError

Hits = list[list[tuple[str, float]]]  # per query: [(tool id, score)] best first


class Retriever:
    """Index a tool corpus once, then answer batches of queries.

    `search(queries, instructions, k)`: `instructions=None` is query-only mode; otherwise one
    instruction per query, formatted for this retriever's model family.
    """

    family: str = "generic"
    legacy_empty_instruction: bool = False

    def index(self, tools) -> None:
        raise NotImplementedError

    def search(self, queries: Sequence[str], instructions: Sequence[str] | None = None, k: int = 10) -> Hits:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        raise NotImplementedError

    @property
    def size(self) -> int:
        raise NotImplementedError

    def _check(self, queries, instructions, k):
        if instructions is not None and len(instructions) != len(queries):
            raise LatheError(f"{len(queries)} queries but {len(instructions)} instructions")
        if k < 1:
            raise LatheError(f"k must be >= 1 (got {k})")
        if self.size == 0:
            raise LatheError("the retriever has no index yet: call index(tools) or load one")

    def formatted(self, queries, instructions) -> list[str]:
        from lathe.methods.retrieval.formatting import format_query

        return [format_query(self.family, q, None if instructions is None else instructions[i],
                             legacy_empty_instruction=self.legacy_empty_instruction)
                for i, q in enumerate(queries)]


def trec_sorted(row: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """trec_eval's order: score descending, then tool id descending."""
    return sorted(row, key=lambda x: (x[1], x[0]), reverse=True)


def trec_topk(fetch, k: int, size: int, extra: int = 16) -> Hits:
    """Each query's top k in trec order, cut only after ties are ordered.

    `fetch(depth)` returns each query's `depth` best hits in any order among equal scores. A
    back end's own top-k keeps an arbitrary subset of the tools tied at the k-th score, so fetch
    deeper until every query's deepest fetched score is below its k-th score (or all tools are in).
    """
    k = min(k, size)
    depth = min(size, k + extra)
    while True:
        rows = [trec_sorted(list(r)) for r in fetch(depth)]
        if depth >= size or all(len(r) < depth or r[-1][1] < r[k - 1][1] for r in rows):
            return [r[:k] for r in rows]
        depth = min(size, depth * 4)
