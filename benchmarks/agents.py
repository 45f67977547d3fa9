"""Agents benchmark: quality (ConAgents vs ReAct on held-out sandbox tasks; GenGround vs
retrieve-then-read on the multi-hop corpus) per model, and serving load on loopback.

Models: `oracle` (the gold-path teacher: an upper bound that checks the harness), `base` (SmolLM2-135M-
Instruct, full prompts), `distilled` (the agents' embedded default: SmolLM2 + a LoRA distilled by the sft
job from oracle trajectories on world 1, cached; lathe.jobs.agents_student), `tiny` (a tiny-preset
student distilled the same way), and `endpoint` when LATHE_AGENT_ENDPOINT is set (an OpenAI-compatible
base URL; LATHE_AGENT_MODEL, LATHE_AGENT_KEY_ENV optional). Tasks are held out: world 0.

Serving: the whole graph (sandbox + agents + passage retriever; oracle LLM so the load measures the
serving stack) under `--clients` x `--requests` concurrent loopback requests; p50/p99 per step and end
to end, requests/s; any error fails the run.

  python benchmarks/agents.py --quick                      # oracle, base, distilled; 2 tasks; 4 x 10 load
  python benchmarks/agents.py                              # + tiny; 10 tasks; 16 clients x 50 requests
  python benchmarks/agents.py --no-enforce                 # report only
The last line is the serving summary with the distilled model's ConAgents minus ReAct success, in points
(a ratio is undefined when ReAct solves nothing); the run fails (exit 1) when any serving request errs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lathe.data import multihop as mh  # noqa: E402
from lathe.data import restbench as rb  # noqa: E402
from lathe.eval import agents as ev  # noqa: E402

OUT = Path("runs/agents-bench")
DISTILL = Path("runs/agents-distill")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def tiny_student() -> str:
    """A tiny-preset student distilled the same way (configs/agents/distill_tiny.yaml, the agents_span
    builder on worlds 1-3), trained once and cached under runs/agents-distill/; its artifact dir."""
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    marker = DISTILL / "tiny.artifact"
    if marker.is_file() and Path(marker.read_text().strip()).is_dir():
        return marker.read_text().strip()
    from lathe.methods.agents.distill import span_rows, write_jsonl

    train, held = span_rows({"train_worlds": [1, 2, 3], "eval_world": 0, "eval_limit": 4}, 0)
    write_jsonl(train, DISTILL / "span_train.jsonl")
    write_jsonl(held, DISTILL / "span_heldout.jsonl")
    cfg = load_config("configs/agents/distill_tiny.yaml", [f"output_root={DISTILL / 'runs'}"])
    with ray_session(num_cpus=2):
        res = lookup("job", "sft")().run(cfg, RunDir.create(cfg), show_progress=False)
    print(f"distilled tiny: loss {res['first_loss']:.3f} -> {res['final_loss']:.3f} in {res['wall_s']:.0f} s",
          flush=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(res["artifact"])
    return res["artifact"]


def quality(models: list[str], n_tasks: int, n_questions: int, seed: int = 0) -> list[dict]:
    """Held-out tasks of world `seed` (the students were trained on worlds 1-3) and multi-hop questions."""
    from lathe.jobs.agents_student import model_backends
    from lathe.methods.agents import runs

    world = rb.build_world(seed)
    tf = rb.generate("tmdb", seed, world)
    held = rb.split_tasks(tf.tasks, 0.3, seed)[1][:n_tasks]
    sb = rb.ToolSandbox("tmdb", seed, world=world)

    def send(m, u, p):
        return sb.request(m, u, p)

    rows, passages = mh.generate(seed)
    rows = rows[:n_questions]
    know = mh.Knowledge(passages, "index")
    table = []
    for name in models:
        t0 = time.perf_counter()
        backend = tiny_student() if name == "tiny" else os.environ["LATHE_AGENT_ENDPOINT"] if name == "endpoint" \
            else name
        task_llm, row_llm, ccfg, gcfg = model_backends(backend, send=send, passages_by_id={p["id"]: p for p in passages})
        con, sc = runs.run_tasks("conagents", task_llm, held, tf.tools, send, ccfg, "tmdb", seed=seed)
        _, sr = runs.run_tasks("react", task_llm, held, tf.tools, send, ccfg, "tmdb", seed=seed)
        _, qg = runs.run_questions("genground", row_llm, rows, know, gcfg)
        qr = {"acc": float("nan"), "f1": float("nan")}
        if name != "oracle":  # the oracle teacher has no single-shot reader
            _, qr = runs.run_questions("rtr", row_llm, rows, know, gcfg)
        row = {"model": name, "conagents_success": sc["success"], "conagents_path": sc["path"],
               "react_success": sr["success"], "react_path": sr["path"], "genground_acc": qg["acc"],
               "genground_f1": qg["f1"], "rtr_acc": qr["acc"], "rtr_f1": qr["f1"],
               "tasks": len(held), "questions": len(rows), "seconds": time.perf_counter() - t0,
               "success_by_budget": sc["success_by_budget"]}
        table.append(row)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return table


def serving(clients: int, requests: int, seed: int = 0) -> dict:
    import socket

    import httpx
    from ray import serve

    from lathe.platform.runtime import ray_session
    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig.model_validate({"job": "serve", "http": {"port": port}, "sandbox": {"seed": seed},
                                      "agents": {"llm": {"kind": "oracle"}, "replicas": {"num_replicas": 1,
                                                                                          "max_ongoing_requests": 64}}})
    tasks = rb.generate("tmdb", seed).tasks
    rows, _ = mh.generate(seed)
    lat, step_s, errors = [], [], []
    with ray_session(num_cpus=4):
        urls = deploy(cfg)
        agents = urls["agents"]
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if httpx.get(agents + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

        def client(c: int):
            with httpx.Client(timeout=120) as h:
                for i in range(requests):
                    k = c * requests + i
                    t0 = time.perf_counter()
                    if k % 2 == 0:
                        t = tasks[k % len(tasks)]
                        r = h.post(agents + "/conagents/run", json={"query": t.query, "task_id": t.q_id})
                    else:
                        q = rows[k % len(rows)]
                        r = h.post(agents + "/genground/answer", json={"question": q["question"], "qid": q["qid"]})
                    lat.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    out = r.json()
                    if k % 2 == 0:
                        step_s.extend(s["seconds"] for s in out["steps"])
                        if out.get("success") != 1.0:
                            errors.append(f"task {t.q_id} not solved: {out.get('answer')!r}")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        wall = time.perf_counter() - t0
        serve.shutdown()
    n = clients * requests
    return {"requests": n, "clients": clients, "errors": len(errors), "first_errors": errors[:3],
            "rps": n / wall, "p50_ms": 1000 * pct(lat, 50), "p99_ms": 1000 * pct(lat, 99),
            "step_p50_ms": 1000 * pct(step_s, 50), "step_p99_ms": 1000 * pct(step_s, 99), "wall_s": wall}


def main() -> int:
    from _common import add_enforce, verdict

    ap = add_enforce(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--quick", action="store_true",
                    help="oracle + base + distilled SmolLM2 on 2 tasks / 2 questions; 4 clients x 10 requests")
    ap.add_argument("--models", default=None, help="comma list of oracle,tiny,base,distilled,endpoint")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--no-serving", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.questions, args.clients, args.requests = 2, 2, 4, 10
    models = (args.models or "oracle,base,distilled" + ("" if args.quick else ",tiny")).split(",")
    if os.environ.get("LATHE_AGENT_ENDPOINT") and "endpoint" not in models:
        models.append("endpoint")
    OUT.mkdir(parents=True, exist_ok=True)
    table = quality(models, args.tasks, args.questions)
    print(ev.table(table, ["model", "conagents_success", "conagents_path", "react_success", "react_path",
                           "genground_acc", "genground_f1", "rtr_acc", "rtr_f1"], "quality (held-out synthetic)"))
    curves = {r["model"]: {int(k): v for k, v in r["success_by_budget"].items()} for r in table}
    ev.plot_success_vs_budget(curves, OUT / "success_vs_budget.png")
    for r in table:
        if r["model"] == "oracle":
            print(f"oracle (the teacher, an upper bound): ConAgents {r['conagents_success']:.1f}%, ReAct "
                  f"{r['react_success']:.1f}%, GenGround {r['genground_acc']:.1f}%")
            continue
        con = "holds" if r["conagents_success"] > r["react_success"] else "does not hold"
        gg = "holds" if r["genground_acc"] > r["rtr_acc"] else "does not hold"
        print(f"{r['model']}: ConAgents {r['conagents_success']:.1f}% vs ReAct {r['react_success']:.1f}% success "
              f"(paper ordering {con}); GenGround {r['genground_acc']:.1f}% vs retrieve-then-read "
              f"{r['rtr_acc']:.1f}% acc (paper ordering {gg})")
    by = {r["model"]: r for r in table}
    if "base" in by and "distilled" in by:
        print(f"distillation: ConAgents success base {by['base']['conagents_success']:.1f}% -> distilled "
              f"{by['distilled']['conagents_success']:.1f}%, path {by['base']['conagents_path']:.1f}% -> "
              f"{by['distilled']['conagents_path']:.1f}%")
    result = {"quality": table}
    targets = {}
    if not args.no_serving:
        srv = serving(args.clients, args.requests)
        result["serving"] = srv
        print(json.dumps(srv))
        targets[f"serving: zero errors over {srv['requests']} requests (got {srv['errors']})"] = srv["errors"] == 0
    (OUT / "results.json").write_text(json.dumps(result, indent=1, default=str))
    student = by.get("distilled") or next((r for r in table if r["model"] != "oracle"), None)
    gap = student["conagents_success"] - student["react_success"] if student else float("nan")
    gap_text = f"{student['model'] if student else '-'} ConAgents - ReAct success {gap:+.1f} points"
    rc = verdict(targets, args.no_enforce)
    if "serving" in result:
        s = result["serving"]
        print(f"agents serving: {s['rps']:.1f} req/s, e2e p50 {s['p50_ms']:.0f} ms p99 {s['p99_ms']:.0f} ms, step "
              f"p50 {s['step_p50_ms']:.1f} ms p99 {s['step_p99_ms']:.1f} ms, errors {s['errors']}; {gap_text}")
    else:
        print(f"agents: {gap_text}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
