"""BM25 over the string form of each tool's parsed documentation (bm25s, English stopwords).

Hits come in trec_eval order (score descending, then id descending), cut at k after ties are
ordered, so a tie at the k-th score keeps the tools trec_eval would rank first."""

from __future__ import annotations

import json
from pathlib import Path

from lathe.methods.retrieval.base import Hits, Retriever, trec_topk
from lathe.methods.retrieval.formatting import document_text
from lathe.platform.errors import LatheError


class BM25Retriever(Retriever):
    family = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene",
                 legacy_empty_instruction: bool = False):
        self.k1, self.b, self.method = k1, b, method
        self.legacy_empty_instruction = legacy_empty_instruction
        self.ids: list[str] = []
        self._bm25 = None

    @property
    def size(self) -> int:
        return len(self.ids)

    def index(self, tools) -> None:
        import bm25s

        texts = [document_text("bm25", t.documentation, t.doc) for t in tools]
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        self._bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self.ids = [t.id for t in tools]

    def search(self, queries, instructions=None, k: int = 10) -> Hits:
        import bm25s

        self._check(queries, instructions, k)
        texts = self.formatted(queries, instructions)
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)

        def fetch(depth: int) -> Hits:
            docs, scores = self._bm25.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
            return [[(self.ids[int(d)], float(s)) for d, s in zip(drow, srow)] for drow, srow in zip(docs, scores)]

        return trec_topk(fetch, k, self.size)

    def save(self, path) -> Path:
        path = Path(path)
        self._bm25.save(str(path))
        (path / "lathe_ids.json").write_text(json.dumps({"ids": self.ids, "k1": self.k1, "b": self.b,
                                                         "method": self.method}))
        return path

    @classmethod
    def load(cls, path, legacy_empty_instruction: bool = False) -> "BM25Retriever":
        import bm25s

        path = Path(path)
        if not (path / "lathe_ids.json").is_file():
            raise LatheError(f"{path}: not a saved BM25 index (no lathe_ids.json)")
        meta = json.loads((path / "lathe_ids.json").read_text())
        self = cls(meta["k1"], meta["b"], meta["method"], legacy_empty_instruction)
        self._bm25 = bm25s.BM25.load(str(path))
        self.ids = meta["ids"]
        return self
