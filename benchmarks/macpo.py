"""MACPO on the synthetic preference task: the student's reward per round for MACPO K=3 and K=1,
the weak-to-strong SFT baseline (the student after initialisation = round 0), and each ablation
(−MP, −HN, −IW), per seed; then whether each of the paper's claims holds. Engine throughput
(tokens/s, share of round time generating / scoring / training) comes from the same runs.

The strong student is the real SmolLM2-135M-Instruct preset with LoRA; the weak teachers are tiny
presets of three sizes (and three architectures) trained from scratch by the platform. The K=3
run's initialisation (teacher SFT, student SFT, negative agents, round 0) is shared by its
ablations (`fork_init`), which differ only in their rounds; the K=1 run shares teacher0's own
initialisation (same spec and seed) and redoes the student's.

Full mode: 2 seeds, T=3, 96 Q_w2s prompts, 64 test prompts, 48 new tokens.
--quick: 2 seeds, T=2 for K=3 and its ablations, T=3 for K=1 (its claim is about round 3),
8 Q_w2s prompts, 8 test prompts, 16 new tokens, the student's SFT capped at 3 LoRA steps.
Every SFT/DPO update is a Ray Train run, so the wall time is about 40 training runs per seed.
On a CUDA GPU it also times the vLLM engine against transformers generate at batch 32 on the
student (target >= 5x).
    python benchmarks/macpo.py [--quick] [--seeds 0 1] [--student PRESET] [--no-enforce]
Enforced: every run finishes all its rounds with every agent updated and each update's reference
equal to its round-start weights (zero failed rounds); on a GPU also the vLLM ratio. The paper's
claims are reported, not enforced (they are claims about 7B-70B models on HH-RLHF).
Last line: on a GPU the vLLM/transformers ratio, else the K=3 student's mean reward gain over the
weak-to-strong SFT baseline after the last round.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import add_enforce, parser, save, verdict  # noqa: E402

from lathe.jobs.macpo import MacpoRun  # noqa: E402
from lathe.jobs.macpo.pipeline import fork_init  # noqa: E402
from lathe.platform.config import load_config  # noqa: E402
from lathe.platform.runstore import RunDir, markdown_table  # noqa: E402
from lathe.platform.runtime import ray_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# −IW first: it trains only the student, so an interrupted run still has it
ABLATIONS = {"-IW": ["ablations.no_iw=true"], "-MP": ["ablations.no_mp=true"], "-HN": ["ablations.no_hn=true"]}


def sizes(quick: bool) -> list[str]:
    if quick:
        return ["data.n_train=256", "data.n_test=32", "data.max_prompt=96", "data.max_response=32",
                "n_prompts=8", "n_init_rows=96", "n_eval_prompts=8", "generation.max_new_tokens=16",
                "generation.eval_max_new_tokens=16", "generation.batch_size=8", "sft.epochs=8",
                "sft.batch_size=16", "dpo_train.batch_size=4", "dpo_train.epochs=2"]
    return ["data.n_train=1024", "data.n_test=128", "data.max_prompt=128", "data.max_response=64",
            "n_prompts=96", "n_init_rows=256", "n_eval_prompts=64", "generation.max_new_tokens=48",
            "generation.eval_max_new_tokens=48", "sft.epochs=8", "dpo_train.batch_size=16"]


def student(preset: str, quick: bool) -> list[str]:
    if not preset.startswith("smollm2"):
        return [f"student.model.preset={preset}", "student.model.tokenizer_vocab=1024", "student.method=full"]
    # the real model with LoRA (spec: r 16, α 32, all linear projections); the spec's LoRA lrs
    # (2e-4 SFT, 5e-6 DPO) barely move it in a handful of steps, so the benchmark raises them.
    return [f"student.model.preset={preset}", "student.method=lora", "student.sft_lr=1e-3", "student.dpo_lr=2e-4",
            f"student.sft_max_steps={3 if quick else 24}"]


def teachers(k: int, quick: bool) -> str:
    """Weak teachers of three sizes and architectures: tiny-1m cut to 2 layers, tiny-1m, tiny-5m
    (full mode: tiny-1m, tiny-5m, tiny-20m)."""
    presets = ["tiny-1m", "tiny-1m", "tiny-5m"] if quick else ["tiny-1m", "tiny-5m", "tiny-20m"]
    extra = ["config_overrides: {num_hidden_layers: 2}, ", "", ""] if quick else ["", "", ""]
    archs = ["llama", "qwen2", "mistral"]
    specs = ", ".join(f"{{name: teacher{i}, model: {{preset: {presets[i]}, architecture: {archs[i]}, {extra[i]}"
                      f"tokenizer_vocab: 1024}}, method: full}}" for i in range(k))
    return f"teachers=[{specs}]"


def run_one(config: str, overrides: list[str], out_root: Path, fork_from: Path | None = None,
            fork_agents: list[str] | None = None) -> tuple[dict | None, Path | None, str | None]:
    """(results, run dir, error): a failed run is recorded, not fatal, so the table still prints."""
    run = None
    try:
        cfg = load_config(ROOT / config, [f"output_root={out_root}", *overrides])
        run = RunDir.create(cfg)
        if fork_from is not None:
            fork_init(fork_from, run.path, fork_agents)
        return MacpoRun(cfg, run, show=False).execute(), run.path, None
    except Exception as e:  # noqa: BLE001 - reported as a failed run below
        traceback.print_exc()
        return None, run.path if run else None, f"{type(e).__name__}: {e}".splitlines()[0][:300]


def student_curve(res: dict) -> list[float]:
    name = res["agents"][-1]
    return [r["reward"] for r in sorted(res["rewards"], key=lambda r: r["round"]) if r["agent"] == name]


def failed_rounds(res: dict | None, rounds: int) -> list[str]:
    """Why each round of a run failed: the run raised, a round is missing, an updated agent was
    skipped (no pairs left) or trained against a reference other than its round-start weights."""
    if res is None:
        return [f"round{t}: run failed" for t in range(1, rounds + 1)]
    bad = []
    done = {r["round"] for r in res["rewards"]}
    bad += [f"round{t}: not evaluated" for t in range(1, rounds + 1) if t not in done]
    for c in res["reference_checks"]:
        if not c["pairs"]:
            bad.append(f"round{c['round']}: {c['agent']} had no pairs (no update)")
        elif not c["reference_is_round_start"]:
            bad.append(f"round{c['round']}: {c['agent']}'s reference was not its round-start weights")
    return bad


def gpu_engine_ratio(student_dir: str) -> float | None:
    """vLLM / transformers generation tokens/s at batch 32 on the student (CUDA only)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        import vllm  # noqa: F401
    except Exception:
        return None
    import ray

    from lathe.jobs.macpo.engines import EngineActor

    prompts = [f"\n\nHuman: How do I bake bread number {i}?\n\nAssistant:" for i in range(32)]
    rates = {}
    for engine in ("transformers", "vllm"):
        act = EngineActor.options(num_gpus=0.5).remote("bench", engine, 1, {"gpu_memory_utilization": 0.3})
        ray.get(act.load.remote(student_dir))
        ray.get(act.generate.remote(prompts, 16, 0.7, 0.9, 0, 32, 512))  # warm-up
        r = ray.get(act.generate.remote(prompts, 128, 0.7, 0.9, 1, 32, 512))
        rates[engine] = r["tokens"] / r["seconds"]
        ray.kill(act)
    return rates["vllm"] / rates["transformers"]


