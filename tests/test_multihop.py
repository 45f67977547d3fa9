"""Multi-hop corpus, published-file loaders and retrieval modes."""

from __future__ import annotations

import json

import pytest

from lathe.data import multihop as mh
from lathe.platform.errors import LatheError


def test_synthetic_chains_are_grounded_in_passages():
    rows, passages = mh.generate(0)
    by_id = {p["id"]: p for p in passages}
    assert {r["type"] for r in rows} == {"2-hop", "3-hop", "4-hop"}
    for r in rows:
        assert len(r["hops"]) == int(r["type"][0]) and r["answers"] == [r["hops"][-1]["answer"]]
        for h in r["hops"]:  # each hop's answer is written on the passage that hop retrieves
            assert h["answer"] in by_id[h["passage_id"]]["text"]
        assert set(r["gold_passage_ids"]) < set(r["context_ids"])


def test_retrieval_modes():
    rows, passages = mh.generate(0)
    r = next(x for x in rows if x["type"] == "2-hop")
    oracle = mh.Knowledge(passages, "oracle").for_question(r)("anything", 10)
    assert len(oracle) == 2 and all(s.startswith("Title: ") and " Text: " in s for s in oracle)
    sim = mh.Knowledge(passages, "simulation", seed=1).for_question(r)("anything", 5)
    assert len(sim) == 5 and set(oracle) <= set(sim)
    idx = mh.Knowledge(passages, "index")
    first = idx.for_question(r)(r["hops"][0]["sub_question"], 3)
    gold0 = next(p for p in passages if p["id"] == r["hops"][0]["passage_id"])
    assert first[0] == mh.passage_string(gold0) and idx.calls == [r["hops"][0]["sub_question"]]
    with pytest.raises(LatheError, match="knowledge.mode"):
        mh.Knowledge(passages, "web")


def test_loaders_read_published_layouts(tmp_path):
    hotpot = [{"_id": "5a8b", "question": "Which city?", "answer": "Paris", "type": "bridge", "level": "hard",
               "supporting_facts": [["Eiffel Tower", 0], ["Paris", 1], ["Paris", 0]],
               "context": [["Eiffel Tower", ["The tower is in Paris.", " It is tall."]], ["Paris", ["Paris is big."]],
                           ["Rome", ["Rome is old."]]]}]
    (tmp_path / "hotpot_dev_distractor_v1.json").write_text(json.dumps(hotpot))
    qs, ps = mh.load_questions(tmp_path / "hotpot_dev_distractor_v1.json", "hotpotqa")
    assert qs[0] == {"qid": "5a8b", "question": "Which city?", "answers": ["Paris"], "type": "bridge",
                     "gold_passage_ids": ["Eiffel Tower", "Paris"], "context_ids": ["Eiffel Tower", "Paris", "Rome"]}
    assert ps[0]["text"] == "The tower is in Paris.  It is tall."
    wiki = [dict(hotpot[0], _id="w1", type="compositional", evidences=[["a", "b", "c"]])]
    (tmp_path / "dev.json").write_text(json.dumps(wiki))
    assert mh.load_questions(tmp_path / "dev.json", "2wiki")[0][0]["type"] == "compositional"
    mus = {"id": "2hop__1_2", "question": "Who?", "answer": "Ada", "answer_aliases": ["A. L."], "answerable": True,
           "paragraphs": [{"idx": 0, "title": "X", "paragraph_text": "x", "is_supporting": False},
                          {"idx": 1, "title": "Ada", "paragraph_text": "Ada wrote.", "is_supporting": True}]}
    (tmp_path / "musique_ans_v1.0_dev.jsonl").write_text(json.dumps(mus) + "\n" + json.dumps(mus | {"id": "b"}) + "\n")
    qs, ps = mh.load_questions(tmp_path / "musique_ans_v1.0_dev.jsonl", "musique")
    assert len(qs) == 2 and qs[0]["answers"] == ["Ada", "A. L."] and qs[0]["gold_passage_ids"] == ["2hop__1_2-1"]
    assert qs[0]["type"] == "2hop" and len(ps) == 4
    (tmp_path / "strategyqa.json").write_text(json.dumps([{"qid": "s1", "question": "Is it?", "answer": True}]))
    assert mh.load_questions(tmp_path / "strategyqa.json", "strategyqa")[0][0]["answers"] == ["True"]
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "no id"}]))
    with pytest.raises(LatheError, match="row 0: missing field '_id'"):
        mh.load_questions(tmp_path / "bad.json", "hotpotqa")
    with pytest.raises(LatheError, match="format"):
        mh.load_questions(tmp_path / "bad.json", "nq")
    (tmp_path / "psgs.tsv").write_text("id\ttext\ttitle\n1\tAda wrote.\tAda\n")
    assert mh.load_passages(tmp_path / "psgs.tsv") == [{"id": "1", "text": "Ada wrote.", "title": "Ada"}]
    (tmp_path / "bad.tsv").write_text("1\tonly two\n")
    with pytest.raises(LatheError, match="line 1"):
        mh.load_passages(tmp_path / "bad.tsv")
