"""LEGO metrics against hand-computed values (and HF evaluate when installed)."""

from __future__ import annotations

import math

import pytest

from lathe.eval.lego import (EntityMatcher, comparison_table, corpus_bleu, improvement, rouge_l, score_all,
                             theme_acc, tool_scores, write_report)


def test_bleu_hand_values():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(1.0)
    out = corpus_bleu(["the cat sat on mat"], ["the cat sat on the mat"])
    # p1..p4 = 5/5, 3/4, 2/3, 1/2 ; BP = exp(1 - 6/5)
    expect = (1 * 0.75 * (2 / 3) * 0.5) ** 0.25 * math.exp(1 - 6 / 5)
    assert out["bleu"] == pytest.approx(expect, abs=1e-12)
    assert out["precisions"] == pytest.approx([1, 0.75, 2 / 3, 0.5])
    # no 4-gram match anywhere -> 0 (no smoothing); longer prediction -> BP 1
    assert corpus_bleu(["a b c"], ["a b c d"])["bleu"] == 0.0
    assert corpus_bleu(["the cat sat on the mat today"], ["the cat sat on the mat"])["brevity_penalty"] == 1.0
    # corpus-level: counts pooled over rows, not averaged
    two = corpus_bleu(["the cat sat on mat", "a b c d e"], ["the cat sat on the mat", "a b c d e"])
    pooled = ((10 / 10) * (7 / 8) * (5 / 6) * (3 / 4)) ** 0.25 * math.exp(1 - 11 / 10)
    assert two["bleu"] == pytest.approx(pooled, abs=1e-12)
    # 13a tokenisation splits punctuation
    assert corpus_bleu(["Hello, world!"], ["Hello , world !"])["bleu"] == pytest.approx(1.0)


def test_rouge_l_hand_values():
    assert rouge_l(["the cat sat on mat"], ["the cat sat on the mat"]) == pytest.approx(10 / 11)
    assert rouge_l(["a b", "x y"], ["a b", "z w"]) == pytest.approx(0.5)
    assert rouge_l(["The CAT"], ["the cat"]) == pytest.approx(1.0)


def test_match_hf_evaluate_when_installed():
    evaluate = pytest.importorskip("evaluate")
    preds, refs = ["the cat sat on mat", "I used NextStep, now step 2."], ["the cat sat on the mat", "NextStep: step 2"]
    hf = evaluate.load("bleu").compute(predictions=preds, references=[[r] for r in refs])
    assert corpus_bleu(preds, refs)["bleu"] == pytest.approx(hf["bleu"], abs=1e-9)
    hr = evaluate.load("rouge").compute(predictions=preds, references=refs, use_aggregator=False)
    assert rouge_l(preds, refs) == pytest.approx(sum(hr["rougeL"]) / len(preds), abs=1e-9)


def test_tool_acc_strict_and_false_mentions():
    t = tool_scores(["Let me call NextStep and then Rotate."], ["I used NextStep."])
    assert t["tool_acc"] == 1.0 and t["tool_strict"] == 0.0
    t = tool_scores(["NextStep( done", "nothing", "I used Explode"], ["NextStep", "no tool here", "none"])
    assert t["rows_with_tools"] == 1 and t["tool_acc"] == 1.0 and t["tool_false_mention"] == 0.5
    t = tool_scores(["nextstep", "NextSteps"], ["NextStep", "NextStep and Rotate"])  # case, word boundary
    assert t["tool_acc"] == 0.0
    t = tool_scores(["Rotate"], ["NextStep and Rotate"])
    assert t["tool_acc"] == 0.5 and t["tool_strict"] == 0.0


def test_theme_acc():
    out = theme_acc(["use the Brick 2x4"], ref_entities=[{"brick 2x4", "plate 1x2"}])
    assert out["theme_acc"] == 0.5
    lex = ["bright yellow brick 2x4", "white plate 1x2"]
    out = theme_acc(["Take the  BRIGHT yellow brick 2x4"], ["the bright yellow brick 2x4 and white plate 1x2"], lex)
    assert out["theme_acc"] == 0.5
    assert theme_acc(["x"], ["no pieces here"], lex)["rows_with_entities"] == 0
    assert EntityMatcher().find("a Brick 2 x 4 and a plate 1x2") == {"brick 2x4", "plate 1x2"}
    assert EntityMatcher(["brick 2x4"]).find("brick 2x45") == set()


def test_score_all_report(tmp_path):
    preds = ["I used NextStep. Attach the white plate 1x2.", "hello"]
    refs = ["I used NextStep. Attach the white plate 1x2.", "Find the tan brick 2x4."]
    s = score_all(preds, refs, ["white plate 1x2", "tan brick 2x4"])
    assert s["tool_acc"] == 100.0 and s["theme_acc"] == 50.0 and 0 < s["bleu"] < 100 and s["rows"] == 2
    base = {"tool_acc": 1, "theme_acc": 1, "bleu": 1, "rougeL": 1}
    assert improvement(base, {"tool_acc": 2, "theme_acc": 2, "bleu": 2, "rougeL": 0.5}) == \
        {"tool_acc": True, "theme_acc": True, "bleu": True, "rougeL": False}
    results = {"base": s, "lora": {**s, "bleu": s["bleu"] + 1}}
    assert "| lora |" in comparison_table(results)
    report = write_report(results, tmp_path, base="base")
    text = report.read_text()
    assert "lora vs base: improves bleu" in text and (tmp_path / "lego_metrics.png").stat().st_size > 1000
