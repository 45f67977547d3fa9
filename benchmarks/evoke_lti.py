"""EVOKE recall vs overfit for FT-L, ROME, MEMIT, ROME-LTI, MEMIT-LTI, with and without LTI.

`--model tiny` (default): the synthetic knowledge graph. The tiny model first learns the graph by
SFT (the edit job's cached knowledge model, built on first use through Ray). Writes
runs/bench/evoke_lti.json + .png.

`--model real`: SmolLM2-135M-Instruct (configs/edit/*_real.yaml) on the curated world facts it is
probed to know (lathe.data.world_facts), covariance statistics from its own samples (cached).
Writes runs/bench/evoke_lti_real.json + .md + .png and states whether the paper's two claims hold:
editing overfit exists (a base editor that takes its edits lowers the mean EOS) and LTI reduces it at
equal efficacy (higher mean EOS, efficacy within 10 points).

Target (the paper's table claim; exit 1 when missed, `--no-enforce` only reports): ROME-LTI and
MEMIT-LTI each leave a higher mean EOS than ROME and MEMIT at equal efficacy (within 10 points).
The last line is the with/without-LTI EOS ratio.

Each editor runs the single-edit protocol (edit, score, restore) in-process with the edit job's
worker class.

    python benchmarks/evoke_lti.py --quick              # 4 main + 2 subj cases per editor (cached model: <60 s)
    python benchmarks/evoke_lti.py                      # every case
    python benchmarks/evoke_lti.py --model real --quick # 3 main + 2 subj cases per editor
    python benchmarks/evoke_lti.py --model real         # the config's records (data.n_main + data.n_subj)
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import add_enforce, verdict  # noqa: E402

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


def lti_targets(out: dict) -> dict[str, bool]:
    """The paper's table claim, per base editor: with LTI the mean EOS is higher (less overfit) at
    equal efficacy (within 10 points)."""
    g = lambda ed, k: out[ed]["summary"]["post"].get(k, float("nan"))  # noqa: E731
    return {f"{base.upper()}-LTI mean EOS > {base.upper()}'s at efficacy within 10 points":
            g(base + "_lti", "overfit_EOS_mean") > g(base, "overfit_EOS_mean")
            and abs(g(base + "_lti", "efficacy") - g(base, "efficacy")) <= 10
            for base in ("rome", "memit") if base in out and base + "_lti" in out}


def main() -> int:
    ap = argparse.ArgumentParser()
    add_enforce(ap)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--model", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--editors", default=",".join(EDITORS), help="--model real: a comma-separated subset")
    ap.add_argument("--model-path", default=None, help="--model real: an HF directory instead of the zoo preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "real":
        return real_main(args)
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
    return verdict(lti_targets(out), args.no_enforce)


# ---------------------------------------------------------------------------------------
# --model real


def real_overrides(model_path: str | None) -> list[str]:
    return [f"cache_dir={ROOT / 'runs' / 'cache'}"] + ([f"model.path={model_path}"] if model_path else [])


def real_setup(n_main: int | None, n_subj: int | None, model_path: str | None = None):
    """(loaded model, tokenizer, main, subj, probe info, stats texts) for configs/edit/rome_real.yaml."""
    from lathe.jobs import edit as E
    from lathe.jobs.sft import load_artifact
    from lathe.platform.config import load_config

    cfg = load_config(ROOT / "configs" / "edit" / "rome_real.yaml", real_overrides(model_path))
    model_dir = E.pretrained_model_dir(cfg)
    t = time.perf_counter()
    model, tok = load_artifact(model_dir)
    model.eval()
    print(f"loaded {model_dir} in {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    main, subj, info, texts = E.world_setup_local(model, tok, cfg.data, cfg.stats, cfg.seed, cfg.cache_dir)
    print(f"probe: the model knows {info['known']} of {info['candidates']} facts ({info['per_relation']}); "
          f"{len(main)} main + {len(subj)} subject-specificity records; {len(texts)} stats samples "
          f"({time.perf_counter() - t:.1f}s)", flush=True)
    main = main[:n_main] if n_main else main
    subj = subj[:n_subj] if n_subj is not None else subj
    return model, tok, main, subj, info, texts


def teacher_uptake(model, tok, main: list[dict]) -> dict:
    """LTI's premise: does the unedited model, given the ICL prefix "Imagine that <prompt> <o*>\\n", answer
    o*? P(o*)'s first token with and without the prefix, and how often o* becomes the greedy answer."""
    import torch

    from lathe.data import world_facts as wf
    from lathe.data.evoke import ICL_PREFIX, EditRequest
    from lathe.methods.editing.common import continuation_ids

    def p_first(prompt: str, obj: str) -> float:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
        return float(logits.softmax(-1)[continuation_ids(tok, prompt, obj)[0]])

    plain, icl, top = [], [], 0
    for rec in main:
        r = EditRequest.from_record(rec)
        prefixed = ICL_PREFIX.format(r.text, r.target_new) + r.text
        plain.append(p_first(r.text, r.target_new))
        icl.append(p_first(prefixed, r.target_new))
        top += wf.top_tokens_match(model, tok, prefixed, r.target_new)
    n = max(1, len(main))
    return {"n": len(main), "p_new_plain": sum(plain) / n, "p_new_in_context": sum(icl) / n, "top_in_context": top}


