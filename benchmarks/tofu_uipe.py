"""UIPE on synthetic TOFU: does extrapolating the unlearning update help forget quality?

Pipeline (the real `unlearn` job, on embedded Ray, CPU or GPU), for each of ≥ 3 seeds (each seed
draws its own synthetic TOFU set, tokenizer and initial weights):
  θ_ini = tiny Llama fine-tuned on all authors + general knowledge (cached in runs/cache),
  θ_ret = the same recipe on the retain split only (cached), then GA, GradDiff and NPO, each
  followed by the UIPE sweep α ∈ {0, 0.25, 0.5, 1, 1.5, 2} (α = 0 is the base method).

Pre-registered α: the forget10 rows and each utility set's rows are split in half (seeded) into
a validation and a test split. α* is chosen on the VALIDATION rows only, by the job's rule
(argmax FQ subject to MU ≥ 0.95 × MU(α = 0), ties to the smaller α); FQ and MU are then reported
on the TEST rows at α* and at α = 0, with 95 % bootstrap CIs over test rows (paired for the
differences; pooled over seeds by resampling rows within every seed).

Target (exit 1 when missed; `--no-enforce` only reports): θ_ini memorised the forget set (mean
forget ROUGE-L ≥ 0.9) and, for at least one base method, the mean test ΔFQ = FQ(α*) − FQ(0) over
seeds has a 95 % CI above 0 while the mean test ΔMU ≥ −5 % of MU(α = 0) (the paper's claim).

    .venv/bin/python benchmarks/tofu_uipe.py --quick   # 10 authors × 10 QA, 5 epochs at 1e-3, seeds 0 1 2 (~10 min)
    .venv/bin/python benchmarks/tofu_uipe.py           # 20 authors × 10 QA, 4 epochs
    .venv/bin/python benchmarks/tofu_uipe.py --full-scale   # 200 authors × 20 QA, tiny-20m (GPU)

Writes runs/bench/tofu_uipe.json; the last line is the headline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_enforce, verdict  # noqa: E402
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALPHAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
METHODS = {"ga": {}, "graddiff": {"gamma": 1.0, "alpha": 1.0}, "npo": {"beta": 0.1, "gamma": 1.0, "alpha": 1.0}}
UTILITY = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


def config(method: str, scale: str, seed: int, lr: float | None, epochs: int | None) -> dict:
    if scale == "quick":
        data = {"n_authors": 10, "qa_per_author": 10, "n_real_authors": 10, "n_world_facts": 10, "max_length": 64}
        sft = {"epochs": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "checkpoint_every": 10_000}
        un = {"epochs": 5, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 10_000}  # 3e-4 x 2 did not unlearn
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
    return {"job": "unlearn", "name": f"bench-uipe-{method}-s{seed}", "seed": seed,
            "output_root": "runs/bench/tofu_uipe", "model": model, "data": {"split": "forget10", **data},
            "models": {"cache_dir": "runs/cache", "train": sft},
            "unlearn": {"method": method, "loss": METHODS[method], "train": un},
            "uipe": {"alphas": ALPHAS}, "eval": {"max_new_tokens": new_tokens, "batch_size": 64},
            "eval_epochs": False, "ray": {"num_workers": 1}}


# ---------------------------------------------------------------------------------------
# Metrics on a subset of rows, from the job's per-sample logs


def per_sample(run_dir: Path, label: str) -> dict:
    d = run_dir / "artifacts" / "eval" / re.sub(r"[^A-Za-z0-9_.=-]", "_", label)
    return json.loads((d / "per_sample.json").read_text())


def fq_on(model: dict, retain: dict, ids: list[str]) -> float:
    from scipy.stats import ks_2samp

    m = {r["id"]: r["truth_ratio"] for r in model["forget"]["rows"]}
    ref = {r["id"]: r["truth_ratio"] for r in retain["forget"]["rows"]}
    return float(ks_2samp([m[i] for i in ids], [ref[i] for i in ids]).pvalue)


def mu_on(model: dict, ids: dict[str, list[str]]) -> float:
    from lathe.eval import tofu as te

    comps = []
    for name in UTILITY:
        rows = {r["id"]: r for r in model[name]["rows"]}
        sel = [rows[i] for i in ids[name]]
        comps += [sum(r["prob"] for r in sel) / len(sel), sum(r["rougeL_recall"] for r in sel) / len(sel),
                  te.tr_true([r["truth_ratio"] for r in sel])]
    return te.model_utility(comps)


def halves(ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    order = sorted(ids, key=int)
    random.Random(seed).shuffle(order)
    k = len(order) // 2
    return sorted(order[:k], key=int), sorted(order[k:], key=int)


def splits(logs: dict, seed: int) -> dict[str, dict[str, list[str]]]:
    out = {"val": {}, "test": {}}
    for name in ("forget",) + UTILITY:
        v, t = halves([r["id"] for r in logs[name]["rows"]], seed * 7 + len(name))
        out["val"][name], out["test"][name] = v, t
    return out


def choose_alpha(by_alpha: dict[float, dict], retain: dict, val: dict) -> float:
    """The job's α* rule on validation rows: argmax FQ with MU ≥ 0.95 × MU(α = 0); ties → smaller α."""
    from lathe.jobs.unlearn import pick_alpha

    rows = [{"alpha": a, "forget_quality": fq_on(m, retain, val["forget"]), "model_utility": mu_on(m, val)}
            for a, m in sorted(by_alpha.items())]
    floor = 0.95 * rows[0]["model_utility"]
    return pick_alpha(rows, floor)["alpha"]


