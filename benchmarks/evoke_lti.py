"""EVOKE on the synthetic knowledge graph: recall vs overfit for FT-L, ROME, MEMIT, ROME-LTI, MEMIT-LTI.

The tiny model first learns the graph by SFT (the edit job's cached knowledge model, built on
first use through Ray). Each editor then runs the single-edit protocol (edit, score, restore)
in-process with the edit job's worker class. Writes runs/bench/evoke_lti.json + .png.

    python benchmarks/evoke_lti.py --quick      # 8 cases per editor (needs the cached model: <60 s)
    python benchmarks/evoke_lti.py              # every case
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EDITORS = ["ft_l", "rome", "memit", "rome_lti", "memit_lti"]


def knowledge_setup(editor: str = "rome"):
    """(config, model_dir, main, subj, kg) for configs/edit/<editor>.yaml, training the model if not cached."""
    from lathe.jobs import edit as E
    from lathe.platform.config import load_config

    cfg = load_config(ROOT / "configs" / "edit" / f"{editor}.yaml", [f"cache_dir={ROOT / 'runs' / 'cache'}"])
    main, subj, kg = E.load_data(cfg.data, cfg.seed)
    if _cached(cfg, kg, main):
        model_dir, _ = E.knowledge_model(cfg, kg, main, None)  # returns the cached directory, no Ray
    else:
        from lathe.platform.runtime import ray_session

        print("knowledge model not cached: training it once by SFT (a few minutes)", file=sys.stderr)
        with ray_session():
            model_dir, _ = E.knowledge_model(cfg, kg, main, None)
    return cfg, model_dir, main, subj, kg


def _cached(cfg, kg, main) -> bool:
    import hashlib

    from lathe.data import evoke

    key = json.dumps({"seed": cfg.seed, "data": cfg.data.model_dump(exclude={"n_cases"}), "model": cfg.model.model_dump(),
                      "k": cfg.knowledge.model_dump(mode="json"), "v": evoke.GENERATOR_VERSION}, sort_keys=True)
    d = Path(cfg.cache_dir) / f"edit-kg-{hashlib.sha256(key.encode()).hexdigest()[:12]}" / "model" / "config.json"
    return d.is_file()


def stats_for(cfg, model_dir, kg, layers):
    from lathe.jobs import edit as E

    if not layers:
        return {}
    return E._stats_task(str(model_dir), layers, E.stats_texts(cfg, kg), cfg.stats.n_samples,
                         str(Path(cfg.cache_dir) / "stats"), {}, cfg.seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from lathe.jobs import edit as E
    from lathe.platform.config import load_config

    n = args.cases or (4 if args.quick else None)
    _, model_dir, main_recs, subj_recs, kg = knowledge_setup()
    main_recs = main_recs[:n] if n else main_recs
    subj_recs = subj_recs[:max(1, n // 2)] if n else subj_recs
    recs = [("main", r) for r in main_recs] + [("subj", r) for r in subj_recs]
    out, t0 = {}, time.perf_counter()
    for ed in EDITORS:
        cfg = load_config(ROOT / "configs" / "edit" / f"{ed}.yaml", [f"cache_dir={ROOT / 'runs' / 'cache'}"])
        layers = E._layers(cfg.editor, cfg.options, Path(model_dir))
        stats = stats_for(cfg, model_dir, kg, layers)
        w = E.EditWorker(str(model_dir), cfg.editor, cfg.options, stats, 1, cfg.seed)
        t = time.perf_counter()
        rows = w.run_batches([[r] for r in recs], check_restore=3, gen_log=0)
        s = E.summarize(rows)
        out[ed] = {"summary": s, "wall_s": time.perf_counter() - t, "cases": len(rows)}
        post = s["post"]
        print(f"{ed:10s} efficacy {post.get('efficacy', 0):5.1f} paraphrase {post.get('paraphrase', 0):5.1f} "
              f"overfit EOS {post['overfit_EOS_mean']:5.1f} (pre {s['pre']['overfit_EOS_mean']:5.1f})  "
              f"{out[ed]['wall_s']:.1f}s", flush=True)
    bench = ROOT / "runs" / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    rows = []
    for ed, r in out.items():
        rows += [x for x in E.table_rows(r["summary"], ed) if x["when"] == "post"]
    rows.insert(0, E.table_rows(out["rome"]["summary"], "unedited")[0])
    from lathe.platform.runstore import markdown_table

    table = markdown_table(rows, digits=3)
    points = {"unedited": (out["rome"]["summary"]["pre"].get("efficacy", 0), out["rome"]["summary"]["pre"]["overfit_EOS_mean"])}
    points.update({ed: (r["summary"]["post"].get("efficacy", 0), r["summary"]["post"]["overfit_EOS_mean"])
                   for ed, r in out.items()})
    E.eos_efficacy_plot(bench / "evoke_lti.png", points, "EVOKE (synthetic): EOS vs efficacy, with/without LTI")
    (bench / "evoke_lti.json").write_text(json.dumps({"quick": args.quick, "results": out, "table": table}, indent=1,
                                                     default=float))
    (bench / "evoke_lti.md").write_text(table + "\n")
    print(table)
    g = lambda ed, k: out[ed]["summary"]["post"].get(k, float("nan"))  # noqa: E731
    worst = min(EDITORS, key=lambda ed: g(ed, "overfit_EOS_mean"))
    print(f"total {time.perf_counter() - t0:.1f}s; most overfit (lowest EOS): {worst}")
    print(f"overfit EOS ROME {g('rome', 'overfit_EOS_mean'):.1f} -> ROME-LTI {g('rome_lti', 'overfit_EOS_mean'):.1f} "
          f"(x{g('rome_lti', 'overfit_EOS_mean') / max(g('rome', 'overfit_EOS_mean'), 1e-9):.2f}), efficacy "
          f"{g('rome', 'efficacy'):.0f} -> {g('rome_lti', 'efficacy'):.0f}; MEMIT {g('memit', 'overfit_EOS_mean'):.1f} -> "
          f"MEMIT-LTI {g('memit_lti', 'overfit_EOS_mean'):.1f} (x{g('memit_lti', 'overfit_EOS_mean') / max(g('memit', 'overfit_EOS_mean'), 1e-9):.2f}), "
          f"efficacy {g('memit', 'efficacy'):.0f} -> {g('memit_lti', 'efficacy'):.0f}")


if __name__ == "__main__":
    main()
