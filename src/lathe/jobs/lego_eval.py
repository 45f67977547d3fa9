"""The LEGO metrics script: score an sft artifact on the synthetic v2 test split (BLEU, ROUGE-L,
ToolACC, ThemeACC), print the scores as JSON and optionally write the report (table + bar plot).

    python -m lathe.jobs.lego_eval runs/<sft-run>/artifacts/model --out runs/lego_eval
"""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lathe.jobs.lego_eval ARTIFACT [--out DIR]`: score an sft artifact on the synthetic v2 test split."""
    import argparse
    import json

    from lathe.eval.lego import evaluate_rows, synthetic_lexicon, write_report
    from lathe.jobs.sft import load_artifact
    from lathe.methods.lego.finetune import build_rows

    ap = argparse.ArgumentParser(prog="python -m lathe.jobs.lego_eval")
    ap.add_argument("artifact")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-manuals", type=int, default=12)
    ap.add_argument("--steps-per-manual", type=int, default=20)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    _, test = build_rows({"n_manuals": a.n_manuals, "steps_per_manual": a.steps_per_manual, "eval_limit": a.limit},
                         a.seed)
    model, tok = load_artifact(a.artifact)
    scores, _ = evaluate_rows(model, tok, test, synthetic_lexicon(a.seed, a.n_manuals, a.steps_per_manual),
                              a.max_new_tokens)
    print(json.dumps(scores))
    if a.out:
        write_report({"model": scores}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