def _arrays(model: dict, ids: dict[str, list[str]]) -> dict:
    """Per-row values on the given rows, as numpy arrays (bootstrap draws index into them)."""
    import numpy as np

    out = {}
    for name in ("forget",) + UTILITY:
        rows = {r["id"]: r for r in model[name]["rows"]}
        sel = [rows[i] for i in ids[name]]
        out[name] = {k: np.array([r[k] for r in sel], dtype=float) for k in
                     (("truth_ratio",) if name == "forget" else ("truth_ratio", "prob", "rougeL_recall"))}
    return out


def _mu(a: dict, idx: dict) -> float:
    import numpy as np

    from lathe.eval import tofu as te

    comps = []
    for name in UTILITY:
        v, i = a[name], idx[name]
        comps += [float(v["prob"][i].mean()), float(v["rougeL_recall"][i].mean()),
                  float(np.maximum(0.0, 1 - v["truth_ratio"][i]).mean())]
    return te.model_utility(comps)


def bootstrap(seeds: list[dict], n_boot: int, seed: int = 12345) -> dict:
    """Paired bootstrap over test rows within every seed (the same resampled rows for α* and α = 0);
    each statistic is the mean over seeds. Returns 95 % percentile intervals."""
    import numpy as np
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(seed)
    pre = [(_arrays(s["star"], s["test"]), _arrays(s["zero"], s["test"]), _arrays(s["retain"], s["test"]))
           for s in seeds]
    stats = {k: [] for k in ("fq_star", "fq_0", "d_fq", "mu_star", "mu_0", "d_mu")}
    for _ in range(n_boot):
        acc = dict.fromkeys(stats, 0.0)
        for star, zero, ret in pre:
            idx = {k: rng.integers(0, len(v["truth_ratio"]), len(v["truth_ratio"])) for k, v in star.items()}
            r = ret["forget"]["truth_ratio"][idx["forget"]]
            fs = float(ks_2samp(star["forget"]["truth_ratio"][idx["forget"]], r).pvalue)
            f0 = float(ks_2samp(zero["forget"]["truth_ratio"][idx["forget"]], r).pvalue)
            ms, m0 = _mu(star, idx), _mu(zero, idx)
            for k, v in (("fq_star", fs), ("fq_0", f0), ("d_fq", fs - f0), ("mu_star", ms), ("mu_0", m0),
                         ("d_mu", ms - m0)):
                acc[k] += v / len(pre)
        for k in stats:
            stats[k].append(acc[k])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in stats.items()}


