"""ToolRet: metrics vs hand computations, formatting, data, retrievers, index persistence, InfoNCE, training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lathe.data import toolret
from lathe.eval import toolret as ev
from lathe.methods.retrieval.formatting import format_query
from lathe.platform.errors import LatheError


# ----------------------------------------------------------------------------- metrics

def test_metrics_hand_computed_two_relevant_at_1_and_3():
    gold = {"t1": 1, "t2": 1}
    run = {"t1": 0.9, "x": 0.8, "t2": 0.7, "y": 0.6, "z": 0.5}
    m = ev.query_metrics(gold, run, ks=(2, 5))
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert ev.x100(m["ndcg@5"]) == 91.97 and ev.x100(m["map@5"]) == 83.33
    assert ev.x100(m["recall@5"]) == 100.0 and ev.x100(m["precision@5"]) == 40.0 and m["completeness@5"] == 1.0
    assert ev.x100(m["ndcg@2"]) == 61.31 and ev.x100(m["map@2"]) == 50.0
    assert ev.x100(m["recall@2"]) == 50.0 and ev.x100(m["precision@2"]) == 50.0 and m["completeness@2"] == 0.0


def test_precision_denominator_is_k_and_ties_break_by_id_descending():
    m = ev.query_metrics({"a": 1}, {"a": 1.0}, ks=(5,))
    assert m["precision@5"] == pytest.approx(0.2)  # one retrieved, still / 5
    assert ev.rank({"a": 1.0, "c": 1.0, "b": 1.0, "d": 2.0}) == ["d", "c", "b", "a"]
    # tie: 'b' ranks above 'a' (id descending), so gold 'a' sits at rank 2
    m = ev.query_metrics({"a": 1}, {"a": 0.5, "b": 0.5}, ks=(5,))
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3)) and m["map@5"] == pytest.approx(0.5)


def test_averaging_rule_and_empty_labels_skipped():
    assert round(ev.category_average([18.98, 21.20, 26.76]), 2) == 22.31
    qrels = {"w1": {"a": 1}, "w2": {"a": 1}, "c1": {"b": 1}, "e": {}}
    run = {"w1": {"a": 1.0}, "w2": {"z": 1.0}, "c1": {"b": 1.0}}
    per_q, skipped = ev.evaluate(qrels, run)
    assert skipped == 1
    agg = ev.aggregate(per_q, {"w1": "t1", "w2": "t2", "c1": "t3"}, {"w1": "web", "w2": "web", "c1": "code"})
    assert agg["categories"]["web"]["ndcg@10"] == pytest.approx(0.5)   # query-weighted over web's tasks
    assert agg["average"]["ndcg@10"] == pytest.approx((0.5 + 1.0) / 2)  # unweighted over categories


# ----------------------------------------------------------------------------- formatting

def test_query_formats_byte_for_byte():
    assert format_query("e5", "find x", "Given a task") == "Instruct: Given a task\nquery: find x"
    assert format_query("e5", "find x", None, legacy_empty_instruction=True) == "Instruct: \nquery: find x"
    assert format_query("e5", "find x", None) == "find x"
    assert format_query("generic", "q", "I") == "Instruct: I\nQuery: q"
    assert format_query("bm25", "q", "I") == "I q"
    assert format_query("nv-embed", "q", "I").endswith("</s>")
    with pytest.raises(LatheError, match="unknown model family"):
        format_query("mystery", "q", "I")


# ----------------------------------------------------------------------------- data

def test_synthetic_deterministic_published_fields_labels_resolve(tmp_path):
    a = toolret.toolret_synthetic(3, n_tools=120, n_queries=30, n_train=10)
    assert a == toolret.toolret_synthetic(3, n_tools=120, n_queries=30, n_train=10)
    assert a != toolret.toolret_synthetic(4, n_tools=120, n_queries=30, n_train=10)
    assert set(a["queries"][0]) == {"id", "query", "instruction", "labels", "category"}
    assert isinstance(a["queries"][0]["labels"], str)
    paths = toolret.write_synthetic(tmp_path, 3, n_tools=120, n_queries=30, n_train=10)
    d = toolret.load(paths["tools"], paths["queries"])
    assert len(d.tools) == 120 and len(d.queries) == 30 and not d.missing_labels
    assert all(1 <= len(q.labels) <= 3 for q in d.queries)
    assert {q.task for q in d.queries} <= {"synth-web", "synth-code", "synth-customized"}
    assert all(q.instruction.startswith("Given a `synth-") for q in d.queries)
    assert isinstance(d.tools[0].doc, dict) and {"name", "description", "parameters"} <= set(d.tools[0].doc)


def test_loader_reports_missing_ids_and_bad_files(tmp_path):
    tools = tmp_path / "tools.jsonl"
    toolret.write_jsonl([{"id": "a", "documentation": json.dumps({"name": "a"})}], tools)
    q = tmp_path / "q.jsonl"
    toolret.write_jsonl([{"id": "x_query_1", "query": "hi", "instruction": "", "category": "web",
                          "labels": json.dumps([{"id": "a", "relevance": 1}, {"id": "ghost", "relevance": 1}])},
                         {"id": "x_query_2", "query": "hi", "labels": "[]", "category": "web"}], q)
    d = toolret.load(tools, q)
    assert d.missing_labels == [("x_query_1", "ghost")] and d.skipped_empty == 1 and d.queries[0].task == "x"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "documentation": "{}"}\n{oops\n')
    with pytest.raises(LatheError, match=r"bad.jsonl:2: malformed JSON"):
        toolret.load_tools(bad)
    # both training layouts
    tr = tmp_path / "train.jsonl"
    toolret.write_jsonl([{"query": "q", "pos": ["p"], "neg": ["n"], "prompt": "I"},
                         {"query": "q2", "id": "1", "prompt": "J", "positive": [{"name": "p2"}], "negative": []}], tr)
    rows = toolret.load_training(tr)
    assert rows[0] == {"query": "q", "instruction": "I", "pos": ["p"], "neg": ["n"]}
    assert rows[1]["instruction"] == "J" and json.loads(rows[1]["pos"][0]) == {"name": "p2"}


# ----------------------------------------------------------------------------- InfoNCE

def test_info_nce_equal_scores_is_ln_1_plus_n():
    import torch

    from lathe.methods.retrieval.contrastive import batch_masks, info_nce

    n = 7
    q = torch.nn.functional.normalize(torch.ones(1, 4), dim=-1)
    p = q.repeat(n + 1, 1)
    pos = torch.zeros(1, n + 1, dtype=torch.bool)
    pos[0, 0] = True
    assert float(info_nce(q, p, pos, ~pos, 0.02)) == pytest.approx(math.log(1 + n), rel=1e-5)
    texts, pm, nm = batch_masks([["a"], ["b", "c"]], [["n1", "b"], []], in_batch=True)
    assert texts == ["a", "b", "c", "n1"]
    assert pm.tolist() == [[True, False, False, False], [False, True, True, False]]
    assert nm[0].tolist() == [False, True, True, True] and nm[1].tolist() == [True, False, False, True]


# ----------------------------------------------------------------------------- retrievers

@pytest.fixture(scope="module")
def corpus():
    return toolret.synthetic_data(seed=1, n_tools=120, n_queries=10)


@pytest.fixture(scope="module")
def dense(corpus):
    from lathe.methods.retrieval.dense import DenseRetriever

    r = DenseRetriever(batch_size=64, doc_max_length=96)
    r.index(corpus.tools)
    return r


def _names(corpus, n=5):
    return [(t.id, t.doc["name"]) for t in corpus.tools[:: len(corpus.tools) // n][:n]]


def test_bm25_exact_tool_name_ranks_first(corpus, tmp_path):
    from lathe.methods.retrieval.bm25 import BM25Retriever

    r = BM25Retriever()
    r.index(corpus.tools)
    names = _names(corpus)
    hits = r.search([f"please use {name}" for _, name in names], k=5)
    assert [h[0][0] for h in hits] == [tid for tid, _ in names]
    loaded = BM25Retriever.load(r.save(tmp_path / "bm25"))
    assert loaded.search([q.query for q in corpus.queries], k=10) == r.search([q.query for q in corpus.queries], k=10)


def test_dense_exact_tool_name_ranks_first(corpus, dense):
    names = _names(corpus)
    hits = dense.search([name for _, name in names], k=5)
    assert [h[0][0] for h in hits] == [tid for tid, _ in names]
    assert dense.family == "all-minilm"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_save_load_identical(corpus, dense, tmp_path, kind):
    from lathe.methods.retrieval.index import VectorIndex, numpy_topk

    vecs, qv = dense.doc_vectors, dense.encode([q.query for q in corpus.queries])
    idx = VectorIndex(kind, nlist=8).build(vecs, [t.id for t in corpus.tools])
    s1, ids1 = idx.search(qv, 10)
    again = VectorIndex.load(idx.save(tmp_path / kind))
    s2, ids2 = again.search(qv, 10)
    assert ids1 == ids2 and np.array_equal(s1, s2)
    if kind == "flat":
        ns, ni = numpy_topk(vecs, qv, 10)
        assert ids1 == [[corpus.tools[i].id for i in row] for row in ni]
        assert np.allclose(s1, ns, atol=1e-5)


def test_hybrid_and_full_corpus_search(corpus, dense):
    from lathe.methods.retrieval.bm25 import BM25Retriever
    from lathe.methods.retrieval.hybrid import HybridRetriever

    bm = BM25Retriever()
    bm.index(corpus.tools)
    h = HybridRetriever([bm, dense], [0.3, 0.7])
    qs = [q for q in corpus.queries if q.category == "web"][:5]
    hits = h.search([q.query for q in qs], [q.instruction for q in qs], k=100)
    cats = {i.split("_tool_")[0] for row in hits for i, _ in row}
    assert len(cats) > 1  # web queries are searched against the full multi-category corpus
    assert all(len(row) == 100 and row[0][1] >= row[-1][1] for row in hits)
    with pytest.raises(LatheError, match="instructions"):
        h.search(["a", "b"], ["only one"], k=5)


# ----------------------------------------------------------------------------- training (Ray Train)

@pytest.mark.slow  # a Ray Train fit of the encoder (~40 s on 2 cores)
def test_retriever_train_tiny_encoder_raises_train_ndcg(ray_local, tmp_path):
    from lathe.jobs.retrieval import RetrieverTrainConfig, RetrieverTrainJob
    from lathe.platform.runstore import RunDir

    cfg = RetrieverTrainConfig.model_validate({
        "job": "retriever_train", "name": "t", "output_root": str(tmp_path),
        "tiny_encoder": {"hidden": 64, "layers": 1, "heads": 2, "vocab_size": 512},
        "data": {"n_tools": 120, "n_queries": 30, "n_train": 160},
        "contrastive": {"group_size": 4, "max_length": 64, "temperature": 0.05},
        "train": {"max_steps": 50, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "checkpoint_every": 50},
        "eval_train_queries": 80})
    res = RetrieverTrainJob().run(cfg, RunDir.create(cfg), show_progress=False)
    assert res["steps"] == 50 and res["final_loss"] < res["first_loss"]
    assert res["train_ndcg@10_after"] > res["train_ndcg@10_before"] + 5


# ----------------------------------------------------------------------------- fidelity (issue 17)

def test_metrics_equal_pytrec_eval_on_1000_random_runs_with_ties():
    """Built-in metrics vs pytrec_eval (trec_eval) within 1e-9; scores from a 4-value set, so most
    rankings contain ties that only the doc-id-descending rule orders."""
    import random

    import pytrec_eval

    rng = random.Random(17)
    pool = [f"t{i:02d}" for i in range(40)]
    qrels, runs = {}, {}
    for q in range(1000):
        gold = rng.sample(pool, rng.randint(1, 6))
        qrels[f"q{q}"] = {rng.choice(pool): 0} | {d: rng.choice([1, 1, 1, 2]) for d in gold}  # graded, one judged 0
        runs[f"q{q}"] = {d: rng.choice([0.1, 0.2, 0.3, 0.4]) for d in rng.sample(pool, rng.randint(1, 35))}
    measures = {f"{m}.5,10,20" for m in ("ndcg_cut", "P", "recall", "map_cut")}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(runs)
    ours, skipped = ev.evaluate(qrels, runs)
    assert skipped == 0 and set(ours) == set(ref) and len(ours) == 1000
    names = {"ndcg": "ndcg_cut", "precision": "P", "recall": "recall", "map": "map_cut"}
    worst = 0.0
    for qid, m in ours.items():
        for k in ev.KS:
            for mine, theirs in names.items():
                worst = max(worst, abs(m[f"{mine}@{k}"] - ref[qid][f"{theirs}_{k}"]))
            assert m[f"completeness@{k}"] == (1.0 if ref[qid][f"recall_{k}"] == 1.0 else 0.0)
    assert worst < 1e-9, worst


def test_last_token_pooling_left_and_right_padding():
    import torch

    from lathe.methods.retrieval.dense import Encoder

    class Emb(torch.nn.Module):  # hidden state = the token's own embedding: no position, no context
        def __init__(self):
            super().__init__()
            self.e = torch.nn.Embedding(10, 4)

        def forward(self, input_ids, attention_mask):
            return type("O", (), {"last_hidden_state": self.e(input_ids)})()

    enc = Encoder(Emb(), "e5-mistral")
    assert enc.pooling == "last"
    want = enc.backbone.e.weight.detach()[[3, 5]]
    want = torch.nn.functional.normalize(want, dim=-1)
    right = enc(torch.tensor([[1, 2, 3, 0, 0], [4, 4, 4, 4, 5]]), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    left = enc(torch.tensor([[0, 0, 1, 2, 3], [4, 4, 4, 4, 5]]), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    assert torch.allclose(right, want) and torch.allclose(left, want)


def _tiny_encoder_dir(tmp_path, name="enc", texts=None):
    from lathe.methods.retrieval.dense import build_tiny_encoder, save_encoder

    texts = texts or ["alpha beta gamma delta zebra yak tool weather music"] * 8
    enc, tok = build_tiny_encoder(texts, hidden=32, layers=1, heads=2, vocab_size=128)
    return save_encoder(enc, tok, tmp_path / name), enc, tok


def test_encoder_family_is_explicit_never_guessed_from_the_directory(tmp_path):
    from lathe.methods.retrieval import RetrieverSpec
    import torch

    from lathe.methods.retrieval.dense import load_encoder

    d, _, _ = _tiny_encoder_dir(tmp_path, "all-minilm-copy")
    (d / "lathe_encoder.json").unlink()
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(LatheError, match=r"encoder family not given.*contriever.*e5.*gtr-t5"):
        load_encoder(d)  # a MiniLM-looking name and mean pooling are not a family
    e5, _ = load_encoder(d, "e5")
    assert e5.family == "e5" and e5.normalize and e5.pooling == "mean"
    for fam in ("contriever", "gtr-t5"):
        enc, _ = load_encoder(d, fam)
        assert enc.normalize is False
        ids = torch.tensor([[2, 3, 4]])
        out = enc(ids, torch.ones_like(ids))
        assert abs(float(out.detach().norm()) - 1.0) > 1e-3  # really not L2-normalised
    from lathe.methods.retrieval.dense import DenseRetriever

    r = DenseRetriever(str(d), family="e5")
    assert r.formatted(["find x"], ["Given a task"]) == ["Instruct: Given a task\nquery: find x"]
    with pytest.raises(LatheError, match=r"unknown model family 'e6'.*known: .*e5"):
        load_encoder(d, "e6")
    with pytest.raises(Exception, match=r"unknown encoder family 'minilm'; choose one of .*all-minilm"):
        RetrieverSpec(kind="dense", model_path=str(d), family="minilm")


def test_dense_documents_cut_at_min_model_positions_2048(tmp_path):
    """Two documents that differ only after token 300 get different vectors (the old cut was 256)."""
    from lathe.data.toolret import Tool
    from lathe.methods.retrieval import RetrieverSpec, build_retriever

    d, enc, tok = _tiny_encoder_dir(tmp_path)
    assert enc.backbone.config.max_position_embeddings == 512
    r = build_retriever(RetrieverSpec(kind="dense", model_path=str(d)))
    filler = " ".join(["alpha"] * 50)
    assert 256 < len(tok(filler)["input_ids"]) < 480
    r.index([Tool("a", filler + " zebra zebra", None), Tool("b", filler + " yak yak", None)])
    assert not np.allclose(r.doc_vectors[0], r.doc_vectors[1])
    assert r.encode([" ".join(["alpha"] * 900)]).shape == (1, 32)  # longer than 512 positions: cut, no error
    short = build_retriever(RetrieverSpec(kind="dense", model_path=str(d), doc_max_length=256))
    short.index([Tool("a", filler + " zebra zebra", None), Tool("b", filler + " yak yak", None)])
    assert np.allclose(short.doc_vectors[0], short.doc_vectors[1])  # the option still cuts shorter


def test_category_derived_from_task_name_when_absent(tmp_path):
    rows = [{"id": "toolace_query_1", "query": "a", "labels": "[]"},
            {"id": "gorilla-pytorch_query_2", "query": "b", "labels": "[]"},
            {"id": "gta_query_3", "query": "c", "labels": "[]"},
            {"id": "x_query_4", "query": "d", "labels": "[]", "category": "web"}]
    q = tmp_path / "q.jsonl"
    toolret.write_jsonl(rows, q)
    assert [x.category for x in toolret.load_queries(q)] == ["web", "code", "customized", "web"]
    toolret.write_jsonl([{"id": "mystery_query_1", "query": "a", "labels": "[]"}], q)
    with pytest.raises(LatheError, match=r"q.jsonl: row 1: no 'category', and task 'mystery'"):
        toolret.load_queries(q)


def test_bm25_and_dense_order_ties_by_id_descending_before_the_cut(tmp_path):
    from lathe.data.toolret import Tool
    from lathe.methods.retrieval.bm25 import BM25Retriever
    from lathe.methods.retrieval.dense import DenseRetriever

    same = json.dumps({"name": "alpha", "description": "alpha utility"})
    tools = [Tool(f"t{i:02d}", same, json.loads(same)) for i in range(30)]
    tools += [Tool(f"o{i}", json.dumps({"name": "other", "description": "beta"}), {"name": "other"})
              for i in range(5)]
    bm = BM25Retriever()
    bm.index(tools)
    assert [i for i, _ in bm.search(["alpha"], k=3)[0]] == ["t29", "t28", "t27"]
    _, enc, tok = _tiny_encoder_dir(tmp_path)
    dn = DenseRetriever(encoder=enc, tokenizer=tok)
    dn.index(tools)
    assert [i for i, _ in dn.search(["alpha utility"], k=3)[0]] == ["t29", "t28", "t27"]


class _Fixed:
    """A retriever stub returning fixed hits (for hand-computed fusion)."""

    def __init__(self, hits):
        self.hits, self.size = hits, 100

    def search(self, queries, instructions=None, k=10):
        return [self.hits[:k] for _ in queries]


def test_hybrid_fusion_equals_hand_computed_ranking():
    from lathe.methods.retrieval.hybrid import HybridRetriever

    bm = _Fixed([("a", 10.0), ("b", 6.0), ("c", 2.0)])
    dn = _Fixed([("c", 0.9), ("d", 0.5), ("a", 0.1)])
    # min-max: bm a=1 b=.5 c=0; dense c=1 d=.5 a=0 -> a=.3, b=.15, c=.7, d=.35
    h = HybridRetriever([bm, dn], [0.3, 0.7], "minmax", depth=3)
    got = h.search(["q"], k=4)[0]
    assert [i for i, _ in got] == ["c", "d", "a", "b"]
    assert [s for _, s in got] == pytest.approx([0.7, 0.35, 0.3, 0.15])
    rrf = HybridRetriever([bm, dn], [0.3, 0.7], "rrf", depth=3).search(["q"], k=4)[0]
    want = {"a": 0.3 / 61 + 0.7 / 63, "b": 0.3 / 62, "c": 0.3 / 63 + 0.7 / 61, "d": 0.7 / 62}
    assert [i for i, _ in rrf] == sorted(want, key=want.get, reverse=True)
    assert dict(rrf) == pytest.approx(want)
    # a tie at the cut (equal weights: a = b = .5 + 0) keeps the higher id, as trec_eval ranks it
    tie = HybridRetriever([_Fixed([("a", 2.0), ("x", 1.0)]), _Fixed([("b", 2.0), ("y", 1.0)])], [0.5, 0.5],
                          depth=2).search(["q"], k=1)[0]
    assert tie == [("b", 0.5)]


# ----------------------------------------------------------------------------- jobs through the CLI

def test_retrieval_eval_job_via_cli_matches_pytrec_eval(ray_local, tmp_path, capsys):
    """`lathe run configs/retrieval/toolret_eval.yaml` (BM25s only, small synthetic corpus): the
    reported Average NDCG@10 equals one computed here with pytrec_eval and the averaging rule."""
    import pytrec_eval

    from lathe.cli import main
    from lathe.methods.retrieval.bm25 import BM25Retriever

    rc = main(["run", "configs/retrieval/toolret_eval.yaml", "data.n_tools=90", "data.n_queries=30",
               "retrievers=[{kind: bm25, label: BM25s}]", "modes=[query_only]", f"output_root={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0 and "| BM25s |" in out and "report:" in out
    res = json.loads(next(tmp_path.glob("*/results.json")).read_text())
    d = toolret.synthetic_data(0, 90, 30)
    bm = BM25Retriever()
    bm.index(d.tools)
    run = {q.id: dict(h) for q, h in zip(d.queries, bm.search([q.query for q in d.queries], k=100))}
    per_q = pytrec_eval.RelevanceEvaluator(d.qrels(), {"ndcg_cut.10"}).evaluate(run)
    cats: dict[str, list[float]] = {}
    for q in d.queries:
        cats.setdefault(q.category, []).append(per_q[q.id]["ndcg_cut_10"])
    want = sum(sum(v) / len(v) for v in cats.values()) / len(cats)
    assert len(cats) == 3 and res["tools"] == 90 and res["queries"] == 30
    assert res["BM25s/query_only/ndcg@10"] == pytest.approx(100 * want, abs=0.006)