def claims(out: dict) -> list[str]:
    """The paper's two claims, judged on the measured summaries (x100)."""
    g = lambda ed, k, when="post": out[ed]["summary"][when].get(k, float("nan"))  # noqa: E731
    lines = []
    for base in ("ft_l", "rome", "memit"):
        if base not in out:
            continue
        drop = g(base, "overfit_EOS_mean", "pre") - g(base, "overfit_EOS_mean")
        took = g(base, "efficacy") >= 50
        verdict = "yes" if took and drop > 0 else ("no (the edits did not take)" if not took else "no")
        lines.append(f"editing overfit exists for {base}: {verdict} -- efficacy {g(base, 'efficacy'):.1f}, mean EOS "
                     f"{g(base, 'overfit_EOS_mean', 'pre'):.1f} -> {g(base, 'overfit_EOS_mean'):.1f} (drop {drop:.1f}), "
                     f"DP on prefix distraction {g(base, 'prefix_distraction.DP', 'pre'):.3f} -> "
                     f"{g(base, 'prefix_distraction.DP'):.3f}")
    for base in ("rome", "memit"):
        lti = base + "_lti"
        if base not in out or lti not in out:
            continue
        gain = g(lti, "overfit_EOS_mean") - g(base, "overfit_EOS_mean")
        equal = abs(g(lti, "efficacy") - g(base, "efficacy")) <= 10
        verdict = "yes" if gain > 0 and equal else ("no (efficacy differs by > 10 points)" if not equal else "no")
        lines.append(f"LTI reduces overfit at equal efficacy for {base}: {verdict} -- mean EOS "
                     f"{g(base, 'overfit_EOS_mean'):.1f} -> {g(lti, 'overfit_EOS_mean'):.1f} ({gain:+.1f}), efficacy "
                     f"{g(base, 'efficacy'):.1f} -> {g(lti, 'efficacy'):.1f}, paraphrase {g(base, 'paraphrase'):.1f} -> "
                     f"{g(lti, 'paraphrase'):.1f}")
    return lines


