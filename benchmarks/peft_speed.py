"""PEFT step-time benchmark: forward+backward+AdamW step, ours vs baselines, printed as ratios.

  python benchmarks/peft_speed.py --quick     # tiny-20m only, CPU, < 60 s
  python benchmarks/peft_speed.py             # + a wider random-init Llama; on a GPU also a 1B Llama in bf16 + MFU

Ratios (time ours / time baseline, lower is better unless noted):
  lora_vs_hf_peft          our LoRA r=8 vs HF peft LoRA r=8                  target <= 1.05
  melora_loop_speedup      per-mini Python loop / our einsum MELoRA (n=8)      target >= 3   (higher is better)
  melora_vs_lora_same_p    MELoRA n=8 r=1 vs LoRA r=1 (same trainable params)  target <= 1.15
  aslora_vs_lora           ASLoRA r=8 vs our LoRA r=8                          target <= 1.1
Writes runs/bench/peft_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from lathe.methods import peft as P  # noqa: E402
from lathe.methods.peft.melora import MeloraLayer  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoopMelora(MeloraLayer):
    """Baseline: the per-mini Python loop (as in the official code), same parameters."""

    def adapter_out(self, name, x):
        a, b, n = self.melora_A[name], self.melora_B[name], self.n[name]
        di = self.in_features // n
        x = self.dropout[name](x)
        return torch.cat([(x[..., i * di:(i + 1) * di] @ a[i].T) @ b[i].T for i in range(n)], -1) * self.scaling[name]


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
    if variant in ("melora_n8r1", "melora_loop_n8r1"):
        m = P.get("melora").apply(m, {"r": 1, "n": 8, "target_modules": TARGETS})
        if variant == "melora_loop_n8r1":
            for _, layer in P.adapter_layers(m):
                layer.__class__ = LoopMelora
        return m
    if variant == "aslora_r8":
        return P.get("aslora").apply(m, {"r": 8, "target_modules": TARGETS, "total_steps": 100})
    raise ValueError(variant)


def time_steps(model, ids, iters: int, warmup: int, device) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(kind: str, args, device, dtype) -> dict:
    base = build(kind, device, dtype)
    bsz, seq = (args.batch, args.seq) if kind != "llama-1b" else (4, 512)
    ids = torch.randint(0, base.config.vocab_size, (bsz, seq), device=device)
    variants = ["lora_r8", "hf_peft_lora_r8", "melora_n8r1", "melora_loop_n8r1", "lora_r1", "aslora_r8"]
    res = {}
    # interleave rounds so load drift on a shared machine hits all variants alike
    models = {v: make(v, base, device) for v in variants}
    for v in variants:
        res[v] = []
    for _ in range(args.rounds):
        for v in variants:
            res[v].append(time_steps(models[v], ids, args.iters, 1, device))
    t = {v: min(ts) for v, ts in res.items()}
    out = {"model": kind, "batch": bsz, "seq": seq, "step_s": t,
           "trainable": {v: P.get_nb_trainable_parameters(models[v])[0] for v in variants},
           "ratios": {"lora_vs_hf_peft": t["lora_r8"] / t["hf_peft_lora_r8"],
                      "melora_loop_speedup": t["melora_loop_n8r1"] / t["melora_n8r1"],
                      "melora_vs_lora_same_p": t["melora_n8r1"] / t["lora_r1"],
                      "aslora_vs_lora": t["aslora_r8"] / t["lora_r8"]}}
    if device.type == "cuda":
        n = sum(p.numel() for p in base.parameters())
        flops = 6 * n * bsz * seq  # ~ fwd+bwd of a frozen base with tiny adapters (upper bound, incl. weight grads)
        peak = float(os.environ.get("PEAK_TFLOPS", "989")) * 1e12  # H100 SXM dense bf16
        out["mfu_lora_r8"] = flops / t["lora_r8"] / peak
    return out


def bench_layer(d_in: int, d_out: int, tokens: int, reps: int) -> dict:
    """Adapter path alone (fwd+bwd), where the einsum-vs-loop difference is not hidden by the base model."""
    x = torch.randn(tokens, d_in, requires_grad=True)
    out = {}
    for cls in (MeloraLayer, LoopMelora):
        layer = cls(torch.nn.Linear(d_in, d_out))
        layer.add_adapter("default", r=1, n=8, alpha=16, dropout=0.0, scaling="per_mini", rslora=False)
        ts = []
        for i in range(reps + 2):
            t = time.perf_counter()
            layer.adapter_out("default", x).sum().backward()
            if i >= 2:
                ts.append(time.perf_counter() - t)
        out[cls.__name__] = min(ts)
    return {"shape": [tokens, d_in, d_out], "einsum_s": out["MeloraLayer"], "loop_s": out["LoopMelora"],
            "loop_speedup": out["LoopMelora"] / out["MeloraLayer"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench/peft_speed.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.batch, args.seq, args.iters, args.rounds = 2, 32, 2, 1
    kinds = ["tiny-20m"] if args.quick else ["tiny-20m", "wide"]
    results = [bench_model(k, args, device, torch.float32) for k in kinds]
    if device.type == "cuda" and not args.quick:
        results.append(bench_model("llama-1b", args, device, torch.bfloat16))
    layer = bench_layer(512, 512, 256 if args.quick else 2048, 5 if args.quick else 20)
    print(f"[layer {layer['shape']}] MELoRA adapter path fwd+bwd: einsum={layer['einsum_s'] * 1e3:.2f}ms "
          f"loop={layer['loop_s'] * 1e3:.2f}ms speedup={layer['loop_speedup']:.2f}x")
    for r in results:
        print(f"[{r['model']}] step s: " + ", ".join(f"{k}={v * 1e3:.1f}ms" for k, v in r["step_s"].items()))
        print(f"[{r['model']}] ratios: " + ", ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items())
              + (f", mfu_lora_r8={r['mfu_lora_r8']:.3f}" if "mfu_lora_r8" in r else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": str(device), "torch_threads": torch.get_num_threads(),
                                          "results": results, "melora_layer": layer}, indent=2))
    r = results[0]["ratios"]
    print(f"peft_speed {results[0]['model']}: lora/hf_peft={r['lora_vs_hf_peft']:.2f}x "
          f"melora loop-speedup={r['melora_loop_speedup']:.2f}x melora/lora_same_params={r['melora_vs_lora_same_p']:.2f}x "
          f"aslora/lora={r['aslora_vs_lora']:.2f}x melora-layer loop-speedup={layer['loop_speedup']:.2f}x")


if __name__ == "__main__":
    main()
