"""DPO step time: lathe's DPO step (DPOTask's loss, backward, clip, AdamW — what the training loop
runs per step) against TRL 1.16's DPOTrainer step, same model, same pairs, same batch size, both
with precomputed reference log-probs, in one run. Median over steps past warm-up; the two are
run in alternating blocks so machine load hits both alike.
    python benchmarks/dpo_speed.py [--quick] [--model tiny-5m|smollm2-135m-instruct] [--no-enforce]
Target: ours / TRL <= 1.1. Last line: that ratio.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import add_enforce, parser, save, verdict  # noqa: E402

from lathe.data import preference as P  # noqa: E402
from lathe.jobs.dpo import DPOTask  # noqa: E402
from lathe.jobs.trainer import make_optimizer  # noqa: E402
from lathe.platform.config import ModelConfig, TrainConfig  # noqa: E402
from lathe.platform.zoo import resolve_source  # noqa: E402


def ours(task: DPOTask, steps: int, batch: int, lr: float) -> list[float]:
    built = task.build()
    model = built.model
    model.train()
    opt = make_optimizer(model, TrainConfig(lr=lr))
    times = []
    for s in range(steps):
        items = [built.dataset[(s * batch + j) % len(built.dataset)] for j in range(batch)]
        t0 = time.perf_counter()
        b = built.collate(items)
        loss, _ = task.loss(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def trl(model, tok, rows, steps: int, batch: int, lr: float) -> list[float]:
    from transformers import TrainerCallback
    from trl_parity import trl_trainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as d:
        tr = trl_trainer(model, tok, rows, d, beta=0.1, batch_size=batch, lr=lr, max_steps=steps, precompute=True)
        tr.args.max_grad_norm = 1.0
        tr.add_callback(Clock())
        tr.train()
    return times


def main() -> int:
    p = add_enforce(parser(__doc__.splitlines()[0]))
    p.add_argument("--model", default=None, help="preset (default tiny-5m; tiny-1m with --quick)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    preset = args.model or ("tiny-1m" if args.quick else "tiny-5m")
    steps, batch, warm, blocks = (8, 4, 2, 2) if args.quick else (20, 8, 3, 3)
    rows = P.hh_rows(P.preference_synthetic(0, steps * batch, "hh"), "synthetic").rows  # one pass, no repeats
    source = resolve_source(ModelConfig(preset=preset, tokenizer_vocab=1024),
                            [r["prompt"] + r["chosen"] + r["rejected"] for r in rows], 0)
    model, tok = source.load()
    task = DPOTask(source, rows, 128, 64, "full", {}, beta=0.1, precompute=True)
    a, b = [], []
    for _ in range(blocks):
        torch.manual_seed(0)
        a += ours(task, steps, batch, 1e-5)[warm:]
        b += trl(copy.deepcopy(model), tok, rows, steps, batch, 1e-5)[warm:]
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = ma / mb
    result = {"model": preset, "batch_pairs": batch, "steps_per_block": steps, "blocks": blocks,
              "lathe_step_s": ma, "trl_step_s": mb, "ratio": ratio, "target": 1.1,
              "threads": torch.get_num_threads()}
    path = save("dpo_speed", args.out, result)
    print(f"model {preset}, batch {batch} pairs: lathe {ma * 1000:.1f} ms/step, TRL DPOTrainer {mb * 1000:.1f} "
          f"ms/step ({path})")
    code = verdict({f"lathe DPO step <= 1.1x TRL DPOTrainer's ({ratio:.3f})": ratio <= 1.1}, args.no_enforce)
    print(f"dpo step time lathe/TRL: {ratio:.3f} (target <= 1.1)")
    return code


if __name__ == "__main__":
    sys.exit(main())
