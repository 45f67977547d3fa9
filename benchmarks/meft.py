"""MEFT benchmark: device-resident adapter memory, step time and host<->device bytes of the offload
engine against a dense parallel adapter of the same N and LoRA r=256, on a random-init Llama.

  python benchmarks/meft.py --quick            # tiny-20m, 2x32 tokens, CPU, about a minute
  python benchmarks/meft.py                    # tiny-20m at 4x64 tokens (CPU); a ~1B Llama on a GPU
  python benchmarks/meft.py --quality          # + MEFT vs LoRA at equal device memory on many facts, 2 seeds
  python benchmarks/meft.py --no-enforce       # report only

Variants (every MLP block / every projection of every layer):
  meft      engine offload, N=4096, k=64, E=64 experts, n_probe=8, on_gpu_size=1024, per_token
  dense     a dense parallel adapter of the same N: V·act(K x), K and V trained by AdamW on the device
  lora256   LoRA r=256 on q,k,v,o,gate,up,down

Targets (exit 1 when missed):
  mem_ratio    device-resident adapter state, meft / dense                     <= 0.25
  time_ratio   step time (fwd+bwd+optimizer, host Adam included), meft / dense  <= 1.5
  bytes_error  |measured host<->device bytes per step / the docs/peft.md formula - 1|  <= 0.10
  on CUDA: Triton / torch-reference speedup for gather+scatter and the masked matmul  >= 2
Device-resident state = trainable device tensors + their gradients + AdamW moments (+ MEFT's fixed
buffers and their gradients). On CPU that is what the counter reports; on GPU we also print
torch.cuda.max_memory_allocated per variant. Step time on CPU is process CPU time with one thread
(robust to a shared machine); on GPU wall time with synchronisation. The last line is the summary.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import add_enforce, parser, save, verdict  # noqa: E402
from lathe.methods.meft import Meft, meft_layers  # noqa: E402

GPU_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
              intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def meft_opts(n_max: int) -> dict:
    return dict(engine="offload", num_neurons=4096, topk=64, num_experts=64, n_probe=8, on_gpu_size=n_max,
                mask="per_token")


def build_model(device, gpu: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lathe.platform.zoo import build_tiny

    if gpu:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**GPU_1B)).to(device, torch.bfloat16)
    else:
        model = build_tiny("tiny-20m", seed=0)
    return model.to(device)


def variant(name: str, base, n_max: int):
    model = copy.deepcopy(base)
    if name == "meft":
        return Meft().apply(model, meft_opts(n_max))
    if name == "dense":
        return Meft().apply(model, dict(engine="gpu", num_neurons=4096, topk=0, num_experts=1))
    from lathe.methods import peft as P

    return P.get("lora").apply(model, {"r": 256, "lora_alpha": 512, "target_modules": LORA_TARGETS})


def device_state_bytes(model, opt) -> int:
    """Trainable device tensors + gradients + optimizer moments + MEFT's buffers and their grads."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += 2 * p.numel() * p.element_size()
    for st in opt.state.values():
        total += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    for _, layer in meft_layers(model):
        for buf in (layer._kbuf, layer._vbuf):
            if buf is not None:
                total += buf.numel() * buf.element_size() * (2 if buf.requires_grad else 1)
    return total


def predicted_bytes(model, tokens: int) -> int:
    """docs/peft.md: per adapted layer, up T·d'·4 + 2·T·p·4 + n·d·4 (+ n·d'·4 when keys train),
    down n·(d'+d)·4 + n·4 (+ T·k·4 for per_token), with n = the rows the host selected for that
    layer (its union after the budget; = n_max once the union overflows)."""
    total = 0
    for _, layer in meft_layers(model):
        c = layer.cfg
        n = int(layer.stats["union"])
        up = tokens * layer.dk * 4 + 2 * tokens * c.n_probe * 4 + n * layer.d * 4
        up += n * layer.dk * 4 if c.train_keys_offload else 0
        down = n * (layer.dk + layer.d) * 4 + n * 4 + (tokens * c.topk * 4 if c.mask == "per_token" else 0)
        total += up + down
    return total


