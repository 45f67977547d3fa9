"""Tool retrievers: BM25 (bm25s), dense bi-encoder on faiss, hybrid fusion, query formatting.

`build_retriever(spec, ...)` makes one from a strict config (`RetrieverSpec`); kind "retriever"
in the registry maps a name to its factory so a YAML picks it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lathe.methods.retrieval.base import Hits, Retriever
from lathe.methods.retrieval.formatting import format_query
from lathe.platform.config import Strict
from lathe.platform.errors import LatheError


class RetrieverSpec(Strict):
    """One retriever as a YAML picks it."""

    kind: Literal["bm25", "dense", "hybrid"] = "dense"
    label: str | None = Field(None, description="name shown in tables / used by the service; default: kind")
    model_path: str | None = Field(None, description="dense: local encoder dir; default: the shipped MiniLM")
    family: str | None = Field(None, description="dense: model family (pooling, normalisation, query format); "
                                                 "required with model_path unless lathe saved the encoder")
    index: Literal["flat", "hnsw", "ivf"] = "flat"
    batch_size: int = Field(32, ge=1)
    doc_max_length: int | None = Field(None, ge=8, le=2048,
                                       description="cut documents shorter than the spec's min(model max positions, "
                                                   "2048) tokens (default: the spec's)")
    weights: list[float] = Field(default_factory=lambda: [0.3, 0.7], description="hybrid: bm25, dense weights")
    fusion: Literal["minmax", "rrf"] = "minmax"
    depth: int = Field(100, ge=1, le=1000)

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str | None) -> str | None:
        from lathe.methods.retrieval.formatting import POOLING

        if v is not None and v not in POOLING:
            raise ValueError(f"unknown encoder family {v!r}; choose one of {', '.join(sorted(POOLING))}")
        return v

    @property
    def name(self) -> str:
        return self.label or self.kind


def build_retriever(spec: RetrieverSpec, legacy_empty_instruction: bool = False, device: str = "cpu",
                    shared_dense: Retriever | None = None) -> Retriever:
    from lathe.methods.retrieval.bm25 import BM25Retriever
    from lathe.methods.retrieval.dense import DenseRetriever
    from lathe.methods.retrieval.hybrid import HybridRetriever

    if spec.kind == "bm25":
        return BM25Retriever(legacy_empty_instruction=legacy_empty_instruction)
    if spec.kind == "dense":
        return DenseRetriever(spec.model_path, spec.family, spec.index, spec.batch_size, spec.doc_max_length, device,
                              legacy_empty_instruction)
    if len(spec.weights) != 2:
        raise LatheError("hybrid.weights: expected two weights (bm25, dense)")
    dense = shared_dense or DenseRetriever(spec.model_path, spec.family, spec.index, spec.batch_size,
                                           spec.doc_max_length, device, legacy_empty_instruction)
    return HybridRetriever([BM25Retriever(legacy_empty_instruction=legacy_empty_instruction), dense],
                           spec.weights, spec.fusion, spec.depth)


__all__ = ["Hits", "Retriever", "RetrieverSpec", "build_retriever", "format_query"]
