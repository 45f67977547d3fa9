"""TOFU evaluation throughput: the batched evaluator (length-sorted batches for every NLL,
left-padded batched greedy generation) against a naive loop that evaluates one sample at a
time (batch size 1 for every forward pass and every generation), on the same model and rows.

    .venv/bin/python benchmarks/tofu_eval_speed.py            # tiny-5m, 40 forget + 3×40 utility rows
    .venv/bin/python benchmarks/tofu_eval_speed.py --quick    # tiny-1m, 20 rows per set, shorter generations (< 60 s on 2 cores)

Prints a table and, last, the headline speed-up; writes runs/bench/tofu_eval_speed-<time>.json.
Target: batched ≥ 5× naive with the same per-sample losses (max |ΔL| ≤ 1e-4); exit 1 when missed,
`--no-enforce` only reports.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import add_enforce, parser, save, verdict  # noqa: E402

from lathe.data.tofu import tofu_synthetic  # noqa: E402
from lathe.eval import tofu as te  # noqa: E402
from lathe.platform.zoo import build_tiny, train_tokenizer  # noqa: E402


def main() -> int:
    ap = add_enforce(parser(__doc__))
    ap.add_argument("--preset", default=None)
    ap.add_argument("--rows", type=int, default=None, help="rows per evaluation set")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: steadiest on a shared CPU; both evaluators use the same)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, args.threads))
    preset = args.preset or ("tiny-1m" if args.quick else "tiny-5m")
    n = args.rows or (20 if args.quick else 40)
    new_tokens = args.max_new_tokens or (12 if args.quick else 32)
    torch.manual_seed(0)
    ds = tofu_synthetic(seed=0, n_authors=20, qa_per_author=20, n_real_authors=n, n_world_facts=n)
    sets = {"forget10_perturbed": ds.get("forget10_perturbed")[:n], "retain_perturbed": ds.get("retain_perturbed")[:n],
            "real_authors_perturbed": ds.get("real_authors_perturbed")[:n],
            "world_facts_perturbed": ds.get("world_facts_perturbed")[:n]}
    texts = [t for rows in ds.configs.values() for r in rows for t in (r["question"], r["answer"])]
    tok = train_tokenizer(texts, vocab_size=1024)
    model = build_tiny(preset, vocab_size=len(tok), seed=0).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    samples = sum(len(v) for v in sets.values())
    sequences = sum(len(r["perturbed_answer"]) + (2 if "paraphrased_answer" in r else 1)
                    for v in sets.values() for r in v)

    def timed(batch_size: int) -> tuple[float, dict]:
        cfg = te.TofuEvalConfig(batch_size=batch_size, max_new_tokens=new_tokens)
        te.evaluate_set(model, tok, sets["world_facts_perturbed"][:2], "world", cfg)  # warm-up
        t0 = time.perf_counter()
        res = te.evaluate_model(model, tok, sets, cfg, "forget10", show=False)
        return time.perf_counter() - t0, res

    t_batched, res_b = timed(args.batch_size)
    t_naive, res_n = timed(1)
    # same numbers either way (per-sample values do not depend on batch composition)
    diff = max(abs(a["gt_loss"] - b["gt_loss"]) for k in res_b["sets"]
               for a, b in zip(res_b["sets"][k]["rows"], res_n["sets"][k]["rows"]))
    out = {"preset": preset, "device": device, "samples": samples, "nll_sequences": sequences,
           "max_new_tokens": new_tokens, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
           "batched_s": t_batched, "naive_s": t_naive,
           "batched_samples_per_s": samples / t_batched, "naive_samples_per_s": samples / t_naive,
           "speedup": t_naive / t_batched, "max_abs_loss_diff": diff, "quick": args.quick}
    print(f"json: {save('tofu_eval_speed', args.out, out)}")
    print(f"| evaluator | wall s | samples/s |\n|---|---|---|\n| batched (bs={args.batch_size}) | {t_batched:.2f} | "
          f"{out['batched_samples_per_s']:.2f} |\n| naive one-at-a-time | {t_naive:.2f} | {out['naive_samples_per_s']:.2f} |")
    print(f"{samples} samples ({sequences} scored sequences + {samples} greedy generations of ≤{new_tokens} tokens), "
          f"{preset} on {device}; max |ΔL| batched vs naive = {diff:.2e}")
    print(f"tofu eval throughput: batched {out['batched_samples_per_s']:.1f} samples/s vs naive "
          f"{out['naive_samples_per_s']:.1f} samples/s = {out['speedup']:.1f}x (target >= 5x)")
    return verdict({"batched >= 5x naive samples/s": out["speedup"] >= 5,
                    "batched and naive losses agree (max |dL| <= 1e-4)": diff <= 1e-4}, args.no_enforce)


if __name__ == "__main__":
    sys.exit(main())