def strictly_up(ys: list[float]) -> bool:
    return all(b > a for a, b in zip(ys, ys[1:]))


def main() -> int:
    p = add_enforce(parser(__doc__.splitlines()[0]))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--student", default="smollm2-135m-instruct", help="student preset (default: the real model)")
    args = p.parse_args()
    T3, T1 = (2, 3) if args.quick else (3, 3)
    out_root = Path(args.out) / f"macpo-{time.strftime('%Y%m%d-%H%M%S')}"
    table, timing, failures, errors, t0 = [], [], [], [], time.perf_counter()
    ratio_gpu = None

    def note(seed: int, label: str, res: dict | None, err: str | None, wall: float) -> None:
        """One line per finished run, printed and appended to progress.jsonl (survives an interrupt)."""
        line = {"seed": seed, "config": label, "student_curve": student_curve(res) if res else None,
                "error": err, "wall_s": round(wall, 1)}
        out_root.mkdir(parents=True, exist_ok=True)
        with (out_root / "progress.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    with ray_session(num_cpus=max(4, os.cpu_count() or 1)):
        for seed in args.seeds:
            base = sizes(args.quick) + student(args.student, args.quick) + [f"seed={seed}"]
            k3 = base + [teachers(3, args.quick), f"rounds={T3}"]
            runs: dict[str, tuple] = {}
            ts = time.perf_counter()
            res3, dir3, err = run_one("configs/align/macpo.yaml", k3, out_root)
            runs["MACPO K=3"] = (res3, T3, err, time.perf_counter() - ts)
            note(seed, "MACPO K=3", res3, err, runs["MACPO K=3"][3])
            for label, extra in ABLATIONS.items():
                ts = time.perf_counter()
                res, _, err = run_one("configs/align/macpo.yaml", k3 + extra, out_root, fork_from=dir3) \
                    if res3 else (None, None, "the K=3 run it forks from failed")
                runs[f"MACPO K=3 {label}"] = (res, T3, err, time.perf_counter() - ts)
                note(seed, f"MACPO K=3 {label}", res, err, runs[f"MACPO K=3 {label}"][3])
            ts = time.perf_counter()
            res1, _, err = run_one("configs/align/macpo_k1.yaml", base + [teachers(1, args.quick), f"rounds={T1}"],
                                   out_root, fork_from=dir3 if res3 else None,
                                   fork_agents=["teacher0"] if res3 else None)
            runs["MACPO K=1"] = (res1, T1, err, time.perf_counter() - ts)
            note(seed, "MACPO K=1", res1, err, runs["MACPO K=1"][3])
            for label, (res, rounds, err, wall) in runs.items():
                ys = student_curve(res) if res else []
                table.append({"seed": seed, "config": label, "wall_s": round(wall, 1),
                              **{f"round{t}": (round(ys[t], 3) if t < len(ys) else None) for t in range(max(T3, T1) + 1)}})
                failures += [{"seed": seed, "config": label, "why": w} for w in failed_rounds(res, rounds)]
                if err:
                    errors.append({"seed": seed, "config": label, "error": err})
                if res:
                    timing += [{"seed": seed, "config": label, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                                  for k, v in t.items()}} for t in res["timing"]]
            if res3:
                table.append({"seed": seed, "config": "weak-to-strong SFT", "wall_s": None,
                              **{f"round{t}": round(student_curve(res3)[0], 3) for t in range(max(T3, T1) + 1)}})
                if ratio_gpu is None:
                    ratio_gpu = gpu_engine_ratio(res3["checkpoints"][f"round_{res3['rounds']}"][res3["agents"][-1]])
            # what is done so far survives an interrupted benchmark
            save("macpo-partial", args.out, {"seeds_done": args.seeds[: args.seeds.index(seed) + 1], "table": table,
                                             "timing": timing, "failed_rounds": failures, "errors": errors,
                                             "wall_s": time.perf_counter() - t0, "runs": str(out_root)})
            print(markdown_table([r for r in table if r["seed"] == seed]), flush=True)

    def curve(label: str, seed: int) -> list[float] | None:
        row = next((r for r in table if r["config"] == label and r["seed"] == seed), None)
        ys = [row[k] for k in sorted(k for k in row if k.startswith("round"))] if row else []
        ys = [y for y in ys if y is not None]
        return ys or None

    claims = []
    for seed in [*args.seeds, "mean"]:
        def c(label):
            if seed != "mean":
                return curve(label, seed)
            cs = [curve(label, s) for s in args.seeds]
            if any(x is None for x in cs):
                return None
            return [statistics.mean(v) for v in zip(*cs)]
        k3, k1 = c("MACPO K=3"), c("MACPO K=1")
        claims.append({"seed": seed, "claim": "K=3: the student improves every round",
                       "holds": strictly_up(k3) if k3 else None, "curve": k3})
        claims.append({"seed": seed, "claim": "K=1: the student degrades after round 2",
                       "holds": (k1[3] < k1[2]) if k1 and len(k1) > 3 else None, "curve": k1})
        for label in ABLATIONS:
            ab = c(f"MACPO K=3 {label}")
            claims.append({"seed": seed, "claim": f"{label} hurts (final student reward below full MACPO)",
                           "holds": (ab[-1] < k3[-1]) if ab and k3 else None,
                           "curve": ab})
    for cl in claims:
        cl["curve"] = " -> ".join(f"{y:.3f}" for y in cl["curve"]) if cl["curve"] else None
    finals = [curve("MACPO K=3", s) for s in args.seeds]
    gains = [ys[-1] - ys[0] for ys in finals if ys]
    gain = statistics.mean(gains) if gains else float("nan")
    result = {"quick": args.quick, "seeds": args.seeds, "student": args.student, "rounds": {"K=3": T3, "K=1": T1},
              "table": table, "claims": claims, "timing": timing, "failed_rounds": failures, "errors": errors,
              "vllm_over_transformers": ratio_gpu, "wall_s": time.perf_counter() - t0, "runs": str(out_root)}
    path = save("macpo", args.out, result)
    print(f"Student ({args.student}) mean rule reward of greedy answers on the test prompts, per round "
          "(round 0 = after initialisation = weak-to-strong SFT):")
    print(markdown_table(table))
    print("\nThe paper's claims on this task (None: not testable with these rounds, or a run failed):")
    print(markdown_table(claims))
    print("\nRound time split (generate/score/train/eval seconds, shares of the round) and generation tokens/s:")
    print(markdown_table(timing))
    if errors:
        print("\nFailed runs:")
        print(markdown_table(errors))
    print(f"\nwall {result['wall_s']:.0f} s; results: {path}")
    targets = {f"zero failed rounds ({len(failures)} failed)": not failures}
    if ratio_gpu is not None:
        targets[f"vLLM / transformers generate at batch 32 on the student >= 5 ({ratio_gpu:.2f})"] = ratio_gpu >= 5
    else:
        print("vLLM >= 5x transformers generate (GPU target): not checkable here (no CUDA GPU / vllm)")
    code = verdict(targets, args.no_enforce)
    if ratio_gpu is not None:
        print(f"vLLM / transformers generate tokens/s at batch 32 on the student: {ratio_gpu:.2f} (target >= 5)")
    else:
        print(f"macpo K=3 student reward gain over weak-to-strong SFT after the last round (mean of "
              f"{len(gains)} seeds): {gain:+.3f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
