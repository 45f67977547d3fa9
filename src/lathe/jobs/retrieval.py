"""ToolRet jobs: `retrieval_eval` (the paper's table), `retriever_train` (InfoNCE fine-tuning on
Ray Train) and `serve` (deploy the retriever / LLM apps of lathe.serve from a YAML)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from lathe.data import toolret as data_lib
from lathe.eval import toolret as ev
from lathe.jobs.base import Job, Reporter
from lathe.jobs.task import Built, TrainTask
from lathe.methods.retrieval import RetrieverSpec, build_retriever
from lathe.methods.retrieval.base import Retriever
from lathe.platform.config import JobConfig, Strict, TrainConfig
from lathe.platform.registry import register
from lathe.platform.runstore import RunDir, markdown_table, plot_curves

MODES = {"query_only": "w/o inst.", "instruct": "w/ inst."}


class ToolRetDataConfig(Strict):
    tools: list[str] = Field(default_factory=list, description="tool files (id/documentation); empty: synthetic")
    queries: list[str] = Field(default_factory=list, description="query files; empty: synthetic")
    train: str | None = Field(None, description="training triples (either published layout); default: synthetic")
    n_tools: int = Field(2000, ge=12)
    n_queries: int = Field(300, ge=1)
    n_train: int = Field(2000, ge=1)
    max_queries: int | None = Field(None, ge=1, description="evaluate only the first N queries")


def load_data(cfg: ToolRetDataConfig, seed: int) -> data_lib.ToolRetData:
    if bool(cfg.tools) != bool(cfg.queries):
        from lathe.platform.errors import ConfigError

        raise ConfigError("data: set both data.tools and data.queries, or neither (synthetic)")
    if cfg.tools:
        d = data_lib.load(cfg.tools, cfg.queries)
    else:
        d = data_lib.synthetic_data(seed, cfg.n_tools, cfg.n_queries)
    if cfg.max_queries:
        d.queries = d.queries[: cfg.max_queries]
    return d


def run_retriever(retriever: Retriever, d: data_lib.ToolRetData, mode: str, top_k: int = ev.TOP_K,
                  batch: int = 256) -> dict[str, dict[str, float]]:
    out = {}
    for s in range(0, len(d.queries), batch):
        qs = d.queries[s: s + batch]
        inst = [q.instruction for q in qs] if mode == "instruct" else None
        for q, hits in zip(qs, retriever.search([q.query for q in qs], inst, top_k)):
            out[q.id] = dict(hits)
    return out


def score(d: data_lib.ToolRetData, run: dict) -> dict:
    per_query, skipped = ev.evaluate(d.qrels(), run)
    agg = ev.aggregate(per_query, {q.id: q.task for q in d.queries}, {q.id: q.category for q in d.queries})
    agg["skipped_empty"] = skipped
    return agg


def _pct(v: float) -> str:
    """x100 with exactly two decimals, as the paper prints (markdown_table's digits are significant digits)."""
    return f"{ev.x100(v):.2f}"


def paper_table(rows: list[dict]) -> str:
    """Rows {retriever, mode, agg} -> the paper's layout: one line per retriever, w/o vs w/ inst."""
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["retriever"], {})[r["mode"]] = r["agg"]
    out = []
    for name, modes in by.items():
        line: dict[str, Any] = {"retriever": name}
        for mode, label in MODES.items():
            if mode in modes:
                avg = modes[mode]["average"]
                line[f"{label} N@10"] = _pct(avg["ndcg@10"])
                line[f"{label} C@10"] = _pct(avg["completeness@10"])
        for mode, label in MODES.items():
            for cat, m in modes.get(mode, {}).get("categories", {}).items():
                line[f"{label} {cat} N@10"] = _pct(m["ndcg@10"])
        out.append(line)
    return markdown_table(out, digits=2)


def full_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        for scope, m in [("Average", r["agg"]["average"])] + list(r["agg"]["categories"].items()):
            line = {"retriever": r["retriever"], "mode": MODES[r["mode"]], "scope": scope}
            for k in ev.KS:
                for metric in ("ndcg", "precision", "recall", "map", "completeness"):
                    line[f"{metric[0].upper() if metric != 'map' else 'MAP'}@{k}"] = _pct(m[f"{metric}@{k}"])
            lines.append(line)
    return markdown_table(lines, digits=2)


# ---------------------------------------------------------------------------------------
# retrieval_eval


