"""Reward tables, the blinded human-review CSV round trip, and the both-orders judge protocol."""

from __future__ import annotations

import csv

import pytest

from lathe.eval import alignment as E
from lathe.platform.errors import LatheError


def test_reward_table_and_series():
    rows = [{"round": 1, "agent": "t0", "reward": 1.5}, {"round": 0, "agent": "t0", "reward": 1.0},
            {"round": 0, "agent": "s", "reward": 0.5}, {"round": 1, "agent": "s", "reward": 2.0, "rm_reward": 0.1}]
    assert E.reward_table(rows) == [{"round": 0, "t0": 1.0, "s": 0.5}, {"round": 1, "t0": 1.5, "s": 2.0}]
    assert E.reward_table(rows, "rm_reward") == [{"round": 1, "t0": None, "s": 0.1}]
    assert E.reward_series(rows) == {"t0": ([0, 1], [1.0, 1.5]), "s": ([0, 1], [0.5, 2.0])}


def test_review_csv_is_blinded_and_imports_back(tmp_path):
    prompts = [f"q{i}" for i in range(40)]
    system = [f"sys{i}" for i in range(40)]
    base = [f"base{i}" for i in range(40)]
    path = E.export_review(prompts, system, base, tmp_path / "review.csv", seed=1)
    rows = list(csv.DictReader(path.open()))
    assert [r["id"] for r in rows] == [str(i) for i in range(40)]
    assert [r["prompt"] for r in rows] != prompts  # order randomised
    keys = [r["key"] for r in rows]
    assert 5 < keys.count("A") < 35  # sides randomised
    for r in rows:
        sys_side = r[f"response_{r['key']}"]
        assert sys_side.startswith("sys") and sys_side[3:] == r["prompt"][1:]
    # a reviewer who always prefers the system on the first 30 rows, ties 5, prefers baseline 5
    for i, r in enumerate(rows):
        other = "B" if r["key"] == "A" else "A"
        r["judgement"] = r["key"] if i < 30 else ("tie" if i < 35 else other)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=E.REVIEW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    got = E.import_review(path)
    assert (got["win"], got["tie"], got["loss"], got["n"]) == (30, 5, 5, 40)
    assert got["win_rate"] == pytest.approx((30 + 2.5) / 40)
    rows[3]["judgement"] = "maybe"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=E.REVIEW_FIELDS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(LatheError, match=r"review.csv: line 5: judgement must be A, B or tie"):
        E.import_review(path)


def test_judge_counts_only_agreeing_orders():
    qs = ["q0", "q1", "q2", "q3"]
    sys_, base = ["GOOD0", "GOOD1", "meh2", "x3"], ["bad0", "bad1", "GOOD2", "y3"]

    def judge(prompts):
        out = []
        for p in prompts:
            a = p.split("Response A: ")[1].split("\n\n")[0]
            b = p.split("Response B: ")[1].split("\n\n")[0]
            if "3" in a:  # a position-biased judge on q3: always "A"
                out.append("A")
            else:
                out.append("A" if a.startswith("GOOD") else ("B" if b.startswith("GOOD") else "tie"))
        return out

    res = E.judge_both_orders(qs, sys_, base, judge, seed=0)
    assert [r["result"] for r in res["rows"]] == ["system", "system", "baseline", "tie"]
    assert (res["win"], res["tie"], res["loss"]) == (2, 1, 1) and res["win_rate"] == pytest.approx(2.5 / 4)
    assert E.parse_verdict(" b.") == "B" and E.parse_verdict("Tie") == "tie" and E.parse_verdict("?") == "tie"


def test_judge_through_the_shared_llm_client():
    from lathe.methods.agents.llm import ScriptedLLM

    # the judge prefers whichever response mentions "step"; it sees both orders
    def verdict(messages):
        p = messages[-1]["content"]
        a = p.split("Response A: ")[1].split("\n\n")[0]
        return "A" if "step" in a else "B"

    client = ScriptedLLM([(r"Verdict:", verdict)])
    res = E.judge_both_orders(["q0", "q1"], ["one step", "no"], ["no", "two steps"], E.chat_judge(client))
    assert (res["win"], res["loss"], res["tie"]) == (1, 1, 0)
    assert len(client.log) == 4 and all(r["tag"] == "judge" for r in client.log)
    with pytest.raises(LatheError, match="judge_model: /nonexistent"):
        E.judge_client("/nonexistent")
