"""Edits per second: MEMIT batches of 1, 10, 100, 1000 edits vs sequential ROME, one run, same model.

The headline compares rates at EQUAL edit counts: N sequential ROME edits vs one MEMIT batch of
the same N requests (N = 50 with --quick, 100 otherwise). Target: MEMIT's batch rate is at least
`--target` (default 1.0) times sequential ROME's; the script exits 1 when it is missed
(`--no-enforce` only reports). The last line is the ratio.

    python benchmarks/edit_speed.py --quick     # batches 1/10/50, fewer optimisation steps (<60 s)
    python benchmarks/edit_speed.py             # batches 1/10/100/1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from _common import add_enforce, verdict  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--target", type=float, default=1.0, help="minimum MEMIT-batch / sequential-ROME edits/s ratio")
    add_enforce(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from evoke_lti import knowledge_setup, stats_for

    from lathe.data import evoke
    from lathe.jobs import edit as E
    from lathe.jobs.sft import load_artifact
    from lathe.methods.editing import editor_config, restore
    from lathe.methods.editing.common import context_templates

    cfg, model_dir, _, _, kg = knowledge_setup("memit")
    model, tok = load_artifact(model_dir)
    model.eval()
    sizes = [1, 10, 50] if args.quick else [1, 10, 100, 1000]
    steps = 3 if args.quick else 20
    main, _, _ = evoke.evoke_synthetic(cfg.seed + 1, n_main=max(sizes), n_subj=0, n_relations=cfg.data.n_relations)
    reqs = evoke.requests_of(main)
    opts = {**cfg.options, "v_num_grad_steps": steps}
    mmod, mcfg = editor_config("memit", opts)
    ropts = {k: v for k, v in opts.items() if k not in ("layers", "mom2_update_weight")}
    rmod, rcfg = editor_config("rome", {**ropts, "layer": mcfg.layers[-1]})
    stats = stats_for(cfg, model_dir, kg, sorted(set(mcfg.layers)))
    templates = context_templates(model, tok, mcfg.context_template_length_params, mcfg.template_seed)
    res = {}
    out = ROOT / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)

    def record(key, n, secs):  # print and save as each measurement lands (the full run is long)
        res[key] = {"edits": n, "s": secs, "edits_per_s": n / secs}
        print(f"{key:18s} {n:5d} edits {secs:8.2f}s {n / secs:7.2f} edits/s", flush=True)
        (out / "edit_speed.json").write_text(json.dumps({"quick": args.quick, "v_num_grad_steps": steps,
                                                         "results": res}, indent=1))

    n_rome = sizes[-1] if args.quick else 100  # the comparison count: a MEMIT batch size too
    assert n_rome in sizes
    t = time.perf_counter()
    r = rmod.apply(model, tok, reqs[:n_rome], rcfg, stats, templates)  # sequential rank-one updates
    record("rome_sequential", n_rome, time.perf_counter() - t)
    restore(model, r.originals)
    for b in sizes:
        t = time.perf_counter()
        r = mmod.apply(model, tok, reqs[:b], mcfg, stats, templates)
        record(f"memit_batch_{b}", b, time.perf_counter() - t)
        restore(model, r.originals)
    big = res[f"memit_batch_{sizes[-1]}"]["edits_per_s"]
    same = res[f"memit_batch_{n_rome}"]["edits_per_s"]
    rome = res["rome_sequential"]["edits_per_s"]
    ratio = same / rome
    ok = ratio >= args.target
    data = json.loads((out / "edit_speed.json").read_text())
    data.update({"compare_edits": n_rome, "ratio": ratio, "target": args.target, "met": ok})
    (out / "edit_speed.json").write_text(json.dumps(data, indent=1))
    print(f"largest batch: MEMIT batch {sizes[-1]} {big:.2f} edits/s")
    print(f"target MEMIT/ROME >= {args.target:g} at {n_rome} edits: {'met' if ok else 'MISSED'}")
    print(f"MEMIT batch {n_rome} vs sequential ROME {n_rome} edits: {same:.2f} vs {rome:.2f} edits/s, "
          f"ratio x{ratio:.2f}")
    return verdict({f"MEMIT batch / sequential ROME edits/s >= {args.target:g} at {n_rome} edits": ok},
                   args.no_enforce)


if __name__ == "__main__":
    sys.exit(main())
