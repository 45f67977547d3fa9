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
