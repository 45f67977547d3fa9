"""EVOKE evaluation: one scoring primitive (length-normalised candidate probability) and the
recall (Efficacy, Paraphrase) and overfit (EOS/AMS/CAP/DP/OAP) metrics of spec section 4.

Per record: average the indicator/probability over its prompts; then average over records; x100.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lathe.data.evoke import multihop_prompt
from lathe.methods.editing.common import continuation_ids, pad


@torch.no_grad()
def candidate_nll(model, tok, pairs: list[tuple[str, str]], batch_size: int = 32, padding_side: str = "right",
                  legacy_llama: bool = False) -> list[float]:
    """Mean NLL over the continuation tokens of each (prompt, candidate)."""
    out: list[float] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        seqs, conts = [], []
        for p, c in chunk:
            cont = continuation_ids(tok, p, c, legacy_llama)
            seqs.append(tok(p)["input_ids"] + cont)
            conts.append(cont)
        enc = pad(seqs, tok.pad_token_id if tok.pad_token_id is not None else 0, padding_side)
        mask = enc["attention_mask"]
        kw: dict[str, Any] = {}
        if padding_side == "left":  # positions must not count the padding
            kw["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        logp = F.log_softmax(model(input_ids=enc["input_ids"], attention_mask=mask, **kw).logits.float(), -1)
        for j, (s, cont) in enumerate(zip(seqs, conts)):
            o = int(enc["offsets"][j])
            n, m = len(s), len(cont)
            pos = torch.arange(o + n - m - 1, o + n - 1)
            out.append(float(-logp[j, pos, torch.tensor(cont)].mean()))
    return out


def prob(nll: float) -> float:
    return math.exp(-nll)


class Scorer:
    """Collects (prompt, candidate) pairs, scores them in batches, hands back probabilities."""

    def __init__(self, model, tok, batch_size: int = 32, legacy_llama: bool = False):
        self.model, self.tok, self.bs, self.legacy_llama = model, tok, batch_size, legacy_llama

    def probs(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [prob(x) for x in candidate_nll(self.model, self.tok, pairs, self.bs,
                                               legacy_llama=self.legacy_llama)]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def score_main(scorer: Scorer, rec: dict) -> dict[str, float]:
    """Per-record metrics (already averaged over the record's prompts, in [0, 1])."""
    rw = rec["requested_rewrite"]
    s, new, true = rw["subject"], rw["target_new"]["str"], rw["target_true"]["str"]
    groups: dict[str, list[str]] = {
        "efficacy": [rw["prompt"].format(s)],
        "paraphrase": list(rec["paraphrase_prompts"]),
        "prefix_distraction": list(rec["prefix_distraction"]),
        "relation_specificity": list(rec["neighborhood_prompts"]),
    }
    port = rec.get("portability") or {}
    pairs: list[tuple[str, str]] = []
    for prompts in groups.values():
        for p in prompts:
            pairs += [(p, new), (p, true)]
    if port:
        mh = multihop_prompt(port["New Question"])
        pairs += [(mh, port["New Answer"]), (mh, new), (mh, port["Original Answer"])]
    pr = scorer.probs(pairs)
    out: dict[str, float] = {}
    k = 0
    for name, prompts in groups.items():
        pn, pt = pr[k:k + 2 * len(prompts):2], pr[k + 1:k + 2 * len(prompts):2]
        k += 2 * len(prompts)
        if name in ("efficacy", "paraphrase"):
            out[f"{name}"] = _mean([float(a > b) for a, b in zip(pn, pt)])
        else:
            out[f"{name}.EOS"] = _mean([float(b > a) for a, b in zip(pn, pt)])
            out[f"{name}.CAP"] = _mean(pt)
            out[f"{name}.DP"] = _mean(pn)
    if port:
        pc, pn, po = pr[k:k + 3]
        out.update({"multi_hop.EOS": float(pc > pn), "multi_hop.AMS": float(pc > po), "multi_hop.CAP": pc,
                    "multi_hop.DP": pn, "multi_hop.OAP": po})
    return out


def score_subj(scorer: Scorer, rec: dict) -> dict[str, float]:
    rw = rec["requested_rewrite"]
    rs = rec["relation_specificity"]
    pc, pn = scorer.probs([(rs["prompt"], rs["answer"]["value"]), (rs["prompt"], rw["target_new"]["str"])])
    return {"subject_specificity.EOS": float(pc > pn), "subject_specificity.CAP": pc,
            "subject_specificity.DP": pn}


def aggregate(per_record: list[dict[str, float]]) -> dict[str, float]:
    """Mean over the records that have each metric, x100."""
    keys = sorted({k for r in per_record for k in r})
    return {k: 100 * _mean([r[k] for r in per_record if k in r]) for k in keys}


RECALL = ["efficacy", "paraphrase"]
OVERFIT = ["multi_hop", "prefix_distraction", "subject_specificity", "relation_specificity"]


def overfit_eos(summary: dict[str, float]) -> float:
    """Mean EOS over the overfit tasks present."""
    vals = [summary[f"{t}.EOS"] for t in OVERFIT if f"{t}.EOS" in summary]
    return _mean(vals)


@torch.no_grad()
def greedy_generate(model, tok, prompt: str, max_new_tokens: int = 100) -> str:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        nxt = model(input_ids=ids).logits[0, -1].argmax().view(1, 1)
        ids = torch.cat([ids, nxt], 1)
        if tok.eos_token_id is not None and int(nxt) == tok.eos_token_id:
            break
    return tok.decode(ids[0, start:], skip_special_tokens=True)
