"""TOFU metrics: hand-computed values on a 3-sample toy, batching invariance, FQ/MU rules."""

from __future__ import annotations

import math

import pytest
import torch

from lathe.eval import tofu as te
from lathe.methods import sft as sft_lib
from lathe.platform.errors import LatheError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Three rows: (L_para, [L_pert...]) chosen so the hand computation is easy to follow.
TOY = [(1.0, [2.0, 2.0]), (2.0, [1.0, 1.0]), (1.5, [1.0, 2.0])]


def test_truth_ratio_and_aggregations_by_hand():
    r = [te.truth_ratio(b, p) for b, p in TOY]
    # R = exp(L_base - mean L_pert): exp(-1), exp(1), exp(0)
    assert r == pytest.approx([math.exp(-1), math.exp(1), 1.0], abs=1e-12)
    # forget: mean min(R, 1/R) = (e^-1 + e^-1 + 1) / 3
    assert te.tr_forget(r) == pytest.approx((2 * math.exp(-1) + 1) / 3, abs=1e-12)
    # true-is-better: mean max(0, 1-R) = ((1 - e^-1) + 0 + 0) / 3
    assert te.tr_true(r) == pytest.approx((1 - math.exp(-1)) / 3, abs=1e-12)
    # TOFU code's formulation with x = exp(L_pert - L_para) = 1/R
    for (b, p), ri in zip(TOY, r):
        x = math.exp(sum(p) / len(p) - b)
        assert min(ri, 1 / ri) == pytest.approx(min(x, 1 / x), abs=1e-9)
        assert max(0, 1 - ri) == pytest.approx(max(0, 1 - 1 / x), abs=1e-9)
    # prob_mean (open-unlearning's alternative): p_base / (p_base + p_pert)
    want = sum(1 / (1 + math.exp(b - sum(p) / len(p))) for b, p in TOY) / 3
    assert te.tr_prob_mean([b for b, _ in TOY], [p for _, p in TOY]) == pytest.approx(want, abs=1e-12)


def test_probability_with_options_by_hand():
    # answer L=1, options L=1 and 2: e^-1 / (e^-1 + e^-1 + e^-2)
    assert te.prob_with_options(1.0, [1.0, 2.0]) == pytest.approx(
        math.exp(-1) / (2 * math.exp(-1) + math.exp(-2)), abs=1e-12)
    assert te.prob_with_options(0.7, [0.7, 0.7, 0.7]) == pytest.approx(0.25, abs=1e-12)


def test_model_utility():
    from scipy.stats import hmean

    vals = [0.9, 0.8, 0.5, 0.7, 0.6, 0.3, 0.95, 0.4, 0.65]
    assert te.model_utility(vals) == pytest.approx(float(hmean(vals)), abs=1e-12)
    assert te.model_utility(vals[:8] + [0.0]) == 0.0
    with pytest.raises(ValueError):
        te.model_utility(vals[:8])


def test_rouge_l_recall():
    assert te.rouge_l_recall("The cat sat on the mat.", "The cat sat on the mat.") == 1.0
    assert te.rouge_l_recall("The cat sat on the mat.", "") == 0.0
    # LCS("the cat sat on the mat", "the cat on mat") = 4 of 6 reference tokens
    assert te.rouge_l_recall("the cat sat on the mat", "the cat on mat") == pytest.approx(4 / 6)


def test_forget_quality_rules():
    ratios = {"0": 0.2, "1": 1.3, "2": 0.8, "3": 2.5}
    log = {"split": "forget10", "model": "m", "eval_config_hash": "h", "truth_ratio": dict(ratios)}
    assert te.forget_quality(ratios, log, "h") == 1.0
    inv = {k: 1 / v for k, v in ratios.items()}
    other = {k: v * 3 for k, v in ratios.items()}
    fq = te.forget_quality(other, log, "h")
    assert fq < 1.0
    assert te.forget_quality({k: 1 / v for k, v in other.items()}, {**log, "truth_ratio": inv}, "h") == \
        pytest.approx(fq, abs=1e-12)
    assert te.forget_quality(ratios, None, "h") is None
    with pytest.raises(LatheError, match="eval_config_hash"):
        te.forget_quality(ratios, log, "other")
    with pytest.raises(LatheError, match="rows"):
        te.forget_quality({"0": 1.0}, log, "h")


