"""PEFT step-time benchmark: forward+backward+AdamW step, ours vs baselines, printed as ratios.

  python benchmarks/peft_speed.py --quick     # tiny-20m at 2x32 tokens + a small layer sweep, CPU, < 60 s
  python benchmarks/peft_speed.py             # tiny-20m at 4x128 and 8x256 tokens, a wider random-init Llama,
                                              # a larger layer sweep; on a GPU also a 1B Llama in bf16 + MFU

Model-level ratios (step time ours / baseline; lower is better unless noted):
  lora_vs_hf_peft          our LoRA r=8 vs HF peft LoRA r=8                    target <= 1.05
  melora_loop_speedup      per-mini Python loop / our MELoRA (n=8)             report only (hidden by the base)
  layer_loop_speedup       the same on the adapter path alone, fewest tokens   target >= 3   (higher is better)
  melora_vs_lora_same_p    MELoRA n=8 r=1 vs LoRA r=1 (same trainable params)  target <= 1.05
  melora_einsum_vs_lora_same_p  the same with the einsum reference formulation  report only (the "before")
  aslora_vs_lora           ASLoRA r=8 (shared A, L slots) vs our LoRA r=8      target <= 1.1
  aslora_merged_vs_lora    ASLoRA r=8 merged to ceil(L/4) slots vs LoRA r=8    target <= 1.1
  aslora_schedule_vs_lora  ASLoRA r=8 over a run in which all L-K merges fire  target <= 1.1
                           (total time, steps interleaved one by one with LoRA r=8)
ASLoRA steps include its `after_step` hook (what the training loop runs: merge bookkeeping and
the refresh of merged-away rows); `aslora_schedule_vs_lora` passes the real step counter, so the
merges themselves (similarity, averaging, optimizer-state surgery) are inside the timed steps.
On a GPU: mfu_lora_r8 = model FLOPs / step time / the peak of the dtype run (bf16 for the 1B
Llama), with 4 FLOPs per frozen weight per token (forward + input gradient; no weight gradient)
and 6 per trainable one, plus attention's 12*L*seq*d; target >= 0.40 on the 1B Llama.

Exit status: 1 when a target is missed in any model run (`--no-enforce` only reports). The
headline (the last line) gives each ratio's worst value over all model runs.

Layer-level MELoRA sweep: the adapter path alone (fwd+bwd, input gradient on, as inside a model),
each exact formulation (einsum, bmm, mulsum, blockdiag; `melora.pick_formulation` picks one per
shape) and the per-mini loop, over token counts and (n, r); this is where the formulation is not
hidden by the frozen base model.

Timing: on CPU the default clock is the process's CPU time (`time.process_time`) with one torch
thread (`--threads 1`), so the numbers measure the work done and not the share of a busy, shared
machine we happened to get; `--clock wall --threads 2` gives wall time. On CUDA the clock is wall
time with synchronisation. Variants are interleaved round by round (drift hits all alike); each
variant's time is the minimum over rounds of the per-round median. Writes runs/bench/peft_speed-<time>.json.
The headline is the last line printed.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_enforce, parser, save, verdict  # noqa: E402

from lathe.methods import peft as P  # noqa: E402
from lathe.methods.peft.melora import MeloraLayer  # noqa: E402

CLOCK = time.process_time
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoopMelora(MeloraLayer):
    """Baseline: the per-mini Python loop of the official code (one A_i, B_i linear pair per mini),
    same parameters and the same result as the einsum path."""

    def adapter_out(self, name, x):
        a, b, n = self.melora_A[name], self.melora_B[name], self.n[name]
        di = self.in_features // n
        x = self.dropout[name](x)
        return torch.cat([F.linear(F.linear(x[..., i * di:(i + 1) * di], a[i]), b[i]) for i in range(n)],
                         -1) * self.scaling[name]


def build(kind: str, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lathe.platform.zoo import build_tiny

    if kind == "tiny-20m":
        return build_tiny("tiny-20m", vocab_size=8192, seed=0).to(device, dtype)
    shapes = {"wide": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                           num_key_value_heads=16, vocab_size=8192),
              "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                               num_key_value_heads=4, vocab_size=32000)}[kind]
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(LlamaConfig(**shapes, max_position_embeddings=2048)).to(dtype)


def make(variant: str, base, device):
    m = copy.deepcopy(base)
    if variant == "hf_peft_lora_r8":
        import peft

        return peft.get_peft_model(m, peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    if variant == "lora_r8":
        return P.get("lora").apply(m, {"r": 8, "target_modules": TARGETS})
    if variant == "lora_r1":
        return P.get("lora").apply(m, {"r": 1, "target_modules": TARGETS})
    if variant in ("melora_n8r1", "melora_loop_n8r1", "melora_einsum_n8r1"):
        m = P.get("melora").apply(m, {"r": 1, "n": 8, "target_modules": TARGETS})
        for _, layer in P.adapter_layers(m):
            if variant == "melora_loop_n8r1":
                layer.__class__ = LoopMelora
            elif variant == "melora_einsum_n8r1":  # the reference formulation (before the per-shape rule)
                layer.formulation = "einsum"
        return m
    if variant in ("aslora_r8", "aslora_merged_r8"):
        method = P.get("aslora")
        m = method.apply(m, {"r": 8, "target_modules": TARGETS, "total_steps": 1000})
        if variant == "aslora_merged_r8":  # merge every group down to ceil(L/4) slots before timing
            cont = m.lathe_aslora
            with torch.no_grad():
                for g in cont.groups.values():
                    g.B.normal_(0, 0.01)
            for key, g in cont.groups.items():
                while g.n_slots() > g.target:
                    method.merge_once(cont, key, g, None, step=0)
        return m
    raise ValueError(variant)


def aslora_schedule(base, ids, steps: int, device) -> dict:
    """ASLoRA r=8 over a run of `steps` optimizer steps whose schedule fires all L-K merges, each
    step timed with its after_step hook and the real step counter, interleaved step by step with
    LoRA r=8 on the same batch (load drift hits both). Totals, since merges are spikes."""
    method = P.get("aslora")
    models = {"lora_r8": make("lora_r8", base, device),
              "aslora": method.apply(copy.deepcopy(base), {"r": 8, "target_modules": TARGETS, "total_steps": steps,
                                                           "merge_start": 0.1, "merge_end": 0.9})}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3) for k, m in models.items()}
    total = {k: 0.0 for k in models}
    for step in range(1, steps + 1):
        for k, m in models.items():
            m.train()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = CLOCK()
            m(input_ids=ids, labels=ids).loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if k == "aslora":
                method.after_step(m, step, opts[k])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step > 1:  # step 1 warms both up
                total[k] += CLOCK() - t
    cont = models["aslora"].lathe_aslora
    merges = len(cont.events)
    want = sum(g.L - g.target for g in cont.groups.values())
    if merges != want:
        raise RuntimeError(f"the ASLoRA schedule fired {merges} merges, expected {want}")
    return {"steps": steps, "merges": merges, "lora_r8_total_s": total["lora_r8"], "aslora_total_s": total["aslora"],
            "ratio": total["aslora"] / total["lora_r8"]}


def peak_flops(dtype) -> float | None:
    """Dense peak of `dtype` on this GPU (PEAK_TFLOPS overrides); None when the GPU is not in the table."""
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    table = {"H100": {torch.bfloat16: 989, torch.float16: 989, torch.float32: 494 if tf32 else 67},  # SXM
             "H200": {torch.bfloat16: 989, torch.float16: 989, torch.float32: 494 if tf32 else 67},
             "A100": {torch.bfloat16: 312, torch.float16: 312, torch.float32: 156 if tf32 else 19.5}}
    for key, peaks in table.items():
        if key in name:
            return peaks[dtype] * 1e12
    return None


def step_flops(model, tokens: int, seq: int) -> float:
    """Model FLOPs of one fwd+bwd step: 4/token per frozen Linear weight (forward and input
    gradient, no weight gradient), 6/token per trainable parameter, plus attention scores."""
    frozen = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = model.config if hasattr(model, "config") else model.base_model.config
    attn = 12 * cfg.num_hidden_layers * seq * cfg.hidden_size
    return tokens * (4 * frozen + 6 * trainable + attn)


def time_steps(model, ids, iters: int, warmup: int, device, hook=None) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = CLOCK()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if hook is not None:
            hook(model, 1, opt)  # step 1: before merge_start, so only the per-step bookkeeping runs
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(CLOCK() - t)
    return statistics.median(times)


VARIANTS = ["lora_r8", "hf_peft_lora_r8", "melora_n8r1", "melora_einsum_n8r1", "melora_loop_n8r1", "lora_r1",
            "aslora_r8", "aslora_merged_r8"]


def bench_model(kind: str, bsz: int, seq: int, args, device, dtype) -> dict:
    base = build(kind, device, dtype)
    ids = torch.randint(0, base.config.vocab_size, (bsz, seq), device=device, generator=None)
    models = {v: make(v, base, device) for v in VARIANTS}
    hooks = {v: (P.get("aslora").after_step if v.startswith("aslora") else None) for v in VARIANTS}
    res: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:
            res[v].append(time_steps(models[v], ids, args.iters, 1, device, hooks[v]))
    t = {v: min(ts) for v, ts in res.items()}
    out = {"model": kind, "batch": bsz, "seq": seq, "tokens": bsz * seq, "step_s": t,
           "trainable": {v: P.trainable_report(models[v])["effective_trainable"] if v != "hf_peft_lora_r8"
                         else P.get_nb_trainable_parameters(models[v])[0] for v in VARIANTS},
           "ratios": {"lora_vs_hf_peft": t["lora_r8"] / t["hf_peft_lora_r8"],
                      "melora_loop_speedup": t["melora_loop_n8r1"] / t["melora_n8r1"],
                      "melora_vs_lora_same_p": t["melora_n8r1"] / t["lora_r1"],
                      "melora_einsum_vs_lora_same_p": t["melora_einsum_n8r1"] / t["lora_r1"],
                      "aslora_vs_lora": t["aslora_r8"] / t["lora_r8"],
                      "aslora_merged_vs_lora": t["aslora_merged_r8"] / t["lora_r8"]}}
    sched = aslora_schedule(base, ids, args.schedule_steps, device)
    out["aslora_schedule"] = sched
    out["ratios"]["aslora_schedule_vs_lora"] = sched["ratio"]
    if device.type == "cuda":
        peak = peak_flops(dtype)
        out["dtype"] = str(dtype)
        out["peak_flops"] = peak
        out["flops_lora_r8"] = step_flops(models["lora_r8"], bsz * seq, seq)
        if peak:
            out["mfu_lora_r8"] = out["flops_lora_r8"] / t["lora_r8"] / peak
    return out


# ratio -> (target, True when higher is better)
TARGETS_OF = {"lora_vs_hf_peft": (1.05, False),
              "melora_vs_lora_same_p": (1.05, False), "aslora_vs_lora": (1.1, False),
              "aslora_merged_vs_lora": (1.1, False), "aslora_schedule_vs_lora": (1.1, False)}


def worst(results: list[dict]) -> dict[str, float]:
    return {k: (min if up else max)(r["ratios"][k] for r in results) for k, (_, up) in TARGETS_OF.items()}


def bench_layer(d: int, tokens: int, reps: int, rounds: int, n: int = 8, r: int = 1) -> dict:
    """MELoRA adapter path alone, fwd+bwd with the input gradient on: each exact formulation
    (einsum, bmm, mulsum, blockdiag), the rule's pick, and the per-mini loop; interleaved rounds."""
    from lathe.methods.peft.melora import FORMULATIONS, pick_formulation

    torch.manual_seed(0)
    x = torch.randn(tokens, d, requires_grad=True)
    ref = MeloraLayer(torch.nn.Linear(d, d))
    ref.add_adapter("default", r=r, n=n, alpha=16, dropout=0.0, scaling="per_mini", rslora=False)
    with torch.no_grad():
        ref.melora_B["default"].normal_()
    layers = {}
    for how in FORMULATIONS + ("loop",):
        layer = copy.deepcopy(ref)
        if how == "loop":
            layer.__class__ = LoopMelora
        else:
            layer.formulation = how
        layers[how] = layer
    with torch.no_grad():  # same parameters everywhere, so the outputs can be compared
        want = layers["einsum"].adapter_out("default", x)
        for how, layer in layers.items():
            assert torch.allclose(layer.adapter_out("default", x), want, atol=1e-4, rtol=1e-4), how
    best = {k: float("inf") for k in layers}
    for _ in range(rounds):
        for k, layer in layers.items():
            ts = []
            for i in range(reps + 2):
                t = CLOCK()
                layer.adapter_out("default", x).sum().backward()
                if i >= 2:
                    ts.append(CLOCK() - t)
            best[k] = min(best[k], statistics.median(ts))
    pick = pick_formulation(n, r, "cpu")
    fastest = min(FORMULATIONS, key=lambda k: best[k])
    return {"d": d, "tokens": tokens, "n": n, "r": r, "s": best, "pick": pick, "fastest": fastest,
            "pick_vs_fastest": best[pick] / best[fastest], "einsum_s": best["einsum"], "loop_s": best["loop"],
            "picked_s": best[pick], "loop_speedup": best["loop"] / best[pick]}


