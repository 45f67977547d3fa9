"""Ray Serve app `ToolRetriever`: ranked tools over HTTP, with dynamic batching of the encoder.

Routes (under the app's route prefix, default /retriever):
  POST /search  {query, instruction?, k, retriever?, mode?}  -> {results: [{id, score, documentation}], ...}
  POST /embed   {texts, retriever?}                           -> {embeddings, dim}
  POST /reindex                                               -> rebuild the indexes from the corpus
  GET  /healthz                                               -> {status, tools, retrievers}
  GET  /docs, /openapi.json                                    (FastAPI)
Concurrent /search requests for a dense retriever are encoded and searched together
(serve.batch: one encoder call and one index search per batch), and /search answers with JSON
serialised once (a Response, so FastAPI does not re-validate the response model it documents).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lathe.serve.auth import install_guards

api = FastAPI(title="lathe ToolRetriever", description="Tool retrieval (ToolRet) over a tool corpus.")
install_guards(api)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, description="the user request")
    instruction: str | None = Field(None, description="task instruction (instruction-aware retrieval)")
    k: int = Field(10, ge=1, description="how many tools to return")
    retriever: str | None = Field(None, description="retriever label; default: the app's default")
    mode: Literal["query_only", "instruct"] | None = Field(
        None, description="default: instruct when an instruction is given, else query_only")


class Hit(BaseModel):
    id: str
    score: float
    documentation: str


class SearchResponse(BaseModel):
    retriever: str
    mode: str
    results: list[Hit]
    took_ms: float


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1)
    retriever: str | None = None


class EmbedResponse(BaseModel):
    retriever: str
    dim: int
    embeddings: list[list[float]]


def load_corpus(cfg) -> list:
    from lathe.data import toolret

    if cfg.tools:
        return toolret.load_tools(cfg.tools)
    rows = toolret.toolret_synthetic(cfg.seed, cfg.synthetic_tools, n_queries=1, n_train=0)["tools"]
    return [toolret.tool_from_row(r, "synthetic", r["id"].split("_tool_")[0]) for r in rows]


def build_all(cfg, tools) -> dict:
    """label -> indexed retriever; dense indexes are loaded from / saved to cfg.index_dir."""
    from lathe.methods.retrieval import build_retriever
    from lathe.methods.retrieval.dense import DenseRetriever

    out, dense_by_model = {}, {}
    for spec in cfg.retrievers:
        key = (spec.model_path, spec.family, spec.index)
        r = build_retriever(spec, shared_dense=dense_by_model.get(key))
        dense = r if isinstance(r, DenseRetriever) else None
        if spec.kind == "hybrid":
            r.members[0].index(tools)
            dense = r.members[1]
        if dense is not None and key not in dense_by_model:
            saved = Path(cfg.index_dir) / spec.name if cfg.index_dir else None
            # a saved index is reused only for the same corpus, encoder and document cut
            stamp = json.dumps({"ids": hashlib.sha256("\n".join(t.id for t in tools).encode()).hexdigest(),
                                "model": spec.model_path, "family": dense.family, "index": spec.index,
                                "doc_max_length": spec.doc_max_length})
            if saved is not None and (saved / "index.faiss").is_file() and \
                    (saved / "lathe_stamp.json").is_file() and (saved / "lathe_stamp.json").read_text() == stamp:
                dense.load_index(saved)
            else:
                dense.index(tools)
                if saved is not None:
                    dense.save(saved)
                    (saved / "lathe_stamp.json").write_text(stamp)
            dense_by_model[key] = dense
        elif spec.kind == "bm25":
            r.index(tools)
        out[spec.name] = r
    return out


def answer_batch(retrievers: dict, items: list[tuple]) -> list:
    """items: (retriever label, formatted text[, k]); one encoder call per label per batch. With k
    the item's answer is its top-k hits (one index search per label per batch, at the batch's
    largest k; each item keeps its first k of that trec-ordered list), else its embedding."""
    out: list = [None] * len(items)
    by_label: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(item[0], []).append(i)
    for label, idx in by_label.items():
        r = retrievers[label]
        vecs = r.encode([items[i][1] for i in idx])
        rows = [j for j, i in enumerate(idx) if len(items[i]) > 2]
        if rows:
            hits = r.search_vectors(vecs[rows], max(items[idx[j]][2] for j in rows))
            for j, h in zip(rows, hits):
                out[idx[j]] = h[: items[idx[j]][2]]
        for j, i in enumerate(idx):
            if len(items[i]) == 2:
                out[i] = vecs[j]
    return out


@serve.deployment(name="ToolRetriever")
@serve.ingress(api)
class ToolRetrieverServer:
    def __init__(self, cfg: dict, token: str | None = None):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from lathe.serve.config import RetrieverAppConfig

        self.cfg = RetrieverAppConfig.model_validate(cfg)
        api.state.guard = {"token": token, "max_body_bytes": self.cfg.max_body_bytes}
        self._build()
        b = self.cfg.batching
        self._embed_batched.set_max_batch_size(b.max_batch_size)
        self._embed_batched.set_batch_wait_timeout_s(b.wait_timeout_s)
        self.batches: list[int] = []

    def _build(self) -> None:
        self.tools = load_corpus(self.cfg)
        self.docs = {t.id: t.documentation for t in self.tools}
        self.retrievers = build_all(self.cfg, self.tools)
        self.default = self.cfg.default_retriever or self.cfg.retrievers[0].name
        if self.default not in self.retrievers:
            raise ValueError(f"default_retriever {self.default!r} is not one of {sorted(self.retrievers)}")

    def _pick(self, name: str | None):
        name = name or self.default
        if name not in self.retrievers:
            raise HTTPException(422, detail=f"retriever: unknown {name!r} (known: {', '.join(sorted(self.retrievers))})")
        return name, self.retrievers[name]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _embed_batched(self, items: list[tuple]) -> list:
        out = answer_batch(self.retrievers, items)
        self.batches.append(len(items))
        return out

    async def _embed(self, label: str, text: str):
        if self.cfg.batching.enabled:
            return await self._embed_batched((label, text))
        return self.retrievers[label].encode([text])[0]

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "tools": len(self.tools), "retrievers": sorted(self.retrievers),
                "default": self.default, "batching": self.cfg.batching.enabled}

    @api.get("/stats")
    def stats(self) -> dict:
        n = len(self.batches)
        return {"batches": n, "mean_batch": sum(self.batches) / n if n else 0.0,
                "max_batch": max(self.batches) if n else 0}

    @api.post("/search", response_model=SearchResponse)
    async def search(self, req: SearchRequest) -> SearchResponse:
        import numpy as np

        from lathe.methods.retrieval.dense import DenseRetriever
        from lathe.methods.retrieval.formatting import format_query

        t0 = time.perf_counter()
        if req.k > self.cfg.max_k:
            raise HTTPException(422, detail=f"k: at most {self.cfg.max_k} (got {req.k})")
        if len(req.query) > self.cfg.max_query_chars:
            raise HTTPException(422, detail=f"query: longer than {self.cfg.max_query_chars} characters")
        if req.instruction and len(req.instruction) > self.cfg.max_query_chars:
            raise HTTPException(422, detail=f"instruction: longer than {self.cfg.max_query_chars} characters")
        mode = req.mode or ("instruct" if req.instruction else "query_only")
        if mode == "instruct" and not req.instruction:
            raise HTTPException(422, detail="instruction: mode 'instruct' needs a non-empty instruction")
        name, r = self._pick(req.retriever)
        inst = req.instruction if mode == "instruct" else None
        k = min(req.k, len(self.tools))
        if isinstance(r, DenseRetriever):
            text = format_query(r.family, req.query, inst, legacy_empty_instruction=r.legacy_empty_instruction)
            if self.cfg.batching.enabled:
                hits = await self._embed_batched((name, text, k))
            else:
                hits = r.search_vectors(np.asarray(r.encode([text])[0], dtype=np.float32)[None], k)[0]
        else:
            hits = r.search([req.query], None if inst is None else [inst], k)[0]
        body = {"retriever": name, "mode": mode,
                "results": [{"id": i, "score": float(s), "documentation": self.docs[i]} for i, s in hits],
                "took_ms": (time.perf_counter() - t0) * 1000}
        return Response(json.dumps(body), media_type="application/json")

    @api.post("/embed", response_model=EmbedResponse)
    async def embed(self, req: EmbedRequest) -> EmbedResponse:
        from lathe.methods.retrieval.dense import DenseRetriever

        if len(req.texts) > self.cfg.max_embed_texts:
            raise HTTPException(422, detail=f"texts: at most {self.cfg.max_embed_texts} per request")
        if any(len(t) > self.cfg.max_query_chars for t in req.texts):
            raise HTTPException(422, detail=f"texts: each at most {self.cfg.max_query_chars} characters")
        name = req.retriever or next((n for n, r in self.retrievers.items() if isinstance(r, DenseRetriever)), None)
        if name is None:
            raise HTTPException(422, detail="retriever: this app serves no dense retriever")
        name, r = self._pick(name)
        if not isinstance(r, DenseRetriever):
            raise HTTPException(422, detail=f"retriever: {name!r} is not a dense retriever")
        vecs = await asyncio.gather(*(self._embed(name, t) for t in req.texts))
        return EmbedResponse(retriever=name, dim=len(vecs[0]), embeddings=[[float(x) for x in v] for v in vecs])

    @api.post("/reindex")
    def reindex(self) -> dict:
        t0 = time.perf_counter()
        self._build()
        return {"status": "ok", "tools": len(self.tools), "seconds": time.perf_counter() - t0}


def build_app(cfg, token: str | None = None):
    """A bound Serve application for `RetrieverAppConfig` cfg (replicas/autoscaling from the config)."""
    rep = cfg.replicas
    opts = {"ray_actor_options": {"num_cpus": rep.num_cpus, "num_gpus": rep.num_gpus},
            "max_ongoing_requests": rep.max_ongoing_requests}
    if rep.autoscaling is not None:
        a = rep.autoscaling
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "target_ongoing_requests": a.target_ongoing_requests}
    else:
        opts["num_replicas"] = rep.num_replicas
    return ToolRetrieverServer.options(**opts).bind(cfg.model_dump(), token)
