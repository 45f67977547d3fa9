"""ToolRet metrics with trec_eval semantics, and the paper's averaging rule.

qrels `{qid: {tool_id: relevance}}`, run `{qid: {tool_id: score}}`. Ranking: score descending,
ties broken by tool id descending (as trec_eval). Values are fractions here; tables show x100.

- NDCG@k (trec `ndcg_cut`): sum_{i<=k} rel_i / log2(i+1), over the ideal DCG of the qrels cut at k.
- Recall@k: |R ∩ top-k| / |R|;  P@k: |R ∩ top-k| / k (k even when fewer were retrieved).
- MAP@k (trec `map_cut`): (1/|R|) sum_{i<=k, rank_i in R} P@i.
- Completeness@k: 1 if R ⊆ top-k else 0.
Averaging: per task mean; per category the mean over its queries (= query-weighted over tasks);
Average = unweighted mean of the category scores.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

KS = (5, 10, 20)
METRICS = ("ndcg", "recall", "precision", "map", "completeness")
TOP_K = 100


def rank(scores: Mapping[str, float], top_k: int = TOP_K) -> list[str]:
    """trec_eval order: score descending, then doc id descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)[:top_k]]


def query_metrics(gold: Mapping[str, int], scores: Mapping[str, float], ks: Iterable[int] = KS) -> dict[str, float]:
    relevant = {d for d, r in gold.items() if r > 0}
    ranked = rank(scores)
    ideal = sorted((r for r in gold.values() if r > 0), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        top = ranked[:k]
        dcg = sum(gold.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top) if gold.get(d, 0) > 0)
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
        hits, ap = 0, 0.0
        for i, d in enumerate(top):
            if d in relevant:
                hits += 1
                ap += hits / (i + 1)
        n_rel = len(relevant)
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"recall@{k}"] = hits / n_rel if n_rel else 0.0
        out[f"precision@{k}"] = hits / k
        out[f"map@{k}"] = ap / n_rel if n_rel else 0.0
        out[f"completeness@{k}"] = 1.0 if n_rel and hits == n_rel else 0.0
    return out


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
             ks: Iterable[int] = KS) -> tuple[dict[str, dict[str, float]], int]:
    """Per-query metrics, and how many queries were skipped for having no relevant tools.

    A query in qrels with no run entry scores 0 (it retrieved nothing)."""
    per_query, skipped = {}, 0
    for qid, gold in qrels.items():
        if not any(r > 0 for r in gold.values()):
            skipped += 1
            continue
        per_query[qid] = query_metrics(gold, run.get(qid, {}), ks)
    return per_query, skipped


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def aggregate(per_query: Mapping[str, dict[str, float]], task_of: Mapping[str, str],
              category_of: Mapping[str, str]) -> dict:
    """{"tasks": {task: m}, "categories": {cat: m}, "average": m, "n_queries": {...}} (fractions)."""
    by_task: dict[str, list] = {}
    by_cat: dict[str, list] = {}
    for qid, m in per_query.items():
        by_task.setdefault(task_of[qid], []).append(m)
        by_cat.setdefault(category_of[qid], []).append(m)
    cats = {c: _mean(rows) for c, rows in sorted(by_cat.items())}
    average = {k: sum(m[k] for m in cats.values()) / len(cats) for k in next(iter(cats.values()))} if cats else {}
    return {"tasks": {t: _mean(rows) for t, rows in sorted(by_task.items())}, "categories": cats,
            "average": average, "n_queries": {c: len(rows) for c, rows in sorted(by_cat.items())}}


def category_average(category_scores: Iterable[float]) -> float:
    """The paper's Average column: the unweighted mean of the category scores."""
    vals = list(category_scores)
    return sum(vals) / len(vals)


def x100(v: float) -> float:
    return round(100.0 * v, 2)
