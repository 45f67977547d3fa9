"""GenGround with ScriptedLLM on the synthetic multi-hop corpus; batch grounding modes; the baseline."""

from __future__ import annotations

import json

import pytest

from lathe.data import multihop as mh
from lathe.eval import agents as ev
from lathe.methods.agents.genground import (NO_ANSWER, GenGround, GenGroundConfig, normalize_output,
                                            retrieve_then_read)
from lathe.methods.agents.interpreter import run_code
from lathe.methods.agents.llm import ScriptedLLM


@pytest.fixture(scope="module")
def corpus():
    return mh.generate(0)


def test_two_hop_question_is_answered_and_grounding_corrects_the_guess(corpus):
    rows, passages = corpus
    row = next(r for r in rows if r["type"] == "2-hop" and "founder" in r["question"])
    h1, h2 = row["hops"]
    know = mh.Knowledge(passages, "index")

    def deduce(msgs):
        hist = msgs[-1]["content"].split("Question: " + row["question"])[1]
        if "Answer 2:" in hist:
            return f" So the answer is {h2['answer']}.\nAnswer 3: FINISH[{h2['answer']}]"
        if "Answer 1:" in hist:
            founder = hist.split("Answer 1:")[1].split("\n")[0].strip()
            return f" Where was {founder} born?\nAnswer 2: {founder} was born in **Nowhere**."
        return f" {h1['sub_question']}\nAnswer 1: Someone Wrong"

    def revise(msgs):
        c = msgs[-1]["content"]
        ans = h1["answer"] if "Who founded" in c else h2["answer"]
        return json.dumps({"answer": ans, "citation": "from the documents"})

    def ground(msgs):
        c = msgs[-1]["content"]
        target = h1["answer"] if "Who founded" in c else h2["answer"]
        return f'{target} {{"citation": "{target}"}}' if target in c.split('"""')[1] else "Insufficient information"

    llm = ScriptedLLM([(r"^Revise a candidate", revise), (r"^Answer the question using only", ground),
                       (r"Question:", deduce)])
    gg = GenGround(llm, know.for_question(row), GenGroundConfig(n_docs=3))
    out = gg.answer(row["question"])
    assert out["answer"] == h2["answer"] and out["finished"]
    assert [s["answer"] for s in out["steps"][:2]] == [h1["answer"], h2["answer"]]  # revised, not the guesses
    # retrieval used the sub-questions, and the FINISH step was not grounded
    assert know.calls == [h1["sub_question"], f"Where was {h1['answer']} born?"]
    assert ev.cover_em(out["answer"], row["answers"]) == 1.0
    assert ev.score_qa([row], [out["answer"]]) == {"questions": 1, "acc": 100.0, "f1": 100.0}


def _docs(n):
    return [f"Title: D{i} Text: fact number {i}" for i in range(n)]


def test_paper_mode_stops_at_first_citing_batch():
    llm = ScriptedLLM([(r"^Revise", '{"answer": "fixed", "citation": "c"}'),
                       (r"^Answer the question", lambda m: '{"citation": "fact number 4"}'
                        if "D4 " in m[-1]["content"] else "Insufficient information")])
    gg = GenGround(llm, lambda q, k: _docs(9))
    g = gg.batch_ground("q", "guess", _docs(9))
    assert gg.ground_calls == 2 and g["answer"] == "fixed" and g["documents"] == _docs(9)[3:6]
    none = GenGround(ScriptedLLM([(r".*", "Insufficient information")]), lambda q, k: [])
    assert none.batch_ground("q", "guess", _docs(9))["answer"] == "guess" and none.ground_calls == 3


@pytest.mark.parametrize("cites,expected_calls", [(False, 2), (True, 3)])
def test_queue_mode_counts(cites, expected_calls):
    reply = (lambda m: '{"citation": "' + m[-1]["content"].split("Text: ")[1].split("\n")[0] + '"}') if cites \
        else "Insufficient information"
    llm = ScriptedLLM([(r"^Revise", '{"answer": "r"}'), (r"^Answer the question", reply)])
    gg = GenGround(llm, lambda q, k: _docs(9), GenGroundConfig(grounding_mode="queue"))
    gg.batch_ground("q", "guess", _docs(9))
    assert gg.ground_calls == expected_calls and [len(d) for d in gg.revise_inputs] == [3]
    if cites:  # survivors: the one best-matching document of each grounded batch, in queue order
        assert gg.revise_inputs[0] == [_docs(9)[0], _docs(9)[3], _docs(9)[6]]


def test_no_finish_means_no_answer_and_missing_answer_is_reasked():
    calls = []
    llm = ScriptedLLM([(r"Answer: $", lambda m: calls.append(1) or "a guess"),
                       (r"^Answer the question", "Insufficient information"),
                       (r"Question:", " What is it?")])
    gg = GenGround(llm, lambda q, k: _docs(3), GenGroundConfig(max_iters=2))
    out = gg.answer("What?")
    assert out["answer"] == NO_ANSWER and not out["finished"] and len(calls) == 2
    assert out["steps"][0]["answer"] == "a guess"
    assert [r["stop"] for r in llm.log if r["messages"][-1]["content"].endswith("Answer: ")] == [["\n"], ["\n"]]
    assert normalize_output("FINISH[Paris [1]]\t(France)()") == "Paris (France)"


def test_retrieve_then_read(corpus):
    rows, passages = corpus
    row = rows[0]
    know = mh.Knowledge(passages, "oracle")
    llm = ScriptedLLM([(r"Documents:", row["answers"][0] + "\nmore")])
    out = retrieve_then_read(llm, know.for_question(row), row["question"])
    assert out["answer"] == row["answers"][0] and know.calls == [row["question"]]


def test_interpreter_blocks_imports_network_and_files():
    assert run_code("print(sum(x['v'] for x in response))", [{"v": 2}, {"v": 3}]) == (True, "5\n", None)
    for code in ("import os", "import socket", "__import__('socket').socket()", "open('/etc/hostname').read()",
                 "from subprocess import run"):
        ok, _, err = run_code(code, {})
        assert not ok and err, code
    ok, _, err = run_code("while True:\n    pass", {}, timeout_s=1)
    assert not ok and "Timeout" in err
    ok, _, err = run_code("x = 'a' * (2 ** 31)", {}, memory_mb=128)
    assert not ok and "Memory" in err
