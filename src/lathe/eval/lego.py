"""LEGO-MRTA metrics (spec section 8), reported x100 on the test split.

- BLEU: corpus BLEU-4, uniform weights, brevity penalty, no smoothing, `13a` tokeniser (the
  semantics of HF `evaluate`'s "bleu", which downloads its script at run time, so it is
  re-implemented here on sacrebleu's tokeniser).
- ROUGE-L: mean ROUGE-L F-measure over rows (rouge-score, no stemming). HF `evaluate`'s default
  aggregator reports a bootstrap mid estimate of this mean; `use_aggregator=False` averaged is this.
- ToolACC (team definition): mean over rows whose reference mentions a tool of |T_pred & T_ref| /
  |T_ref|; also strict set match on those rows and the false-mention rate on rows without tools.
- ThemeACC (team definition): the same over theme entities matched against a lexicon,
  case-insensitive with normalised whitespace.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from lathe.methods.lego.tools import tools_mentioned

PIECE_PATTERN = re.compile(r"\b(?:brick|plate|tile|slope|plate round|brick round)\s+\d+\s*x\s*\d+\b", re.IGNORECASE)


def _tok13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]], max_order: int = 4) -> dict:
    """{bleu, precisions, brevity_penalty, length_ratio, translation_length, reference_length} in 0..1."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    tok = _tok13a()
    matches, possible = [0] * max_order, [0] * max_order
    pred_len = ref_len = 0
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        ref_toks = [tok(r).split() for r in refs]
        p = tok(pred).split()
        pred_len += len(p)
        ref_len += min(len(r) for r in ref_toks)
        merged: Counter = Counter()
        for r in ref_toks:
            for n in range(1, max_order + 1):
                merged |= _ngrams(r, n)
        for n in range(1, max_order + 1):
            counts = _ngrams(p, n)
            matches[n - 1] += sum(min(c, merged[g]) for g, c in counts.items())
            possible[n - 1] += max(0, len(p) - n + 1)
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    ratio = pred_len / ref_len if ref_len else 0.0
    bp = 1.0 if ratio > 1.0 else (math.exp(1 - 1.0 / ratio) if ratio > 0 else 0.0)
    return {"bleu": geo * bp, "precisions": precisions, "brevity_penalty": bp, "length_ratio": ratio,
            "translation_length": pred_len, "reference_length": ref_len}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0..1)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def tool_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """{tool_acc, tool_strict, tool_false_mention, rows_with_tools, rows_without_tools} in 0..1."""
    accs, strict, false_mentions, n_empty = [], [], 0, 0
    for p, r in zip(predictions, references):
        tr, tp = tools_mentioned(r), tools_mentioned(p)
        if tr:
            accs.append(len(tp & tr) / len(tr))
            strict.append(float(tp == tr))
        else:
            n_empty += 1
            false_mentions += bool(tp)
    return {"tool_acc": sum(accs) / len(accs) if accs else 0.0,
            "tool_strict": sum(strict) / len(strict) if strict else 0.0,
            "tool_false_mention": false_mentions / n_empty if n_empty else 0.0,
            "rows_with_tools": len(accs), "rows_without_tools": n_empty}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class EntityMatcher:
    """Finds theme entities in text: lexicon entries (case-insensitive, whitespace-normalised, at word
    boundaries); with no lexicon, piece type + NxM size (e.g. 'brick 2x4')."""

    def __init__(self, lexicon: Iterable[str] | None = None):
        entries = sorted({_norm(e) for e in (lexicon or []) if e.strip()}, key=len, reverse=True)
        self.entries = entries
        self._pats = [(e, re.compile(r"(?<![a-z0-9])" + re.escape(e).replace(r"\ ", r"\s+") + r"(?![a-z0-9])"))
                      for e in entries]

    def find(self, text: str) -> set[str]:
        t = _norm(text)
        if not self.entries:
            return {_norm(re.sub(r"\s*x\s*", "x", m.group(0))) for m in PIECE_PATTERN.finditer(t)}
        return {e for e, pat in self._pats if pat.search(t)}


def theme_acc(predictions: Sequence[str], references: Sequence[str] | None = None,
              lexicon: Iterable[str] | None = None, ref_entities: Sequence[Iterable[str]] | None = None) -> dict:
    """ThemeACC over rows whose reference has entities. E_ref comes from `ref_entities` when given,
    else from the reference text; E_pred from the prediction text."""
    lex = list(lexicon or [])
    if ref_entities is not None:
        ref_sets = [{_norm(e) for e in es} for es in ref_entities]
        lex = lex + [e for s in ref_sets for e in s]
    matcher = EntityMatcher(lex)
    if ref_entities is None:
        if references is None:
            raise ValueError("theme_acc needs references or ref_entities")
        ref_sets = [matcher.find(r) for r in references]
    accs = []
    for p, er in zip(predictions, ref_sets):
        if er:
            accs.append(len(matcher.find(p) & er) / len(er))
    return {"theme_acc": sum(accs) / len(accs) if accs else 0.0, "rows_with_entities": len(accs)}