class RetrievalEvalConfig(JobConfig):
    job: Literal["retrieval_eval"] = "retrieval_eval"
    data: ToolRetDataConfig = ToolRetDataConfig()
    retrievers: list[RetrieverSpec] = Field(
        default_factory=lambda: [RetrieverSpec(kind="bm25"), RetrieverSpec(kind="dense"), RetrieverSpec(kind="hybrid")],
        min_length=1)
    modes: list[Literal["query_only", "instruct"]] = Field(default_factory=lambda: ["query_only", "instruct"],
                                                           min_length=1)
    legacy_empty_instruction: bool = Field(False, description="reproduce the reference 'Instruct: \\nQuery: ' quirk")
    top_k: int = Field(100, ge=20, le=1000)


def evaluate_retrievers(specs: list[RetrieverSpec], d: data_lib.ToolRetData, modes: list[str], legacy: bool = False,
                        top_k: int = 100, log=print) -> list[dict]:
    rows, dense_cache = [], {}
    for spec in specs:
        t0 = time.perf_counter()
        shared = None
        if spec.kind == "hybrid":
            shared = dense_cache.get((spec.model_path, spec.family, spec.index))
        r = build_retriever(spec, legacy, shared_dense=shared)
        if shared is not None:
            r.members[0].index(d.tools)  # only BM25 needs indexing; the dense member is reused
        else:
            r.index(d.tools)
        if spec.kind == "dense":
            dense_cache[(spec.model_path, spec.family, spec.index)] = r
        t_index = time.perf_counter() - t0
        for mode in modes:
            t1 = time.perf_counter()
            agg = score(d, run_retriever(r, d, mode, top_k))
            rows.append({"retriever": spec.name, "mode": mode, "agg": agg, "index_s": t_index,
                         "search_s": time.perf_counter() - t1})
            log(f"{spec.name:>10} {MODES[mode]:>10}: NDCG@10 {ev.x100(agg['average']['ndcg@10']):6.2f}  "
                f"C@10 {ev.x100(agg['average']['completeness@10']):6.2f}")
    return rows