def previous(cfg) -> tuple[Path, dict] | None:
    """The newest finished run of exactly this config (its saved config and results.json)."""
    import yaml

    root = Path(cfg.output_root)
    want = cfg.model_dump(mode="json")
    for d in sorted(root.glob(f"{cfg.name}-*"), reverse=True):
        if not (d / "results.json").is_file() or not (d / "config.yaml").is_file():
            continue
        if yaml.safe_load((d / "config.yaml").read_text()) == want:
            return d, json.loads((d / "results.json").read_text())
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description="UIPE α sweep over GA, GradDiff and NPO on synthetic TOFU")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full-scale", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--sequential", action="store_true", help="run the base methods one after another")
    ap.add_argument("--lr", type=float, default=None, help="unlearning learning rate (default per scale)")
    ap.add_argument("--epochs", type=int, default=None, help="unlearning epochs (default per scale)")
    add_enforce(ap)
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs of the same scale, seed and method "
                                                         "under runs/bench/tofu_uipe (resume an interrupted sweep)")
    args = ap.parse_args()
    if len(set(args.seeds)) < 3:
        ap.error("--seeds: at least 3 distinct seeds")
    scale = "quick" if args.quick else ("full" if args.full_scale else "small")

    from lathe.jobs.unlearn import UnlearnJob, ensure_sft, load_dataset, sft_rows
    from lathe.platform.config import validate
    from lathe.platform.runstore import RunDir, markdown_table
    from lathe.platform.runtime import ray_session

    t0 = time.perf_counter()
    per_seed: dict[int, dict[str, tuple[Path, dict]]] = {}
    with ray_session():
        for seed in args.seeds:
            cfgs = {m: validate(config(m, scale, seed, args.lr, args.epochs), f"tofu_uipe[{m},{seed}]") for m in METHODS}
            c = cfgs["ga"]  # θ_ini and θ_ret once per seed (cached), before the methods race for them
            ds = load_dataset(c.data, c.seed)
            pre = RunDir.create(c.model_copy(update={"name": f"bench-uipe-models-s{seed}"}))
            src: dict = {}
            ensure_sft("target", sft_rows(c, ds, "target"), c, ds, pre, src, False)
            ensure_sft("retain-forget10", sft_rows(c, ds, "retain"), c, ds, pre, src, False)

            def one(m: str, cfgs=cfgs) -> tuple[str, tuple[Path, dict]]:
                done = previous(cfgs[m]) if args.reuse else None
                if done is not None:
                    return m, done
                run = RunDir.create(cfgs[m])
                return m, (run.path, UnlearnJob().run(cfgs[m], run, show_progress=False))

            if args.sequential:
                per_seed[seed] = dict(one(m) for m in METHODS)
            else:
                with ThreadPoolExecutor(len(METHODS)) as pool:
                    per_seed[seed] = dict(pool.map(one, METHODS))
            print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t0

    rows, verdicts, memorised = [], {}, []
    for m in METHODS:
        seeds = []
        for seed, by_method in per_seed.items():
            run_dir, res = by_method[m]
            memorised.append(res["forget_rougeL_target"])
            retain = per_sample(run_dir, "retain")
            by_alpha = {a: per_sample(run_dir, f"uipe a={a:g}") for a in ALPHAS}
            sp = splits(retain, seed)
            a_star = choose_alpha(by_alpha, retain, sp["val"])
            s = {"seed": seed, "alpha_star": a_star, "star": by_alpha[a_star], "zero": by_alpha[0.0],
                 "retain": retain, "test": sp["test"]}
            s["fq_star"], s["fq_0"] = fq_on(s["star"], retain, sp["test"]["forget"]), fq_on(s["zero"], retain, sp["test"]["forget"])
            s["mu_star"], s["mu_0"] = mu_on(s["star"], sp["test"]), mu_on(s["zero"], sp["test"])
            seeds.append(s)
            rows.append({"method": m, "seed": seed, "α* (val)": a_star, "test FQ α*": s["fq_star"],
                         "test FQ α=0": s["fq_0"], "test MU α*": s["mu_star"], "test MU α=0": s["mu_0"],
                         "job α* (all rows)": res["best_alpha"]})
        ci = bootstrap(seeds, args.boot)
        mean = lambda k: sum(x[k] for x in seeds) / len(seeds)  # noqa: E731
        d_fq, d_mu, mu0 = mean("fq_star") - mean("fq_0"), mean("mu_star") - mean("mu_0"), mean("mu_0")
        holds = ci["d_fq"][0] > 0 and d_mu >= -0.05 * mu0
        verdicts[m] = {"alphas": [s["alpha_star"] for s in seeds], "fq_star": mean("fq_star"), "fq_0": mean("fq_0"),
                       "mu_star": mean("mu_star"), "mu_0": mu0, "d_fq": d_fq, "d_mu": d_mu, "ci95": ci, "holds": holds}
    print(markdown_table(rows))
    print()
    summary = [{"method": m, "α* per seed": v["alphas"], "FQ α*": v["fq_star"], "FQ α* CI": v["ci95"]["fq_star"],
                "FQ α=0": v["fq_0"], "ΔFQ CI": v["ci95"]["d_fq"], "MU α*": v["mu_star"], "MU α* CI": v["ci95"]["mu_star"],
                "MU α=0": v["mu_0"], "ΔMU CI": v["ci95"]["d_mu"], "claim": v["holds"]} for m, v in verdicts.items()]
    print(markdown_table(summary))
    mem = sum(memorised) / len(memorised)
    holds = [m for m, v in verdicts.items() if v["holds"]]
    met = mem >= 0.9 and bool(holds)
    out = {"scale": scale, "seeds": args.seeds, "boot": args.boot, "wall_s": wall, "forget_rougeL_target": mem,
           "rows": rows, "verdicts": verdicts, "target_met": met,
           "runs": {f"{m}-s{s}": str(p[m][0]) for s, p in per_seed.items() for m in METHODS}}
    Path("runs/bench").mkdir(parents=True, exist_ok=True)
    Path("runs/bench/tofu_uipe.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"target (memorised, and for some method ΔFQ CI > 0 with ΔMU ≥ −5%): {'met' if met else 'MISSED'}")
    print(f"tofu_uipe[{scale}, seeds {args.seeds}]: θ_ini forget ROUGE-L {mem:.3f}; UIPE at the validation-chosen α* "
          f"beats α=0 on test FQ (95% CI > 0, MU within 5%) for {len(holds)}/3 base methods "
          f"({', '.join(holds) or 'none'}); wall {wall:.0f} s")
    return verdict({"θ_ini memorised the forget set (mean ROUGE-L >= 0.9)": mem >= 0.9,
                    "for some base method UIPE's ΔFQ 95% CI > 0 with ΔMU >= -5%": bool(holds)}, args.no_enforce)


if __name__ == "__main__":
    sys.exit(main())