def score_all(predictions: Sequence[str], references: Sequence[str], lexicon: Iterable[str] | None = None) -> dict:
    """Every metric, x100 (counts stay counts)."""
    t = tool_scores(predictions, references)
    th = theme_acc(predictions, references, lexicon=lexicon)
    return {"bleu": 100 * corpus_bleu(predictions, references)["bleu"],
            "rougeL": 100 * rouge_l(predictions, references),
            "tool_acc": 100 * t["tool_acc"], "tool_strict": 100 * t["tool_strict"],
            "tool_false_mention": 100 * t["tool_false_mention"], "theme_acc": 100 * th["theme_acc"],
            "rows": len(predictions), "rows_with_tools": t["rows_with_tools"],
            "rows_with_entities": th["rows_with_entities"]}


HEADLINE = ("tool_acc", "theme_acc", "bleu", "rougeL")


def improvement(base: dict, tuned: dict) -> dict[str, bool]:
    """Which headline metrics the fine-tune improves over the base (the paper's claim: all four)."""
    return {k: tuned[k] > base[k] for k in HEADLINE}


def comparison_table(results: dict[str, dict]) -> str:
    from lathe.platform.runstore import markdown_table

    rows = [{"model": name, **{k: r.get(k) for k in ("tool_acc", "tool_strict", "tool_false_mention", "theme_acc",
                                                     "bleu", "rougeL", "rows")}} for name, r in results.items()]
    return markdown_table(rows, digits=2)


def bar_plot(results: dict[str, dict], path: str | Path, metrics: Sequence[str] = HEADLINE) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(results)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [results[name].get(m, 0.0) for m in metrics], width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics)
    ax.set_ylabel("score (x100)")
    ax.set_title("LEGO assistant: base vs fine-tuned")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, dict], out_dir: str | Path, base: str | None = None) -> Path:
    """report.md with the table, the bar plot and (given a base) which metrics each model improves."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = bar_plot(results, out / "lego_metrics.png")
    lines = ["# LEGO assistant evaluation", "", comparison_table(results), "", f"![metrics]({plot.name})", ""]
    if base is not None and base in results:
        for name, r in results.items():
            if name == base:
                continue
            imp = improvement(results[base], r)
            verdict = "improves all four" if all(imp.values()) else \
                "improves " + (", ".join(k for k, v in imp.items() if v) or "none")
            lines.append(f"- {name} vs {base}: {verdict}")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


# Two example turns in the fine-tuning layout: how a base model is prompted for a fair comparison.
FEW_SHOT = ("Here are two example replies.\n\n"
            "### Context:\nTrainee: Can we go to the next step?\n\n### Response:\n"
            "I used NextStep. Moved on to step 2 of 10: Attach a white plate 1x2 on top of the base.\n\n"
            "### Context:\nTrainee: Which pieces do I need here?\n\n### Response:\n"
            "I used ShowPieces. Showing the pieces for step 3: bright red brick 2x4.\n\n")


# ---- generating and scoring a model (the metrics script) ---------------------------------------


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8,
             max_prompt_tokens: int = 448) -> list[str]:
    """Greedy completions of verbatim prompts (left-padded batches; prompts cut from the left)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] for p in prompts[i:i + batch_size]]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for j, e in enumerate(enc):
            ids[j, width - len(e):] = torch.tensor(e)
            mask[j, width - len(e):] = 1
        with torch.no_grad():
            gen = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row in gen[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def evaluate_rows(model, tokenizer, rows: Sequence[dict], lexicon: Iterable[str] | None = None,
                  max_new_tokens: int = 64, batch_size: int = 8, prefix: str = "") -> tuple[dict, list[str]]:
    """Score a model on {prompt, answer} rows: (metrics x100, predictions). `prefix` goes before every
    prompt (e.g. few-shot examples for a base model)."""
    preds = generate(model, tokenizer, [prefix + r["prompt"] for r in rows], max_new_tokens, batch_size)
    return score_all(preds, [r["answer"] for r in rows], lexicon), preds


def synthetic_lexicon(seed: int, n_manuals: int, steps_per_manual: int) -> list[str]:
    """Union of the synthetic manuals' theme entities (what `### Entity` lists hold)."""
    from lathe.data.lego import generate_manuals

    return sorted({e for m in generate_manuals(seed, n_manuals, steps_per_manual) for e in m.entities()})
