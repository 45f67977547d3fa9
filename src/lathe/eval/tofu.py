"""TOFU evaluator, exact metric definitions (see specs/unlearning.md §3). Pure PyTorch.

Per row and set kind:
  L(a|q)      mean NLL over label tokens (answer tokens + EOS), teacher forcing, eval mode
  p̄(a|q)      exp(-L); forget/retain "Probability" = mean p̄(answer|q); real/world = mean of
              p̄(a) / (p̄(a) + Σ_j p̄(ã_j))  ("probability with options")
  ROUGE-L     recall of the greedy generation against the answer (rouge_score, stemmer on)
  R           exp(L_base − mean_j L_pert_j); base = paraphrased_answer (forget, retain) or answer
  TR          forget: mean min(R, 1/R); retain/real/world: mean max(0, 1 − R)
  FQ          scipy.stats.ks_2samp(R_model, R_retain_model).pvalue on the same forget split
  MU          harmonic mean of {Probability, ROUGE-L, TR} × {retain, real authors, world facts}

All NLLs of a set (answers, paraphrases, every perturbed answer) are computed in one batched,
length-sorted pass; generation is batched with left padding. Per-row values do not depend
on batch composition (causal attention + masks).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from lathe.methods.sft import IGNORE
from lathe.platform.config import Strict
from lathe.platform.errors import LatheError

SetKind = Literal["forget", "retain", "real", "world"]
SET_KINDS: dict[str, SetKind] = {"retain_perturbed": "retain", "real_authors_perturbed": "real",
                                 "world_facts_perturbed": "world"}
UTILITY_SETS = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


class TofuEvalConfig(Strict):
    qa_template: Literal["auto", "chat", "llama2_inst", "plain"] = "auto"
    max_length: int = Field(512, ge=8)
    append_eos_to_labels: bool = True
    max_new_tokens: int = Field(200, ge=1)
    legacy_max_length: bool = Field(False, description="TOFU's max_length=200 counting prompt tokens")
    batch_size: int = Field(32, ge=1)
    eval_max_rows: int | None = Field(None, ge=1, description="300 reproduces the legacy truncation")
    truth_ratio_agg: Literal["tofu", "prob_mean"] = "tofu"
    generate: bool = True


def eval_config_hash(cfg: TofuEvalConfig) -> str:
    """What must match between a model's eval and the retain log for FQ to be comparable."""
    keys = {k: getattr(cfg, k) for k in ("qa_template", "max_length", "append_eos_to_labels", "eval_max_rows",
                                          "truth_ratio_agg")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Encoding


# (prompt, separator): the full text is prompt + separator + answer (TOFU's question/answer tags).
TEMPLATES = {"llama2_inst": ("[INST] {q} [/INST]", ""), "plain": ("Question: {q}\nAnswer:", " ")}


def uses_chat(tok: Any, template: str) -> bool:
    return template == "chat" or (template == "auto" and bool(getattr(tok, "chat_template", None)))


def prompt_parts(tok: Any, question: str, template: str) -> tuple[str, str]:
    """(prompt text, separator before the answer) for a question under `template`."""
    if uses_chat(tok, template):
        if not getattr(tok, "chat_template", None):
            raise LatheError("qa_template 'chat' needs a tokenizer with a chat template")
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True), ""
    head, sep = TEMPLATES["plain" if template == "auto" else template]
    return head.format(q=question), sep


def prompt_for(tok: Any, question: str, template: str) -> str:
    return prompt_parts(tok, question, template)[0]


def _ids(tok: Any, text: str, chat: bool) -> list[int]:
    # As TOFU: the tokenizer's own special tokens (BOS for Llama); a chat template writes its own.
    return tok(text, add_special_tokens=not chat)["input_ids"]


def prompt_ids(tok: Any, question: str, cfg: TofuEvalConfig) -> list[int]:
    return _ids(tok, prompt_for(tok, question, cfg.qa_template), uses_chat(tok, cfg.qa_template))


