"""MACPO on the synthetic preference task: the student's reward per round for MACPO K=3 and K=1,
the weak-to-strong SFT baseline (the student after initialisation = round 0), and each ablation
(−MP, −HN, −IW), per seed; then whether each of the paper's claims holds. Engine throughput
(tokens/s, share of round time generating / scoring / training) comes from the same runs.

The K=3 run's initialisation (teacher SFT, student SFT, negative agents) is shared by its
ablations (`fork_init`), which differ only in their rounds.

Full mode: 2 seeds, T=3, the real SmolLM2-135M-Instruct student with LoRA, weak teachers tiny-1m,
tiny-5m and tiny-20m trained by the platform. --quick: 1 seed, T=2, small sizes, a tiny-5m student
(the real student does not fit in a few minutes on 2 CPU cores). On a CUDA GPU it also times the
vLLM engine against transformers generate at batch 32 on the student (target >= 5x).
    python benchmarks/macpo.py [--quick] [--seeds 0 1] [--student PRESET] [--no-enforce]
Last line: the K=3 student's reward gain over the SFT baseline after the last round (or, on a
GPU, the vLLM/transformers throughput ratio, the enforced target).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import parser, save  # noqa: E402

from lathe.jobs.macpo import MacpoRun  # noqa: E402
from lathe.jobs.macpo.pipeline import fork_init  # noqa: E402
from lathe.platform.config import load_config  # noqa: E402
from lathe.platform.runstore import RunDir, markdown_table  # noqa: E402
from lathe.platform.runtime import ray_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = {"-MP": ["ablations.no_mp=true"], "-HN": ["ablations.no_hn=true"], "-IW": ["ablations.no_iw=true"]}


def sizes(quick: bool, student: str) -> list[str]:
    if quick:
        return ["rounds=2", "data.n_train=128", "data.n_test=32", "n_prompts=24", "n_init_rows=48",
                "n_eval_prompts=16", "generation.max_new_tokens=24", "generation.eval_max_new_tokens=24",
                "sft.epochs=4", f"student.model.preset={student}"]
    out = ["rounds=3", "data.n_train=1024", "data.n_test=128", "n_prompts=96", "n_init_rows=256",
           "n_eval_prompts=64", f"student.model.preset={student}"]
    if student.startswith("smollm2"):
        out += ["student.method=lora", "student.model.tokenizer_vocab=2048"]
    return out


def teachers(k: int, quick: bool) -> str:
    presets = ["tiny-1m", "tiny-1m", "tiny-1m"] if quick else ["tiny-1m", "tiny-5m", "tiny-20m"]
    archs = ["llama", "qwen2", "mistral"]
    specs = ", ".join(f"{{name: teacher{i}, model: {{preset: {presets[i]}, architecture: {archs[i]}, "
                      f"tokenizer_vocab: 1024}}, method: full}}" for i in range(k))
    return f"teachers=[{specs}]"


def run_one(config: str, overrides: list[str], out_root: Path, fork_from: Path | None = None) -> tuple[dict, Path]:
    cfg = load_config(ROOT / config, [f"output_root={out_root}", *overrides])
    run = RunDir.create(cfg)
    if fork_from is not None:
        fork_init(fork_from, run.path)
    return MacpoRun(cfg, run, show=False).execute(), run.path


def student_curve(res: dict) -> list[float]:
    name = res["agents"][-1]
    return [r["reward"] for r in sorted(res["rewards"], key=lambda r: r["round"]) if r["agent"] == name]


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


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--student", default=None)
    p.add_argument("--no-enforce", action="store_true")
    args = p.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    student = args.student or ("tiny-5m" if args.quick else "smollm2-135m-instruct")
    out_root = Path(args.out) / f"macpo-{time.strftime('%Y%m%d-%H%M%S')}"
    table, timing, t0 = [], [], time.perf_counter()
    ratio_gpu = None
    with ray_session(num_cpus=max(4, os.cpu_count() or 1)):
        for seed in seeds:
            base = sizes(args.quick, student) + [f"seed={seed}"]
            res3, dir3 = run_one("configs/align/macpo.yaml", base + [teachers(3, args.quick)], out_root)
            curves = {"MACPO K=3": student_curve(res3)}
            timing += [{"seed": seed, "config": "MACPO K=3", **t} for t in res3["timing"]]
            for label, extra in ABLATIONS.items():
                res, _ = run_one("configs/align/macpo.yaml", base + [teachers(3, args.quick)] + extra, out_root,
                                 fork_from=dir3)
                curves[f"MACPO K=3 {label}"] = student_curve(res)
            res1, _ = run_one("configs/align/macpo_k1.yaml", base + [teachers(1, args.quick)], out_root)
            curves["MACPO K=1"] = student_curve(res1)
            curves["weak-to-strong SFT"] = [curves["MACPO K=3"][0]] * len(curves["MACPO K=3"])
            for label, ys in curves.items():
                table.append({"seed": seed, "config": label, **{f"round{t}": y for t, y in enumerate(ys)}})
            if ratio_gpu is None:
                ratio_gpu = gpu_engine_ratio(res3["checkpoints"][f"round_{res3['rounds']}"][res3["agents"][-1]])

    def curve(label: str, seed: int) -> list[float]:
        row = next(r for r in table if r["config"] == label and r["seed"] == seed)
        return [row[k] for k in sorted(k for k in row if k.startswith("round"))]

    claims = []
    for seed in seeds:
        k3, k1 = curve("MACPO K=3", seed), curve("MACPO K=1", seed)
        claims.append({"seed": seed, "claim": "K=3: the student improves every round",
                       "holds": all(b > a for a, b in zip(k3, k3[1:]))})
        claims.append({"seed": seed, "claim": "K=1: the student degrades after round 2",
                       "holds": len(k1) > 3 and k1[3] < k1[2] if len(k1) > 3 else None})
        for label in ABLATIONS:
            ab = curve(f"MACPO K=3 {label}", seed)
            claims.append({"seed": seed, "claim": f"{label} hurts (final reward below full MACPO)",
                           "holds": ab[-1] < k3[-1]})
    gain = sum(curve("MACPO K=3", s)[-1] - curve("MACPO K=3", s)[0] for s in seeds) / len(seeds)
    result = {"quick": args.quick, "seeds": seeds, "student": student, "table": table, "claims": claims,
              "timing": timing, "vllm_over_transformers": ratio_gpu, "wall_s": time.perf_counter() - t0,
              "runs": str(out_root)}
    path = save("macpo", args.out, result)
    print("Student mean reward (rule reward, greedy, test prompts) per round:")
    print(markdown_table(table))
    print("\nThe paper's claims on this task (None: not testable with these rounds):")
    print(markdown_table(claims))
    print("\nEngine throughput and time shares (K=3 runs):")
    print(markdown_table(timing))
    print(f"\nresults: {path}")
    if ratio_gpu is not None:
        print(f"vLLM / transformers generate tokens/s at batch 32 on the student: {ratio_gpu:.2f} (target >= 5)")
        return 0 if ratio_gpu >= 5 or args.no_enforce else 1
    print(f"macpo K=3 student reward gain over weak-to-strong SFT after the last round: {gain:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