class UniformLM(torch.nn.Module):
    """Every next-token distribution is uniform: L = log V for any answer."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        class Out:
            pass

        out = Out()
        out.logits = torch.zeros(*input_ids.shape, self.vocab) + 0 * self.w
        return out


def _toy_rows():
    return [{"question": f"Who is author {i}?", "answer": f"Author {i} writes poems.",
             "paraphrased_answer": f"Poems are written by author {i}.",
             "perturbed_answer": [f"Author {i} writes plays.", f"Author {i} paints.", f"Author {i} sings songs."]}
            for i in range(3)]


def test_evaluate_set_on_uniform_model(tiny_tokenizer):
    model = UniformLM(len(tiny_tokenizer))
    cfg = te.TofuEvalConfig(generate=False, batch_size=2)
    rows = _toy_rows()
    forget = te.evaluate_set(model, tiny_tokenizer, rows, "forget", cfg)
    logv = math.log(len(tiny_tokenizer))
    for lg in forget["rows"]:
        assert lg["gt_loss"] == pytest.approx(logv, abs=1e-5)
        assert lg["truth_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert forget["summary"]["prob"] == pytest.approx(1 / len(tiny_tokenizer), rel=1e-4)
    assert forget["summary"]["truth_ratio"] == pytest.approx(1.0, abs=1e-5)   # TR_f = 1 when R = 1
    real = te.evaluate_set(model, tiny_tokenizer, [{k: r[k] for k in ("question", "answer", "perturbed_answer")}
                                                   for r in rows], "real", cfg)
    assert real["summary"]["prob"] == pytest.approx(1 / 4, abs=1e-5)  # 1/(1+n) with n = 3 options
    assert real["summary"]["truth_ratio"] == pytest.approx(0.0, abs=1e-5)  # TR(true) = 0 when R = 1


def test_identical_perturbations_give_R_one(tiny_tokenizer, tiny_model):
    row = _toy_rows()[0]
    row["perturbed_answer"] = [row["paraphrased_answer"]] * 3
    res = te.evaluate_set(tiny_model, tiny_tokenizer, [row], "forget", te.TofuEvalConfig(generate=False))
    assert res["rows"][0]["truth_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert res["summary"]["truth_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_nll_matches_hf_loss_and_is_batch_invariant(tiny_tokenizer, tiny_model):
    tiny_model.eval()
    cfg = te.TofuEvalConfig()
    short = te.encode(tiny_tokenizer, "Who?", "Kalo.", cfg)
    assert short == sft_lib.encode_qa(tiny_tokenizer, "Who?", "Kalo.", 512)  # what the sft job trained on
    long = te.encode(tiny_tokenizer, "Where was the famous author born, exactly?",
                     "The famous author was born in a small town by the sea, long ago.", cfg)
    with torch.no_grad():
        ids = torch.tensor([short["input_ids"]])
        ref = tiny_model(input_ids=ids, labels=torch.tensor([short["labels"]])).loss.item()
    alone = te.sequence_nll(tiny_model, [short], batch_size=1)[0]
    assert abs(alone - ref) < 1e-5
    for padding in ("right", "left"):
        batched = te.sequence_nll(tiny_model, [long, short, long], batch_size=3, padding=padding)
        assert abs(batched[1] - alone) < 1e-5, padding


def test_generation_is_batched_deterministic(tiny_tokenizer, tiny_model):
    cfg = te.TofuEvalConfig(max_new_tokens=8, batch_size=4)
    prompts = [te.prompt_ids(tiny_tokenizer, q, cfg) for q in ("Who?", "Where was it born, then?", "When?")]
    a = te.greedy_generate(tiny_model, tiny_tokenizer, prompts, cfg)
    b = te.greedy_generate(tiny_model, tiny_tokenizer, prompts, cfg)
    one = [te.greedy_generate(tiny_model, tiny_tokenizer, [p], cfg)[0] for p in prompts]
    assert a == b and len(a) == 3
    assert a == one


def test_evaluate_model_summary_and_logs(tiny_tokenizer, tiny_model, tmp_path):
    rows = _toy_rows()
    util = [{k: r[k] for k in ("question", "answer", "perturbed_answer")} for r in rows]
    sets = {"forget10_perturbed": rows, "retain_perturbed": rows, "real_authors_perturbed": util,
            "world_facts_perturbed": util}
    cfg = te.TofuEvalConfig(max_new_tokens=6)
    res = te.evaluate_model(tiny_model, tiny_tokenizer, sets, cfg, "forget10")
    s = res["summary"]
    assert s["forget_quality"] is None  # no retain log: never a default
    comps = [s[f"{n}_{m}"] for n in ("retain", "real_authors", "world_facts") for m in ("prob", "rougeL", "truth_ratio")]
    assert s["model_utility"] == pytest.approx(te.model_utility(comps))
    log = te.retain_log(res, "forget10", "fp", cfg)
    again = te.evaluate_model(tiny_model, tiny_tokenizer, sets, cfg, "forget10", retain_log=log)
    assert again["summary"]["forget_quality"] == 1.0
    files = te.write_tofu_logs(res, tmp_path)
    assert {f.name for f in files} == {"eval_log.json", "eval_log_forget.json", "eval_real_author_wo_options.json",
                                       "eval_real_world_wo_options.json"}
    imported = te.import_tofu_log(tmp_path / "eval_log_forget.json", "forget10")
    assert imported["truth_ratio"] == pytest.approx(log["truth_ratio"])