def encode(tok: Any, question: str, answer: str, cfg: TofuEvalConfig) -> dict[str, list[int]]:
    """TOFU's encoding: prompt + answer tokenised as ONE text, the first len(tok(prompt)) tokens
    masked, then EOS appended to the labels (`append_eos_to_labels`). Training (θ_ini, θ_ret,
    unlearning) and evaluation both use this, so token boundaries match the published checkpoints'."""
    chat = uses_chat(tok, cfg.qa_template)
    prompt, sep = prompt_parts(tok, question, cfg.qa_template)
    n_prompt = len(_ids(tok, prompt, chat))
    ids = _ids(tok, prompt + sep + answer, chat)
    labels = [IGNORE] * n_prompt + ids[n_prompt:]
    if cfg.append_eos_to_labels:
        ids, labels = ids + [tok.eos_token_id], labels + [tok.eos_token_id]
    return {"input_ids": ids[: cfg.max_length], "labels": labels[: cfg.max_length]}


def _progress(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq", dynamic_ncols=True, file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------
# Batched NLL and generation


@torch.no_grad()
def sequence_nll(model: torch.nn.Module, encoded: Sequence[dict], batch_size: int = 32, padding: str = "right",
                 pad_id: int = 0, show: bool = False, desc: str = "nll") -> list[float]:
    """L(a|q) for each encoded row: mean NLL over its label tokens. Rows are length-sorted into
    batches; the result is in input order."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    out = [math.nan] * len(encoded)
    bar = _progress(len(encoded), desc, show)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        rows = [encoded[i] for i in idx]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            sl = slice(width - n, width) if padding == "left" else slice(0, n)
            ids[j, sl] = torch.tensor(r["input_ids"])
            labels[j, sl] = torch.tensor(r["labels"])
            mask[j, sl] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        kw = {}
        if padding == "left":  # positions must not count the left padding
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, **kw).logits[:, :-1].float()
        tgt = labels[:, 1:]
        valid = tgt != IGNORE
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.clamp(min=0).reshape(-1),
                              reduction="none").view_as(tgt)
        per = (nll * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        for j, i in enumerate(idx):
            out[i] = float(per[j]) if valid[j].any() else math.nan
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, tok: Any, prompts: Sequence[list[int]], cfg: TofuEvalConfig,
                    show: bool = False, desc: str = "generate") -> list[str]:
    """Greedy continuations (batched, left padding), cut at the first EOS, specials skipped."""
    model.eval()
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    bar = _progress(len(prompts), desc, show)
    for s in range(0, len(order), cfg.batch_size):
        idx = order[s: s + cfg.batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            p = prompts[i]
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        if cfg.legacy_max_length:
            gen_kw = {"max_length": max(width + 1, 200)}
        else:
            gen_kw = {"max_new_tokens": cfg.max_new_tokens}
        seq = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id, **gen_kw)
        for j, i in enumerate(idx):
            new = seq[j, width:].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            out[i] = tok.decode(new, skip_special_tokens=True).strip()
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


_SCORER = None


def rouge_l_recall(target: str, prediction: str) -> float:
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return float(_SCORER.score(target=target, prediction=prediction)["rougeL"].recall)


# ---------------------------------------------------------------------------------------
# Metric formulas (pure functions, tested against hand-computed values)


def truth_ratio(l_base: float, l_perts: Sequence[float]) -> float:
    """R = p̄_pert / p̄_base = exp(L_base − mean_j L_pert_j)."""
    return math.exp(l_base - sum(l_perts) / len(l_perts))


def tr_forget(ratios: Sequence[float]) -> float:
    """Forget set, "closer to 1 is better": mean min(R, 1/R)."""
    return sum(min(r, 1 / r) for r in ratios) / len(ratios)


def tr_true(ratios: Sequence[float]) -> float:
    """Retain / real / world, "true is better": mean max(0, 1 − R)."""
    return sum(max(0.0, 1 - r) for r in ratios) / len(ratios)


def tr_prob_mean(l_base: Sequence[float], l_perts: Sequence[Sequence[float]]) -> float:
    """open-unlearning's alternative p̄_base / (p̄_base + p̄_pert); not the TOFU definition."""
    vals = [math.exp(-b) / (math.exp(-b) + math.exp(-sum(p) / len(p))) for b, p in zip(l_base, l_perts)]
    return sum(vals) / len(vals)


def prob_with_options(l_answer: float, l_options: Sequence[float]) -> float:
    pa = math.exp(-l_answer)
    return pa / (pa + sum(math.exp(-x) for x in l_options))


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean 9 / Σ 1/x_i; 0 when any component is 0."""
    if len(values) != 9:
        raise ValueError(f"model utility needs 9 numbers, got {len(values)}")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def forget_quality(ratios: dict[str, float], retain_log: dict | None, config_hash: str | None = None) -> float | None:
    """KS-test p-value of this model's forget-set truth ratios against the retain model's.
    None without a retain log; an error when row ids or eval configs differ."""
    if retain_log is None:
        return None
    from scipy.stats import ks_2samp

    ref = retain_log["truth_ratio"]
    if config_hash is not None and retain_log.get("eval_config_hash") not in (None, config_hash):
        raise LatheError(f"retain log eval_config_hash {retain_log.get('eval_config_hash')} differs from this "
                         f"evaluation's {config_hash} (template, max_length or append_eos_to_labels changed)")
    if set(ref) != set(ratios):
        raise LatheError(f"retain log rows ({len(ref)}) differ from the evaluated rows ({len(ratios)}): "
                         "not the same forget split")
    keys = sorted(ratios)
    return float(ks_2samp([ratios[k] for k in keys], [ref[k] for k in keys]).pvalue)


# ---------------------------------------------------------------------------------------
# Set and model evaluation


def evaluate_set(model, tok, rows: list[dict], kind: SetKind, cfg: TofuEvalConfig, show: bool = False,
                 name: str = "") -> dict:
    """Per-row logs and the set's summary (Probability, ROUGE-L recall, truth ratio)."""
    if cfg.eval_max_rows:
        rows = rows[: cfg.eval_max_rows]
    has_para = kind in ("forget", "retain")
    encoded, owners = [], []  # one flat list: answer, [paraphrase], perturbed...
    for i, r in enumerate(rows):
        encoded.append(encode(tok, r["question"], r["answer"], cfg))
        owners.append((i, "gt"))
        if has_para:
            encoded.append(encode(tok, r["question"], r["paraphrased_answer"], cfg))
            owners.append((i, "para"))
        for p in r["perturbed_answer"]:
            encoded.append(encode(tok, r["question"], p, cfg))
            owners.append((i, "pert"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses = sequence_nll(model, encoded, cfg.batch_size, pad_id=pad, show=show, desc=f"{name} nll")
    logs = [{"id": str(i), "gt_loss": None, "paraphrased_loss": None, "perturbed_loss": []} for i in range(len(rows))]
    for (i, what), loss in zip(owners, losses):
        if what == "gt":
            logs[i]["gt_loss"] = loss
        elif what == "para":
            logs[i]["paraphrased_loss"] = loss
        else:
            logs[i]["perturbed_loss"].append(loss)
    for lg in logs:
        base = lg["paraphrased_loss"] if has_para else lg["gt_loss"]
        lg["truth_ratio"] = truth_ratio(base, lg["perturbed_loss"])
        lg["prob"] = (math.exp(-lg["gt_loss"]) if has_para
                      else prob_with_options(lg["gt_loss"], lg["perturbed_loss"]))
    if cfg.generate:
        gens = greedy_generate(model, tok, [prompt_ids(tok, r["question"], cfg) for r in rows], cfg, show=show,
                               desc=f"{name} generate")
        for lg, r, g in zip(logs, rows, gens):
            lg["generation"] = g
            lg["rougeL_recall"] = rouge_l_recall(r["answer"], g)
    ratios = [lg["truth_ratio"] for lg in logs]
    if cfg.truth_ratio_agg == "prob_mean":
        tr = tr_prob_mean([lg["paraphrased_loss"] if has_para else lg["gt_loss"] for lg in logs],
                          [lg["perturbed_loss"] for lg in logs])
    else:
        tr = tr_forget(ratios) if kind == "forget" else tr_true(ratios)
    summary = {"prob": sum(lg["prob"] for lg in logs) / len(logs), "truth_ratio": tr, "rows": len(logs)}
    if cfg.generate:
        summary["rougeL_recall"] = sum(lg["rougeL_recall"] for lg in logs) / len(logs)
    return {"summary": summary, "rows": logs}


def evaluate_model(model, tok, sets: dict[str, list[dict]], cfg: TofuEvalConfig, forget_split: str,
                   retain_log: dict | None = None, show: bool = False) -> dict:
    """Evaluate the forget split's perturbed set and the three utility sets; FQ and MU.

    `sets` maps config names (`<split>_perturbed`, `retain_perturbed`, ...) to rows."""
    key = f"{forget_split}_perturbed"
    if key not in sets:
        raise LatheError(f"evaluation needs the {key!r} config")
    out: dict[str, Any] = {"sets": {}}
    out["sets"]["forget"] = evaluate_set(model, tok, sets[key], "forget", cfg, show, "forget")
    for name in UTILITY_SETS:
        if name in sets:
            out["sets"][name] = evaluate_set(model, tok, sets[name], SET_KINDS[name], cfg, show, name)
    h = eval_config_hash(cfg)
    ratios = {lg["id"]: lg["truth_ratio"] for lg in out["sets"]["forget"]["rows"]}
    fs = out["sets"]["forget"]["summary"]
    summary: dict[str, Any] = {"forget_prob": fs["prob"], "forget_truth_ratio": fs["truth_ratio"],
                               "forget_rougeL": fs.get("rougeL_recall"),
                               "forget_quality": forget_quality(ratios, retain_log, h), "eval_config_hash": h}
    comps = []
    for name in UTILITY_SETS:
        if name in out["sets"]:
            s = out["sets"][name]["summary"]
            short = name.replace("_perturbed", "")
            summary[f"{short}_prob"], summary[f"{short}_truth_ratio"] = s["prob"], s["truth_ratio"]
            comps += [s["prob"], s["truth_ratio"]]
            if "rougeL_recall" in s:
                summary[f"{short}_rougeL"] = s["rougeL_recall"]
                comps.append(s["rougeL_recall"])
    summary["model_utility"] = model_utility(comps) if len(comps) == 9 else None
    out["summary"] = summary
    return out


def retain_log(result: dict, split: str, model_fingerprint: str, cfg: TofuEvalConfig) -> dict:
    """The reusable reference log of a retain model's evaluation (per-row truth ratios)."""
    return {"split": split, "model": model_fingerprint, "eval_config_hash": eval_config_hash(cfg),
            "truth_ratio": {lg["id"]: lg["truth_ratio"] for lg in result["sets"]["forget"]["rows"]}}


def import_tofu_log(path: str | Path, split: str) -> dict:
    """A retain log from a TOFU-style eval log (per-row avg_paraphrased_loss, average_perturb_loss)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LatheError(f"{path}: cannot read TOFU eval log ({e})") from None
    for k in ("avg_paraphrased_loss", "average_perturb_loss"):
        if k not in data:
            raise LatheError(f"{path}: TOFU eval log lacks {k!r}")
    para, pert = data["avg_paraphrased_loss"], data["average_perturb_loss"]
    return {"split": split, "model": str(path), "eval_config_hash": None,
            "truth_ratio": {str(k): truth_ratio(para[k], pert[k]) for k in para}}


def write_tofu_logs(result: dict, out_dir: str | Path) -> list[Path]:
    """TOFU-style per-set log files, readable by external aggregators."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {"retain_perturbed": "eval_log.json", "forget": "eval_log_forget.json",
             "real_authors_perturbed": "eval_real_author_wo_options.json",
             "world_facts_perturbed": "eval_real_world_wo_options.json"}
    written = []
    for key, fname in names.items():
        if key not in result["sets"]:
            continue
        rows = result["sets"][key]["rows"]
        # Real Authors / World Facts have no paraphrase: TOFU's logs (and aggregator) hold the
        # answer loss there, since their truth ratio's base is the answer.
        log = {"avg_gt_loss": {r["id"]: r["gt_loss"] for r in rows},
               "avg_paraphrased_loss": {r["id"]: r["paraphrased_loss"] if r["paraphrased_loss"] is not None
                                        else r["gt_loss"] for r in rows},
               "average_perturb_loss": {r["id"]: r["perturbed_loss"] for r in rows},
               "truth_ratio": {r["id"]: r["truth_ratio"] for r in rows}}
        if rows and "generation" in rows[0]:
            log["rougeL_recall"] = {r["id"]: r["rougeL_recall"] for r in rows}
            log["generated_text"] = {r["id"]: r["generation"] for r in rows}
        (out_dir / fname).write_text(json.dumps(log, indent=1))
        written.append(out_dir / fname)
    return written
