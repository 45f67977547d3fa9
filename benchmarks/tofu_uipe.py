"""UIPE on synthetic TOFU: does extrapolating the unlearning update help forget quality?

Pipeline (the real `unlearn` job, on embedded Ray, CPU or GPU):
  θ_ini = tiny Llama fine-tuned on all authors + general knowledge (cached in runs/cache),
  θ_ret = the same recipe on the retain split only (cached), then GA, GradDiff and NPO, each
  followed by the UIPE sweep α ∈ {0, 0.25, 0.5, 1, 1.5, 2} (α = 0 is the base method).
Checks that θ_ini really memorised the forget set (forget ROUGE-L recall ≥ 0.9) and whether
the paper's claim holds here: some α > 0 gives higher FQ than α = 0 with MU within 5%.

    .venv/bin/python benchmarks/tofu_uipe.py           # 20 authors × 10 QA (forget10 = 20 rows)
    .venv/bin/python benchmarks/tofu_uipe.py --quick   # 10 authors × 6 QA, 2 unlearning epochs (~70 s on 2 cores)
    .venv/bin/python benchmarks/tofu_uipe.py --full-scale   # 200 authors × 20 QA, tiny-20m (GPU)

θ_ini/θ_ret are cached: the first run of a scale also fine-tunes them (minutes on 2 cores);
later runs reuse them. The three base methods run concurrently (one thread each, sharing Ray).
Writes runs/bench/tofu_uipe.json; the last line is the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALPHAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
METHODS = {"ga": {}, "graddiff": {"gamma": 1.0, "alpha": 1.0}, "npo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0}}


def config(method: str, scale: str, lr: float | None, epochs: int | None) -> dict:
    if scale == "quick":
        data = {"n_authors": 10, "qa_per_author": 6, "n_real_authors": 8, "n_world_facts": 8, "max_length": 64}
        sft = {"epochs": 40, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 10_000}
        un = {"epochs": 2, "batch_size": 3, "lr": 3e-4, "checkpoint_every": 10_000}
        model, new_tokens = {"preset": "tiny-1m", "tokenizer_vocab": 1024}, 24
    elif scale == "small":
        data = {"n_authors": 20, "qa_per_author": 10, "n_real_authors": 20, "n_world_facts": 20, "max_length": 64}
        sft = {"epochs": 40, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "checkpoint_every": 10_000}
        un = {"epochs": 4, "batch_size": 5, "lr": 2e-4, "checkpoint_every": 10_000}
        model, new_tokens = {"preset": "tiny-1m", "tokenizer_vocab": 1024}, 40
    else:  # the published sizes; meant for a GPU
        data = {"n_authors": 200, "qa_per_author": 20, "max_length": 128}
        sft = {"epochs": 30, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "checkpoint_every": 10_000}
        un = {"epochs": 5, "batch_size": 8, "grad_accum": 4, "lr": 1e-4, "checkpoint_every": 10_000}
        model, new_tokens = {"preset": "tiny-20m", "tokenizer_vocab": 4096}, 64
    if lr is not None:
        un["lr"] = lr
    if epochs is not None:
        un["epochs"] = epochs
    return {"job": "unlearn", "name": f"bench-uipe-{method}", "seed": 0, "output_root": "runs/bench/tofu_uipe",
            "model": model, "data": {"split": "forget10", **data},
            "models": {"cache_dir": "runs/cache", "train": sft},
            "unlearn": {"method": method, "loss": METHODS[method], "train": un},
            "uipe": {"alphas": ALPHAS}, "eval": {"max_new_tokens": new_tokens, "batch_size": 64},
            "eval_epochs": False, "ray": {"num_workers": 1}}


def main() -> None:
    ap = argparse.ArgumentParser(description="UIPE α sweep over GA, GradDiff and NPO on synthetic TOFU")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full-scale", action="store_true")
    ap.add_argument("--sequential", action="store_true", help="run the base methods one after another")
    ap.add_argument("--lr", type=float, default=None, help="unlearning learning rate (default per scale)")
    ap.add_argument("--epochs", type=int, default=None, help="unlearning epochs (default per scale)")
    args = ap.parse_args()
    scale = "quick" if args.quick else ("full" if args.full_scale else "small")

    from lathe.jobs.unlearn import UnlearnJob, ensure_sft, load_dataset
    from lathe.platform.config import validate
    from lathe.platform.runstore import RunDir, markdown_table
    from lathe.platform.runtime import ray_session

    t0 = time.perf_counter()
    cfgs = {m: validate(config(m, scale, args.lr, args.epochs), f"tofu_uipe[{m}]") for m in METHODS}
    results: dict[str, dict] = {}
    with ray_session():
        # θ_ini and θ_ret once (cached), before the methods race for them
        c = cfgs["ga"]
        ds = load_dataset(c.data, c.seed)
        pre = RunDir.create(c.model_copy(update={"name": "bench-uipe-models"}))
        src: dict = {}
        t_models = time.perf_counter()
        ensure_sft("target", ds.get("full") + ds.general_knowledge(), c, ds, pre, src, False)
        ensure_sft("retain-forget10", ds.retain("forget10") + ds.general_knowledge(), c, ds, pre, src, False)
        t_models = time.perf_counter() - t_models

        def one(m: str) -> tuple[str, dict]:
            return m, UnlearnJob().run(cfgs[m], RunDir.create(cfgs[m]), show_progress=False)

        if args.sequential:
            results = dict(one(m) for m in METHODS)
        else:
            with ThreadPoolExecutor(len(METHODS)) as pool:
                results = dict(pool.map(one, METHODS))
    wall = time.perf_counter() - t0

    rows, verdicts = [], {}
    first = next(iter(results.values()))
    for m, res in results.items():
        alpha_rows = [r for r in res["rows"] if r["alpha"] is not None]
        base = next(r for r in alpha_rows if r["alpha"] == 0.0)
        wins = [r for r in alpha_rows if r["alpha"] > 0 and r["forget_quality"] > base["forget_quality"]
                and r["model_utility"] >= 0.95 * base["model_utility"]]
        verdicts[m] = {"holds": bool(wins), "alphas": [r["alpha"] for r in wins],
                       "fq_alpha0": base["forget_quality"], "mu_alpha0": base["model_utility"],
                       "best": max(wins, key=lambda r: r["forget_quality"])["alpha"] if wins else None}
        for r in alpha_rows:
            rows.append({"method": m, "alpha": r["alpha"], "FQ": r["forget_quality"], "MU": r["model_utility"],
                         "forget_rougeL": r["forget_rougeL"], "forget_TR": r["forget_truth_ratio"],
                         "MU/MU(α=0)": (r["model_utility"] / base["model_utility"]) if base["model_utility"] else None})
    memorised = first["forget_rougeL_target"]
    print(markdown_table([{"model": "target θ_ini", "FQ": first["fq_target"], "MU": first["mu_target"],
                           "forget_rougeL": first["forget_rougeL_target"]},
                          {"model": "retain θ_ret", "FQ": first["fq_retain"], "MU": first["mu_retain"]}]))
    print()
    print(markdown_table(rows))
    print()
    for m, v in verdicts.items():
        print(f"{m}: α>0 beats α=0 on FQ with MU within 5%: {'YES at α=' + str(v['alphas']) if v['holds'] else 'no'}")
    out = {"scale": scale, "unlearn_lr": cfgs["ga"].unlearn.train.lr, "unlearn_epochs": cfgs["ga"].unlearn.train.epochs,
           "wall_s": wall, "models_s": t_models, "forget_rougeL_target": memorised,
           "memorised": memorised >= 0.9, "fq_target": first["fq_target"], "mu_target": first["mu_target"],
           "fq_retain": first["fq_retain"], "mu_retain": first["mu_retain"], "rows": rows, "verdicts": verdicts,
           "runs": {m: str(Path(r["retain_log"]).parent) for m, r in results.items()}}
    Path("runs/bench").mkdir(parents=True, exist_ok=True)
    import math

    from lathe.platform.runstore import plot_curves

    lg = lambda x: math.log10(max(x, 1e-300))  # noqa: E731
    series = {f"{m} (α 0→2)": ([r["MU"] for r in rows if r["method"] == m], [lg(r["FQ"]) for r in rows if r["method"] == m])
              for m in results}
    series["target θ_ini"] = ([first["mu_target"]], [lg(first["fq_target"])])
    series["retain θ_ret"] = ([first["mu_retain"]], [lg(first["fq_retain"])])
    out["plot"] = str(plot_curves(Path("runs/bench/tofu_uipe_fq_vs_mu.png"), series, xlabel="model utility",
                                  ylabel="log10 forget quality", title=f"UIPE α paths ({scale})"))
    Path("runs/bench/tofu_uipe.json").write_text(json.dumps(out, indent=2, default=str))
    holds = [m for m, v in verdicts.items() if v["holds"]]
    print(f"tofu_uipe[{scale}]: target forget ROUGE-L {memorised:.3f} (memorised: {memorised >= 0.9}); "
          f"UIPE claim (some α>0: FQ up, MU within 5%) holds for {len(holds)}/3 base methods "
          f"({', '.join(holds) or 'none'}); wall {wall:.0f} s")


if __name__ == "__main__":
    main()
