"""TOFU metrics: hand-computed values on a 3-sample toy, batching invariance, FQ/MU rules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lathe.eval import tofu as te
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
    from scipy.stats import hmean

    comps = [s[f"{n}_{m}"] for n in ("retain", "real_authors", "world_facts") for m in ("prob", "rougeL", "truth_ratio")]
    assert len(comps) == 9
    assert s["model_utility"] == (pytest.approx(float(hmean(comps)), abs=1e-12) if min(comps) > 0 else 0.0)
    log = te.retain_log(res, "forget10", "fp", cfg)
    again = te.evaluate_model(tiny_model, tiny_tokenizer, sets, cfg, "forget10", retain_log=log)
    assert again["summary"]["forget_quality"] == 1.0
    files = te.write_tofu_logs(res, tmp_path)
    assert {f.name for f in files} == {"eval_log.json", "eval_log_forget.json", "eval_real_author_wo_options.json",
                                       "eval_real_world_wo_options.json"}
    imported = te.import_tofu_log(tmp_path / "eval_log_forget.json", "forget10")
    assert imported["truth_ratio"] == pytest.approx(log["truth_ratio"])
    # Real Authors / World Facts: avg_paraphrased_loss holds the answer loss (TOFU's aggregator reads it)
    for fname, key in (("eval_real_author_wo_options.json", "real_authors_perturbed"),
                       ("eval_real_world_wo_options.json", "world_facts_perturbed")):
        tl = json.loads((tmp_path / fname).read_text())
        gt = {r["id"]: r["gt_loss"] for r in res["sets"][key]["rows"]}
        assert tl["avg_paraphrased_loss"] == gt and all(v is not None for v in gt.values())
        again_tr = te.import_tofu_log(tmp_path / fname, "x")["truth_ratio"]
        assert again_tr == pytest.approx({r["id"]: r["truth_ratio"] for r in res["sets"][key]["rows"]})


class FixedLM(torch.nn.Module):
    """The same, non-uniform next-token distribution at every position: L(a|q) is the mean of
    -log p[t] over a's label tokens, computable by hand without the evaluator."""

    def __init__(self, vocab: int, favour: int, eos: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        v = 0.5 * torch.randn(vocab, generator=g)
        v[favour], v[eos] = 6.0, -10.0  # greedy decoding repeats `favour`; it never stops early
        self.v = torch.nn.Parameter(v)

    def forward(self, input_ids, attention_mask=None, **kw):
        class Out:
            pass

        out = Out()
        out.logits = self.v.expand(*input_ids.shape, -1)
        return out

    def generate(self, input_ids, max_new_tokens, **kw):  # greedy: the argmax token, every step
        new = self.v.argmax().repeat(input_ids.shape[0], max_new_tokens)
        return torch.cat([input_ids, new], 1)


def test_metrics_with_R_not_one_match_a_hand_computation(tiny_tokenizer):
    """R ≠ 1: truth ratios, both aggregations, probability with options and MU against values
    computed here from per-token log-probabilities (scipy's hmean for MU)."""
    from scipy.stats import hmean

    tok = tiny_tokenizer
    (of,) = tok(" of", add_special_tokens=False)["input_ids"]
    model = FixedLM(len(tok), of, tok.eos_token_id)
    logp = torch.log_softmax(model.v.detach().double(), -1)
    cfg = te.TofuEvalConfig(max_new_tokens=3, batch_size=3)

    def L(q, a):  # mean -log p over the label tokens TOFU's encoding gives a
        ids = tok(te.prompt_for(tok, q, "auto") + " " + a)["input_ids"][len(tok(te.prompt_for(tok, q, "auto"))["input_ids"]):]
        ids = ids + [tok.eos_token_id]
        return float(-logp[ids].mean())

    rows = [{"question": f"Who is author {i}?", "answer": f"The capital of Ren{i} of old.",
             "paraphrased_answer": f"A food of the flag of Ren{i}.",
             "perturbed_answer": [f"Ren{i} was founded in 1500.", f"People eat bread in Ren{i}.",
                                  f"The flag of Ren{i} is blue."]} for i in range(3)]
    util = [{k: r[k] for k in ("question", "answer", "perturbed_answer")} for r in rows]
    sets = {"forget10_perturbed": rows, "retain_perturbed": rows, "real_authors_perturbed": util,
            "world_facts_perturbed": util}
    res = te.evaluate_model(model, tok, sets, cfg, "forget10")
    R = [math.exp(L(r["question"], r["paraphrased_answer"]) -
                  sum(L(r["question"], p) for p in r["perturbed_answer"]) / 3) for r in rows]
    R_util = [math.exp(L(r["question"], r["answer"]) -
                       sum(L(r["question"], p) for p in r["perturbed_answer"]) / 3) for r in rows]
    assert max(abs(math.log(x)) for x in R + R_util) > 0.05  # not the R = 1 corner
    got = [lg["truth_ratio"] for lg in res["sets"]["forget"]["rows"]]
    assert got == pytest.approx(R, rel=1e-5)
    s = res["summary"]
    assert s["forget_truth_ratio"] == pytest.approx(sum(min(x, 1 / x) for x in R) / 3, rel=1e-5)
    assert s["retain_truth_ratio"] == pytest.approx(sum(max(0.0, 1 - x) for x in R) / 3, abs=1e-6)
    assert s["real_authors_truth_ratio"] == pytest.approx(sum(max(0.0, 1 - x) for x in R_util) / 3, abs=1e-6)
    assert s["forget_prob"] == pytest.approx(sum(math.exp(-L(r["question"], r["answer"])) for r in rows) / 3,
                                             rel=1e-5)
    pwo = [math.exp(-L(r["question"], r["answer"])) /
           (math.exp(-L(r["question"], r["answer"])) + sum(math.exp(-L(r["question"], p)) for p in r["perturbed_answer"]))
           for r in rows]
    assert s["world_facts_prob"] == pytest.approx(sum(pwo) / 3, rel=1e-5)
    assert res["sets"]["retain_perturbed"]["rows"][0]["generation"] == "of of of"
    assert s["retain_rougeL"] == pytest.approx(sum(2 / 6 for _ in rows) / 3)  # LCS "of of" of 6 words
    comps = [s[f"{n}_{m}"] for n in ("retain", "real_authors", "world_facts") for m in ("prob", "rougeL", "truth_ratio")]
    assert min(comps) > 0
    assert s["model_utility"] == pytest.approx(float(hmean(comps)), rel=1e-9)


# ---------------------------------------------------------------------------------------
# TOFU's prompt templates and joint tokenisation, on a SentencePiece and a byte-level BPE tokenizer

_TEXTS = ["Question: Where was Kalo Ren born?\nAnswer: Kalo Ren was born in Vorsa.",
          "[INST] What does Mia Tus write? [/INST]Mia Tus writes poetry about the sea.",
          "Authors write books. Where, what, who? The answer is short."] * 20


def _sentencepiece_tokenizer():
    """A Llama-style tokenizer: SentencePiece BPE (metaspace '▁'), BOS added by the post-processor."""
    from tokenizers import SentencePieceBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer(unk_token="<unk>")
    sp.train_from_iterator(_TEXTS, vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                           show_progress=False)
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", sp.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _bytelevel_tokenizer():
    from lathe.platform.zoo import train_tokenizer

    return train_tokenizer(_TEXTS, vocab_size=300)


@pytest.mark.parametrize("kind", ["sentencepiece", "bytelevel"])
@pytest.mark.parametrize("template", ["plain", "llama2_inst"])
def test_encoding_is_tofus_joint_tokenisation(kind, template):
    """Prompt + answer are tokenised as one text (TOFU's convert_raw_data_to_model_format): the
    first len(tok(prompt)) ids are masked, the rest are the answer's ids in context, then EOS. A
    prompt ending in a space, or an answer tokenised on its own, gives other token boundaries."""
    tok = _sentencepiece_tokenizer() if kind == "sentencepiece" else _bytelevel_tokenizer()
    q, a = "Where was Kalo Ren born?", "Kalo Ren was born in Vorsa."
    prompt = {"plain": f"Question: {q}\nAnswer:", "llama2_inst": f"[INST] {q} [/INST]"}[template]
    full = {"plain": f"Question: {q}\nAnswer: {a}", "llama2_inst": f"[INST] {q} [/INST]{a}"}[template]
    assert te.prompt_for(tok, q, template) == prompt
    cfg = te.TofuEvalConfig(qa_template=template)
    enc = te.encode(tok, q, a, cfg)
    joint = tok(full)["input_ids"]  # add_special_tokens=True, as TOFU calls the tokenizer
    n = len(tok(prompt)["input_ids"])
    assert enc["input_ids"] == joint + [tok.eos_token_id]
    assert enc["labels"] == [-100] * n + joint[n:] + [tok.eos_token_id]
    assert tok.decode(joint[n:]).strip() == a
    assert te.prompt_ids(tok, q, cfg) == joint[:n]  # generation starts from the trained prefix
    assert (joint[0] == tok.bos_token_id) == (kind == "sentencepiece")
    separate = tok(prompt + " ")["input_ids"] + tok(a, add_special_tokens=False)["input_ids"]
    assert separate != joint  # the old encoding (prompt ending in a space, answer alone) differs here
    no_eos = te.encode(tok, q, a, te.TofuEvalConfig(qa_template=template, append_eos_to_labels=False))
    assert no_eos["input_ids"] == joint and no_eos["labels"][-1] == joint[-1]