def timed_steps(models: dict, batch, rounds: int, steps: int, device) -> dict:
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = {k: [] for k in models}
    extra = {}

    def one(name):
        m, opt = models[name], opts[name]
        loss = m(input_ids=batch).logits.float().square().mean()
        loss.backward()
        extra[name + "_bytes"] = device_state_bytes(m, opt) if opt.state else None
        if name == "meft":
            Meft().before_step(m, 1, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for name in models:  # warm-up: allocate optimizer state and buffers
        one(name)
        if device.type == "cuda":
            torch.cuda.synchronize()
    for name in models:
        one(name)
        extra[name + "_state"] = extra[name + "_bytes"]
    for _ in range(rounds):
        for name in models:
            per = []
            for _ in range(steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                one(name)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                per.append(clock() - t0)
            times[name].append(statistics.median(per))
    return {"step_s": {k: min(v) for k, v in times.items()},
            "state_bytes": {k: extra[k + "_state"] for k in models}}


def peak_memory(base, name, batch, n_max, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    m = variant(name, base, n_max)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):
        m(input_ids=batch).logits.float().square().mean().backward()
        if name == "meft":
            Meft().before_step(m, 1, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del m, opt
    return peak


def bytes_check(model, batch, n_max) -> dict:
    meter = model.lathe_meft["meter"]
    meter.reset()
    model(input_ids=batch).logits.float().square().mean().backward()
    got = meter.reset()
    model.lathe_meft["store"].pending.clear()
    measured = got["meft_bytes_up"] + got["meft_bytes_down"]
    pred = predicted_bytes(model, batch.numel())
    return {"measured": measured, "predicted": pred, "union_mean": got.get("meft_union_mean"), "n_max": n_max,
            "error": abs(measured / pred - 1)}


def kernel_speed(device, quick: bool) -> dict:
    """Triton vs the torch references at the benchmark's sizes (CUDA only)."""
    from lathe import kernels as K

    if not K.triton_available():
        return {}
    T, d, n, k, N = (1024, 2048, 1024, 64, 4096)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(T, d, device=device, generator=g, requires_grad=True)
    kb = torch.randn(n, d, device=device, generator=g, requires_grad=True)
    vb = torch.randn(n, d, device=device, generator=g, requires_grad=True)
    slot = torch.randint(0, n, (T, k), device=device, generator=g)
    gate = torch.rand(T, k, device=device, generator=g, requires_grad=True)
    table = torch.randn(N, d, device=device, generator=g)
    ids = torch.randperm(N, device=device, generator=g)[:n]
    out = torch.empty(n, d, device=device)
    dest = torch.zeros(N, d, device=device)

    def bench(fn, reps=20):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    def mm(mode):
        y = K.masked_adapter(x, kb, vb, slot, gate, mode)
        y.sum().backward()

    def gs(mode):
        K.gather_rows(table, ids, out, mode)
        K.scatter_add_rows(dest, ids, out, mode)

    res = {}
    for name, fn in (("masked_matmul", mm), ("gather_scatter", gs)):
        ref, tri = bench(lambda: fn("torch")), bench(lambda: fn("triton"))
        res[name] = {"torch_s": ref, "triton_s": tri, "speedup": ref / tri}
    return res


def quality(device, quick: bool, seeds=(0, 1)) -> dict:
    """Many facts (lathe.data.qa), memorised: MEFT vs LoRA with the same device-resident adapter bytes."""
    from lathe.data import qa
    from lathe.methods import peft as P
    from lathe.methods import sft as S
    from lathe.platform.zoo import build_tiny, train_tokenizer

    rows = qa.generate(256 if quick else 1024, seed=0)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=1024)
    enc = [S.encode_qa(tok, r["question"], r["answer"], 48) for r in rows]
    collate = S.pad_collate(tok.pad_token_id)
    steps = 60 if quick else 300
    meft_cfg = dict(engine="offload", num_neurons=4096, topk=32, num_experts=64, n_probe=8, on_gpu_size=512)
    out = {}
    for seed in seeds:
        for name in ("meft", "lora"):
            torch.manual_seed(seed)
            m = build_tiny("tiny-5m", vocab_size=len(tok), seed=seed).to(device)
            if name == "meft":
                m = Meft().apply(m, {**meft_cfg, "seed": seed})
            else:
                # equal device memory: LoRA's param + grad + 2 AdamW moments (16 B per parameter) sized
                # to MEFT's device state (buffers + V-buffer grad + router with its grad and moments)
                c, L = m.config, m.config.num_hidden_layers
                d, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
                meft_bytes = L * (meft_cfg["on_gpu_size"] * 3 * d * 4 + meft_cfg["num_experts"] * d * 16)
                per_r = L * 16 * (2 * d + 2 * (d + kv) + 2 * d + 3 * (d + c.intermediate_size))
                r = max(1, round(meft_bytes / per_r))
                out["lora_rank"] = r
                m = P.get("lora").apply(m, {"r": r, "lora_alpha": 2 * r, "target_modules": LORA_TARGETS})
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
            g = torch.Generator().manual_seed(seed)
            state = 0
            for step in range(steps):
                idx = torch.randint(0, len(enc), (16,), generator=g).tolist()
                b = {k: v.to(device) for k, v in collate([enc[i] for i in idx]).items()}
                loss, _ = S.causal_lm_loss(m, b)
                loss.backward()
                if step == 1:  # after the first optimizer step, so AdamW's moments exist
                    state = device_state_bytes(m, opt)
                if name == "meft":
                    Meft().before_step(m, step + 1, opt)
                opt.step()
                opt.zero_grad(set_to_none=True)
            m.eval()
            correct = count = 0.0
            with torch.no_grad():
                for i in range(0, len(enc), 64):
                    b = {k: v.to(device) for k, v in collate(enc[i: i + 64]).items()}
                    _, c, n = S.answer_accuracy(m, b)
                    correct, count = correct + c, count + n
            out.setdefault(name, []).append({"seed": seed, "train_fact_token_acc": correct / count,
                                             "device_state_bytes": state})
    for name in ("meft", "lora"):
        out[name + "_mean_acc"] = statistics.mean(r["train_fact_token_acc"] for r in out[name])
    out["meft_helps"] = out["meft_mean_acc"] > out["lora_mean_acc"]
    return out


def main() -> int:
    p = add_enforce(parser(__doc__.splitlines()[0]))
    p.add_argument("--quality", action="store_true", help="also run the many-facts quality comparison")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    base = build_model(device, gpu)
    n_max = 1024
    b, t = (2, 32) if args.quick else ((4, 256) if gpu else (4, 64))
    batch = torch.randint(0, base.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0)).to(device)
    models = {name: variant(name, base, n_max) for name in ("meft", "dense", "lora256")}
    res = timed_steps(models, batch, rounds=2 if args.quick else 3, steps=2 if args.quick else 3, device=device)
    res["bytes"] = bytes_check(models["meft"], batch, n_max)
    res["device"] = str(device)
    res["shape"] = {"tokens": batch.numel(), "layers": len(meft_layers(models["meft"])), "n_max": n_max,
                    "preset": "1B-config" if gpu else "tiny-20m"}
    if gpu:
        del models
        res["peak_bytes"] = {n: peak_memory(base, n, batch, n_max, device) for n in ("meft", "dense", "lora256")}
        res["kernels"] = kernel_speed(device, args.quick)
    if args.quality:
        res["quality"] = quality(device, args.quick)
    sb, st = res["state_bytes"], res["step_s"]
    ratios = {"mem_ratio": sb["meft"] / sb["dense"], "time_ratio": st["meft"] / st["dense"],
              "bytes_error": res["bytes"]["error"], "lora256_mem_ratio": sb["lora256"] / sb["dense"],
              "lora256_time_ratio": st["lora256"] / st["dense"]}
    ok = ratios["mem_ratio"] <= 0.25 and ratios["time_ratio"] <= 1.5 and ratios["bytes_error"] <= 0.10
    for name, r in res.get("kernels", {}).items():
        ratios[f"{name}_triton_speedup"] = r["speedup"]
        ok = ok and r["speedup"] >= 2
    res["ratios"], res["ok"] = ratios, ok
    path = save("meft", args.out, res)
    for k in ("meft", "dense", "lora256"):
        print(f"{k:8s} step {st[k] * 1e3:8.1f} ms   device adapter state {sb[k] / 2**20:8.2f} MiB"
              + (f"   peak {res['peak_bytes'][k] / 2**30:.2f} GiB" if gpu else ""))
    print(f"bytes/step measured {res['bytes']['measured']:,} predicted {res['bytes']['predicted']:,} "
          f"(union mean {res['bytes']['union_mean']})")
    if "quality" in res:
        q = res["quality"]
        print(f"quality (fact token acc, 2 seeds): meft {q['meft_mean_acc']:.3f}  lora {q['lora_mean_acc']:.3f}  "
              f"meft_helps={q['meft_helps']}")
    print(f"wrote {path}")
    print("meft: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()) + f" ok={ok}")
    targets = {"device adapter state <= 0.25x dense": ratios["mem_ratio"] <= 0.25,
               "step time <= 1.5x dense": ratios["time_ratio"] <= 1.5,
               "bytes/step within 10% of predicted": ratios["bytes_error"] <= 0.10}
    for name, r in res.get("kernels", {}).items():
        targets[f"{name} Triton kernel >= 2x torch"] = r["speedup"] >= 2
    assert ok == all(targets.values())
    return verdict(targets, args.no_enforce)


if __name__ == "__main__":
    sys.exit(main())