@register("job", "retrieval_eval")
class RetrievalEvalJob(Job):
    Config = RetrievalEvalConfig

    def run(self, cfg: RetrievalEvalConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        import sys

        d = load_data(cfg.data, cfg.seed)
        log = (lambda s: print(s, file=sys.stderr)) if show_progress else (lambda s: None)
        log(f"toolret: {d.summary()}")
        rows = evaluate_retrievers(cfg.retrievers, d, cfg.modes, cfg.legacy_empty_instruction, cfg.top_k, log)
        table = paper_table(rows)
        print("\nToolRet (x100; Average = unweighted mean of the category scores)\n" + table + "\n")
        results: dict[str, Any] = {"tools": len(d.tools), "queries": len(d.queries),
                                   "missing_label_ids": len(d.missing_labels), "skipped_empty": d.skipped_empty}
        for r in rows:
            avg = r["agg"]["average"]
            key = f"{r['retriever']}/{r['mode']}"
            results[f"{key}/ndcg@10"] = ev.x100(avg["ndcg@10"])
            results[f"{key}/completeness@10"] = ev.x100(avg["completeness@10"])
        run.write_results({**results, "detail": [{k: v for k, v in r.items()} for r in rows]})
        run.write_report(f"retrieval_eval: {cfg.name}", [
            ("Data", d.summary()), ("Paper layout (x100)", table), ("All metrics (x100)", full_table(rows))])
        return results


# ---------------------------------------------------------------------------------------
# retriever_train


class TinyEncoderConfig(Strict):
    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    vocab_size: int = Field(1024, ge=128)


class ContrastiveConfig(Strict):
    temperature: float = Field(0.02, gt=0, description="tau of the released recipe")
    group_size: int = Field(8, ge=1, description="1 positive + (group_size - 1) hard negatives")
    max_positives: int = Field(3, ge=1)
    in_batch_negatives: bool = True
    use_instruction: bool = Field(True, description="train on instruction + query (the paper's I ⊕ q)")
    mine_hard_negatives: bool = True
    mine_top_k: int = Field(30, ge=1)
    mine_with: Literal["dense", "bm25"] = "dense"
    max_length: int = Field(128, ge=8, le=2048)


class RetrieverTrainConfig(JobConfig):
    job: Literal["retriever_train"] = "retriever_train"
    encoder_path: str | None = Field(None, description="local encoder dir; default: the shipped MiniLM")
    encoder_family: str | None = None
    tiny_encoder: TinyEncoderConfig | None = Field(None, description="build a small encoder from a config instead")
    data: ToolRetDataConfig = ToolRetDataConfig(n_tools=300, n_queries=100, n_train=400)
    contrastive: ContrastiveConfig = ContrastiveConfig()
    train: TrainConfig = TrainConfig(max_steps=50, batch_size=8, lr=2e-5, warmup_steps=5, checkpoint_every=50)
    eval_train_queries: int = Field(100, ge=0, description="also report NDCG@10 on this many training queries")


def query_text(family: str, q: str, instruction: str, use_instruction: bool) -> str:
    from lathe.methods.retrieval.formatting import format_query

    return format_query(family, q, instruction if use_instruction else None)


class RetrieverTask(TrainTask):
    def __init__(self, encoder_dir: str, rows: list[dict], c: ContrastiveConfig, seed: int):
        self.encoder_dir, self.rows, self.c, self.seed = encoder_dir, rows, c, seed

    def build(self) -> Built:
        from lathe.methods.retrieval.dense import load_encoder

        encoder, tok = load_encoder(self.encoder_dir)
        encoder.train()
        rng = random.Random(self.seed)
        c = self.c
        texts = [query_text(encoder.family, r["query"], r["instruction"], c.use_instruction) for r in self.rows]
        items = [{"q": t, "row": r} for t, r in zip(texts, self.rows)]

        def collate(batch: list[dict]) -> dict:
            from lathe.methods.retrieval.contrastive import batch_masks, make_groups
            from lathe.methods.retrieval.dense import tokenize

            groups = [make_groups(b["row"], c.group_size, c.max_positives, rng) for b in batch]
            passages, pos_mask, neg_mask = batch_masks([g[0] for g in groups], [g[1] for g in groups],
                                                       c.in_batch_negatives)
            q = tokenize(tok, [b["q"] for b in batch], c.max_length)
            p = tokenize(tok, passages, c.max_length)
            return {"q_ids": q["input_ids"], "q_mask": q["attention_mask"], "p_ids": p["input_ids"],
                    "p_mask": p["attention_mask"], "pos_mask": pos_mask, "neg_mask": neg_mask}

        return Built(encoder, tok, items, collate)

    def loss(self, model, batch):
        from lathe.methods.retrieval.contrastive import info_nce

        q = model(batch["q_ids"], batch["q_mask"])
        p = model(batch["p_ids"], batch["p_mask"])
        loss = info_nce(q.float(), p.float(), batch["pos_mask"], batch["neg_mask"], self.c.temperature)
        return loss, {"tokens": batch["q_mask"].sum() + batch["p_mask"].sum(),
                      "passages": float(batch["p_ids"].shape[0])}

    def save_artifact(self, model, tokenizer, out_dir: Path) -> None:
        from lathe.methods.retrieval.dense import save_encoder

        save_encoder(model, tokenizer, out_dir)


def training_rows(cfg: RetrieverTrainConfig) -> list[dict]:
    if cfg.data.train:
        return data_lib.load_training(cfg.data.train)
    rows = data_lib.toolret_synthetic(cfg.seed, cfg.data.n_tools, cfg.data.n_queries, cfg.data.n_train)["train"]
    return [{"query": r["query"], "instruction": r["prompt"], "pos": r["pos"], "neg": r["neg"]} for r in rows]


def mine_negatives(rows: list[dict], d: data_lib.ToolRetData, retriever: Retriever, c: ContrastiveConfig) -> int:
    """Replace each row's negatives with its top retrieved non-gold tools. Returns rows changed."""
    by_id = {t.id: t.documentation for t in d.tools}
    changed = 0
    for s in range(0, len(rows), 256):
        chunk = rows[s: s + 256]
        inst = [r["instruction"] for r in chunk] if c.use_instruction else None
        for r, hits in zip(chunk, retriever.search([r["query"] for r in chunk], inst, c.mine_top_k)):
            gold = set(r["pos"])
            negs = [by_id[i] for i, _ in hits if by_id[i] not in gold]
            if negs:
                r["neg"] = negs[: max(c.group_size - 1, 1)]
                changed += 1
    return changed


def train_queries_as_eval(rows: list[dict], d: data_lib.ToolRetData, n: int) -> data_lib.ToolRetData:
    """Training rows whose positives are corpus tools, as evaluation queries (training-set NDCG)."""
    by_doc = {t.documentation: t.id for t in d.tools}
    qs = []
    for i, r in enumerate(rows[:n]):
        gold = [by_doc[p] for p in r["pos"] if p in by_doc]
        if gold:
            qs.append(data_lib.Query(f"train_query_{i}", r["query"], r["instruction"],
                                     [{"id": g, "relevance": 1} for g in gold], "train", "train"))
    return data_lib.ToolRetData(d.tools, qs)


@register("job", "retriever_train")
class RetrieverTrainJob(Job):
    Config = RetrieverTrainConfig

    def run(self, cfg: RetrieverTrainConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        import sys

        from lathe.methods.retrieval.bm25 import BM25Retriever
        from lathe.methods.retrieval.dense import DenseRetriever, build_tiny_encoder, load_encoder, save_encoder

        log = (lambda s: print(s, file=sys.stderr)) if show_progress else (lambda s: None)
        d = load_data(cfg.data, cfg.seed)
        rows = training_rows(cfg)
        base_dir = run.artifacts / "base_encoder"
        if cfg.tiny_encoder is not None:
            t = cfg.tiny_encoder
            corpus = [x.documentation for x in d.tools] + [r["query"] + " " + r["instruction"] for r in rows]
            enc, tok = build_tiny_encoder(corpus, t.hidden, t.layers, t.heads, t.vocab_size, cfg.seed)
        else:
            enc, tok = load_encoder(cfg.encoder_path, cfg.encoder_family)
        save_encoder(enc, tok, base_dir)
        before = DenseRetriever(encoder=enc, tokenizer=tok, batch_size=64)
        t0 = time.perf_counter()
        before.index(d.tools)
        log(f"retriever_train: {d.summary()}; {len(rows)} training rows; indexed in {time.perf_counter() - t0:.1f}s")
        c = cfg.contrastive
        mined = 0
        if c.mine_hard_negatives:
            miner: Retriever = before
            if c.mine_with == "bm25":
                miner = BM25Retriever()
                miner.index(d.tools)
            mined = mine_negatives(rows, d, miner, c)
            log(f"retriever_train: mined hard negatives for {mined}/{len(rows)} rows with {c.mine_with}")
        train_eval = train_queries_as_eval(rows, d, cfg.eval_train_queries)
        mode = "instruct" if c.use_instruction else "query_only"

        def measure(r: Retriever) -> dict:
            out = {"eval": score(d, run_retriever(r, d, mode))["average"]}
            if train_eval.queries:
                out["train"] = score(train_eval, run_retriever(r, train_eval, mode))["average"]
            return out

        m_before = measure(before)
        task = RetrieverTask(str(base_dir), rows, c, cfg.seed)
        reporter = Reporter(run, desc="retriever_train", show=show_progress, forward=forward)
        t1 = time.perf_counter()
        try:
            from lathe.jobs.trainer import run_training

            out = run_training(task, cfg.train, cfg.ray, run.path / "checkpoints", seed=cfg.seed,
                               on_records=reporter, artifact_dir=run.artifacts / "encoder")
        finally:
            reporter.close()
        wall = time.perf_counter() - t1
        steps = [r for r in out.metrics if "loss" in r]
        after = DenseRetriever(str(out.artifact), batch_size=64)
        after.index(d.tools)
        m_after = measure(after)
        results: dict[str, Any] = {
            "steps": steps[-1]["step"] if steps else 0, "first_loss": steps[0]["loss"] if steps else None,
            "final_loss": steps[-1]["loss"] if steps else None, "train_wall_s": wall, "mined_rows": mined,
            "mode": mode, "temperature": c.temperature,
            "eval_ndcg@10_before": ev.x100(m_before["eval"]["ndcg@10"]),
            "eval_ndcg@10_after": ev.x100(m_after["eval"]["ndcg@10"]),
            "eval_c@10_before": ev.x100(m_before["eval"]["completeness@10"]),
            "eval_c@10_after": ev.x100(m_after["eval"]["completeness@10"]),
            "artifact": str(out.artifact),
        }
        if "train" in m_before:
            results["train_ndcg@10_before"] = ev.x100(m_before["train"]["ndcg@10"])
            results["train_ndcg@10_after"] = ev.x100(m_after["train"]["ndcg@10"])
        plots = []
        if steps:
            plots.append(plot_curves(run.path / "plots" / "loss.png",
                                     {"InfoNCE": ([r["step"] for r in steps], [r["loss"] for r in steps])},
                                     xlabel="optimizer step", ylabel="loss", title=f"{cfg.name}: InfoNCE"))
        run.write_results(results)
        run.write_report(f"retriever_train: {cfg.name}", [
            ("Data", d.summary()), ("Results (x100)", markdown_table([{k: v for k, v in results.items()
                                                                     if k != "artifact"}], digits=5)),
            ("Artifact", f"`{results['artifact']}`")], plots)
        return results


# ---------------------------------------------------------------------------------------
# serve: `lathe run configs/serve/x.yaml` deploys like `lathe serve` (and blocks until Ctrl-C)


def _serve_config():
    from lathe.serve.config import ServeConfig

    return ServeConfig


@register("job", "serve")
class ServeJob(Job):
    Config = _serve_config()

    def run(self, cfg, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        from lathe.serve.deploy import deploy, wait_forever

        urls = deploy(cfg)
        for name, url in urls.items():
            print(f"lathe serve: {name} at {url}", flush=True)
        run.write_results({"urls": urls})
        wait_forever()
        return {"urls": ", ".join(urls.values())}