def main() -> int:
    ap = add_enforce(parser(__doc__))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", default=None, help="model runs, e.g. tiny-20m:4x128,wide:4x128 (overrides the preset)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the MELoRA layer sweep")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="CPU: process CPU time or wall time")
    ap.add_argument("--schedule-steps", type=int, default=None,
                    help="steps of the timed ASLoRA merge schedule (default 12; --quick 8)")
    args = ap.parse_args()
    t0 = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    global CLOCK
    CLOCK = time.perf_counter if (args.clock == "wall" or device.type == "cuda") else time.process_time
    torch.set_num_threads(args.threads)
    args.schedule_steps = args.schedule_steps or (8 if args.quick else 12)
    if args.quick:
        args.iters, args.rounds = 3, 2
        runs = [("tiny-20m", 2, 32)]
        sweep = [(512, 64), (512, 512), (512, 4096), (512, 512, 8, 2), (512, 512, 8, 8)]
    else:
        runs = [("tiny-20m", 2, 32), ("tiny-20m", 4, 128), ("tiny-20m", 8, 256), ("wide", 4, 128)]
        sweep = [(512, 64), (512, 512), (512, 4096), (1024, 64), (1024, 1024), (1024, 8192),
                 (512, 512, 8, 2), (512, 512, 4, 4), (512, 512, 8, 8), (1024, 512, 32, 4)]
    if args.runs:
        runs = [(k, int(bs.split("x")[0]), int(bs.split("x")[1])) for k, bs in
                (item.split(":") for item in args.runs.split(","))]
    if args.no_sweep:
        sweep = sweep[:1]
    layer = []
    for item in sweep:
        d, tok, n, r = item if len(item) == 4 else (*item, 8, 1)
        layer.append(bench_layer(d, tok, reps=10 if args.quick else 20, rounds=2 if args.quick else 3, n=n, r=r))
        x = layer[-1]
        print(f"[layer d={d} tokens={tok} n={x['n']} r={x['r']}] MELoRA adapter fwd+bwd: "
              + " ".join(f"{k}={v * 1e3:.3f}ms" for k, v in x["s"].items())
              + f" | rule picks {x['pick']} ({x['pick_vs_fastest']:.2f}x the fastest, {x['fastest']})", flush=True)
    results = []
    for kind, b, s in runs:
        r = bench_model(kind, b, s, args, device, torch.float32)
        results.append(r)
        print(f"[{kind} {b}x{s}] step: " + ", ".join(f"{k}={v * 1e3:.1f}ms" for k, v in r["step_s"].items()),
              flush=True)
        print(f"[{kind} {b}x{s}] ratios: " + ", ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items())
              + (f", mfu_lora_r8={r['mfu_lora_r8']:.3f}" if "mfu_lora_r8" in r else ""), flush=True)
    if device.type == "cuda" and not args.quick:
        r = bench_model("llama-1b", 4, 512, args, device, torch.bfloat16)
        results.append(r)
        print(f"[llama-1b 4x512] ratios: " + ", ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items()), flush=True)
    saved = save("peft_speed", args.out, {"device": str(device), "torch_threads": torch.get_num_threads(),
                                          "clock": CLOCK.__name__, "results": results, "melora_layer": layer,
                                          "wall_s": time.time() - t0})
    print(f"json: {saved}")
    w = worst(results)
    w["melora_loop_speedup"] = min(r["ratios"]["melora_loop_speedup"] for r in results)
    small = min(layer, key=lambda x: x["tokens"])
    targets = {f"{k} {'>=' if up else '<='} {lim:g} in every model run (worst {w[k]:.2f})": (w[k] >= lim if up else
                                                                                           w[k] <= lim)
               for k, (lim, up) in TARGETS_OF.items()}
    targets[f"layer_loop_speedup >= 3 at d={small['d']}, {small['tokens']} tokens (the loop's dispatch "
            f"is not hidden there; {small['loop_speedup']:.2f})"] = small["loop_speedup"] >= 3
    for r in results:
        if r["model"] == "llama-1b":
            targets["LoRA MFU >= 0.40 on the 1B Llama (bf16)"] = r.get("mfu_lora_r8", 0.0) >= 0.40
    status = verdict(targets, args.no_enforce)
    mfu = next((f" mfu_lora_r8(1B bf16)={r['mfu_lora_r8']:.3f}" for r in results if "mfu_lora_r8" in r and r["model"] == "llama-1b"), "")
    names = ", ".join(f"{r['model']} {r['batch']}x{r['seq']}" for r in results)
    print(f"peft_speed worst over {len(results)} run(s) ({names}): "
          f"lora/hf_peft={w['lora_vs_hf_peft']:.2f}x melora loop/ours={w['melora_loop_speedup']:.2f}x "
          f"melora/lora_same_params={w['melora_vs_lora_same_p']:.2f}x aslora/lora={w['aslora_vs_lora']:.2f}x "
          f"aslora_merged/lora={w['aslora_merged_vs_lora']:.2f}x aslora_schedule/lora={w['aslora_schedule_vs_lora']:.2f}x"
          f"{mfu} | layer d={small['d']} tokens={small['tokens']} "
          f"loop/picked={small['loop_speedup']:.2f}x [{CLOCK.__name__}, {torch.get_num_threads()} thread(s), "
          f"{time.time() - t0:.0f}s]")
    return status


if __name__ == "__main__":
    sys.exit(main())