def real_main(args) -> int:
    from lathe.jobs import edit as E
    from lathe.methods.editing.common import Resolver, load_or_compute_stats
    from lathe.platform.config import load_config
    from lathe.platform.runstore import markdown_table

    n = args.cases or (3 if args.quick else None)
    model, tok, main_recs, subj_recs, info, texts = real_setup(n, (max(1, n // 2) + (1 if args.quick else 0)) if n else None,
                                                               args.model_path)
    recs = [("main", r) for r in main_recs] + [("subj", r) for r in subj_recs]
    uptake = teacher_uptake(model, tok, main_recs)
    print(f"LTI teacher (unedited model, ICL prefix): P(o*) {uptake['p_new_plain']:.3f} -> "
          f"{uptake['p_new_in_context']:.3f} in context; o* greedy on {uptake['top_in_context']}/{uptake['n']}", flush=True)
    out, t0 = {}, time.perf_counter()
    bench = ROOT / "runs" / "bench"
    for ed in args.editors.split(","):
        cfg = load_config(ROOT / "configs" / "edit" / f"{ed}_real.yaml", real_overrides(args.model_path))
        layers = E._layers(cfg.editor, cfg.options, E.pretrained_model_dir(cfg))
        t = time.perf_counter()
        stats = load_or_compute_stats(model, tok, Resolver.of(model), layers, texts, cfg.stats.n_samples,
                                      ROOT / "runs" / "cache" / "stats", cfg.seed) if layers else {}
        t_stats = time.perf_counter() - t
        w = E.EditWorker("", cfg.editor, cfg.options, stats, args.threads, cfg.seed, loaded=(model, tok))
        t = time.perf_counter()
        rows = w.run_batches([[r] for r in recs], check_restore=len(recs), gen_log=0)
        s = E.summarize(rows)
        out[ed] = {"summary": s, "wall_s": time.perf_counter() - t, "stats_s": t_stats, "cases": len(rows),
                   "mean_edit_s": sum(r["edit_s"] for r in rows) / len(rows), "layers": layers}
        post = s["post"]
        print(f"{ed:10s} efficacy {post.get('efficacy', 0):5.1f} paraphrase {post.get('paraphrase', 0):5.1f} "
              f"overfit EOS {post['overfit_EOS_mean']:5.1f} (pre {s['pre']['overfit_EOS_mean']:5.1f})  "
              f"{out[ed]['wall_s']:.1f}s ({out[ed]['mean_edit_s']:.1f}s/edit; stats {t_stats:.1f}s)", flush=True)
        bench.mkdir(parents=True, exist_ok=True)  # partial results survive an interrupted run
        (bench / "evoke_lti_real.partial.json").write_text(json.dumps(out, indent=1, default=float))
    columns = {"unedited": next(iter(out.values()))["summary"]["pre"]}
    columns.update({ed: r["summary"]["post"] for ed, r in out.items()})
    table = E.task_table(columns)
    points = {"unedited": (columns["unedited"].get("efficacy", 0), columns["unedited"]["overfit_EOS_mean"])}
    points.update({ed: (s.get("efficacy", 0), s["overfit_EOS_mean"]) for ed, s in columns.items() if ed != "unedited"})
    E.eos_efficacy_plot(bench / "evoke_lti_real.png", points,
                        "EVOKE (SmolLM2-135M-Instruct, world facts): EOS vs efficacy")
    verdicts = claims(out)
    (bench / "evoke_lti_real.json").write_text(json.dumps(
        {"quick": args.quick, "probe": info, "teacher_uptake": uptake, "main_cases": len(main_recs), "subj_cases": len(subj_recs),
         "results": out, "table": table, "claims": verdicts}, indent=1, default=float))
    (bench / "evoke_lti_real.md").write_text(table + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    print(table)
    print(f"total {time.perf_counter() - t0:.1f}s; {len(main_recs)} main + {len(subj_recs)} subject-specificity cases")
    for v in verdicts:
        print(v)
    g = lambda ed, k: out[ed]["summary"]["post"].get(k, float("nan")) if ed in out else float("nan")  # noqa: E731
    print(f"mean EOS ratio with/without LTI: ROME-LTI/ROME x{g('rome_lti', 'overfit_EOS_mean') / max(g('rome', 'overfit_EOS_mean'), 1e-9):.2f}, "
          f"MEMIT-LTI/MEMIT x{g('memit_lti', 'overfit_EOS_mean') / max(g('memit', 'overfit_EOS_mean'), 1e-9):.2f}")
    targets = lti_targets(out)
    if not targets:
        targets = {"--editors includes a base editor and its LTI variant (rome,rome_lti or memit,memit_lti)": False}
    return verdict(targets, args.no_enforce)


if __name__ == "__main__":
    sys.exit(main())
