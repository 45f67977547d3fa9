"""Overhead of lathe's Ray Train loop against a plain PyTorch loop, on the same SFT step.

(a) a plain loop in this process, run before Ray starts and again after it stops (the headline
compares with their mean, so load drifting on a shared machine hits both sides); (b) lathe's loop
on 1 Ray worker with the same threads, logging every step (log_every=1, the default);
(c) lathe's loop on 2 workers vs 1, 1 thread each (full mode only: --quick prints the headline,
saving two Ray Train start-ups of ~20 s each on 2 cores). Tokens/s past warm-up (median over
5-step windows): the warm-up also covers the actors Ray Train starts beside the first steps (its
dataset manager imports Ray Data: ~3 s of CPU), a fixed cost per job, reported apart as the wall
time of the whole Ray run against the plain loop's.
    python benchmarks/train_overhead.py [--quick]            # tiny-1m, full fine-tuning
    python benchmarks/train_overhead.py --quick --smollm2    # the realistic step: SmolLM2-135M + LoRA r=16
Target: (b)/(a) >= 0.9 (exit 1 when missed; --no-enforce only reports). Last line: the headline ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import add_enforce, parser, save, verdict  # noqa: E402

from lathe.data import qa  # noqa: E402
from lathe.jobs.sft import SFTTask  # noqa: E402
from lathe.jobs.trainer import (epoch_batches, make_optimizer, make_schedule, run_training,  # noqa: E402
                                total_steps)
from lathe.platform.config import ModelConfig, RayConfig, TrainConfig  # noqa: E402
from lathe.platform.runtime import ray_session  # noqa: E402
from lathe.platform.zoo import resolve_source  # noqa: E402


def plain_loop(task: SFTTask, train: TrainConfig, warmup: int, threads: int) -> float:
    """The same steps as lathe's loop, written as the usual single-process PyTorch loop."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    built = task.build()
    model = built.model
    model.train()
    n = len(built.dataset)
    steps = total_steps(n, train, 1)
    opt = make_optimizer(model, train)
    sched = make_schedule(opt, train, steps)
    batches, epoch = [], 0
    while len(batches) < steps:  # the loop's epochs, reshuffled each, for as many steps as it runs
        batches += epoch_batches(n, train.batch_size, epoch, 0, 0, 1)
        epoch += 1
    marks = [(0.0, time.perf_counter())]  # (tokens seen, time) after each step
    for step in range(steps):
        batch = built.collate([built.dataset[j] for j in batches[step]])
        loss, metrics = task.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        marks.append((marks[-1][0] + float(metrics["tokens"]), time.perf_counter()))
    return steady_rate(marks[1:], warmup)


def ray_loop(task: SFTTask, train: TrainConfig, warmup: int, workers: int, cpus: float, storage: Path) -> float:
    out = run_training(task, train, RayConfig(num_workers=workers, cpus_per_worker=cpus, use_gpu=False), storage)
    recs = sorted({r["step"]: r for r in out.metrics if "loss" in r}.values(), key=lambda r: r["step"])
    return steady_rate([(r["tokens_seen"], r["elapsed_s"]) for r in recs], warmup)


def steady_rate(marks: list[tuple[float, float]], warmup: int) -> float:
    """Tokens/s past warm-up: the median over windows of 5 steps, so that a hiccup of the
    shared machine in one window does not decide the result."""
    marks = marks[warmup - 1:]
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(marks, marks[5:]) if b[1] > a[1]]
    return statistics.median(rates)


def main() -> int:
    p = add_enforce(parser(__doc__))
    p.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct with LoRA r=16 instead of a tiny preset")
    args = p.parse_args()
    rows = qa.generate(512 if args.quick else 2048, seed=0)
    if args.smollm2:
        preset, steps, warmup, batch = "smollm2-135m-instruct", (40 if args.quick else 80), 15, 8
        method, lr = "lora", 2e-4
        adapter = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"]}
    else:
        preset, steps, warmup, batch = ("tiny-1m", 150, 50, 16) if args.quick else ("tiny-5m", 240, 60, 16)
        method, adapter, lr = "full", {}, 1e-3
    model_cfg = ModelConfig(preset=preset, tokenizer_vocab=1024)
    source = resolve_source(model_cfg, [r["question"] + " " + r["answer"] for r in rows], seed=0)
    task = SFTTask(source, rows, max_length=64, method=method, adapter=adapter)
    train = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, checkpoint_every=10**6, log_every=1,
                        precision="fp32")
    threads = max(1, min(2, os.cpu_count() or 1))
    tmp = Path(args.out) / "train_overhead_ckpt"
    t = time.perf_counter()
    plain_before = plain_loop(task, train, warmup, threads)
    plain_wall = time.perf_counter() - t
    with ray_session(num_cpus=4):
        # the same plain loop while Ray's own processes (GCS, raylet, idle workers) share the CPUs
        plain_ray_up = plain_loop(task, train, warmup, threads)
        t = time.perf_counter()
        one = ray_loop(task, train, warmup, 1, threads, tmp / f"one-{time.time_ns()}")
        ray_wall = time.perf_counter() - t
        if not args.quick:  # each Ray Train start costs ~20 s on 2 cores; --quick keeps the headline only
            one_1t = ray_loop(task, train, warmup, 1, 1, tmp / f"one1-{time.time_ns()}")
            two = ray_loop(task, train, warmup, 2, 1, tmp / f"two-{time.time_ns()}")
    plain_after = plain_loop(task, train, warmup, threads)
    plain = (plain_before + plain_after) / 2
    result = {"preset": preset, "steps": steps, "warmup": warmup, "threads": threads,
              "plain_before_tokens_per_s": plain_before, "plain_after_tokens_per_s": plain_after,
              "load_avg_1m": os.getloadavg()[0],
              "plain_tokens_per_s": plain, "lathe_1worker_tokens_per_s": one, "ratio_lathe_vs_plain": one / plain,
              "plain_with_ray_up_tokens_per_s": plain_ray_up, "ratio_lathe_vs_plain_ray_up": one / plain_ray_up,
              "plain_wall_s": plain_wall, "lathe_1worker_wall_s": ray_wall}
    print(f"{'setting':<36}{'tokens/s':>12}")
    print(f"{'(a) plain PyTorch, before / after':<36}{plain_before:>12.0f}{plain_after:>10.0f}")
    print(f"{'(a) the same, Ray running idle':<36}{plain_ray_up:>12.0f}")
    print(f"{'(b) lathe Ray Train, 1 worker':<36}{one:>12.0f}")
    print(f"wall time of the whole run ({steps} steps, model build and start-up included): plain {plain_wall:.1f} s, "
          f"lathe on Ray Train {ray_wall:.1f} s")
    if not args.quick:
        result.update({"lathe_1worker_1thread_tokens_per_s": one_1t, "lathe_2workers_1thread_tokens_per_s": two,
                       "scaling_2_vs_1": two / one_1t})
        print(f"{'(c) lathe, 1 worker x 1 thread':<36}{one_1t:>12.0f}")
        print(f"{'(c) lathe, 2 workers x 1 thread':<36}{two:>12.0f}")
        print(f"scaling 2 workers vs 1 (1 thread each): {two / one_1t:.2f}x")
    print(f"saved {save('train_overhead', args.out, result)}")
    status = verdict({"lathe 1 worker >= 0.9x the plain loop's tokens/s": one / plain >= 0.9}, args.no_enforce)
    print(f"lathe/plain tokens/s ratio ({preset}, {method}): {one / plain:.3f} (target >= 0.9)")
    return status


if __name__ == "__main__":
    sys.exit(main())
