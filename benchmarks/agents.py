"""Agents benchmark: quality (ConAgents vs ReAct on held-out sandbox tasks; GenGround vs
retrieve-then-read on the multi-hop corpus) per model, and serving load on loopback.

Models: `oracle` (the gold-path teacher: an upper bound that checks the harness), `base` (SmolLM2-135M-
Instruct, full prompts), `distilled` (SmolLM2 + a LoRA adapter trained once by the sft job on oracle
trajectories, cached under runs/agents-distill/), `tiny` (a tiny-preset student distilled the same way),
and `endpoint` when LATHE_AGENT_ENDPOINT is set (an OpenAI-compatible base URL; LATHE_AGENT_MODEL,
LATHE_AGENT_KEY_ENV optional).

Serving: the whole graph (sandbox + agents + passage retriever; oracle LLM so the load measures the
serving stack) under `--clients` x `--requests` concurrent loopback requests; p50/p99 per step and end
to end, requests/s; any error fails the run.

  python benchmarks/agents.py --quick                      # oracle + tiny student, small load
  python benchmarks/agents.py --models oracle,base,distilled --tasks 10
  python benchmarks/agents.py --no-enforce
The last line is the serving summary with the ConAgents/ReAct success ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lathe.data import multihop as mh  # noqa: E402
from lathe.data import restbench as rb  # noqa: E402
from lathe.eval import agents as ev  # noqa: E402
from lathe.methods.agents import distill as ds  # noqa: E402
from lathe.methods.agents.conagents import ConAgents, ConAgentsConfig, react_run  # noqa: E402
from lathe.methods.agents.genground import GenGround, GenGroundConfig, retrieve_then_read  # noqa: E402
from lathe.methods.agents.oracle import OracleConAgents, OracleGenGround  # noqa: E402

OUT = Path("runs/agents-bench")
DISTILL = Path("runs/agents-distill")
COMPACT = ConAgentsConfig(prompt_style="compact", review_llm=False, long_response_tokens=10 ** 9, response_chars=300,
                          max_tokens=96, max_steps=3, exec_retries=2, grounding_retries=2)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def distilled_student(student: str, world, tf, train, seed: int = 0) -> str:
    """Train (once, cached) a student on oracle SPAN records of the training tasks; its artifact dir."""
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    marker = DISTILL / f"{student}.artifact"
    if marker.is_file() and Path(marker.read_text().strip()).is_dir():
        return marker.read_text().strip()
    rows = ds.to_sft_rows(ds.oracle_conagents_records(train, tf.tools, world, "tmdb", COMPACT, seed))
    ds.write_jsonl(rows, DISTILL / "span_train.jsonl")
    ds.write_jsonl(rows[: max(4, len(rows) // 10)], DISTILL / "span_heldout.jsonl")
    cfg_path = {"tiny": "configs/agents/distill_tiny.yaml", "distilled": "configs/agents/distill_smollm2_lora.yaml"}[student]
    over = [f"data.train={DISTILL / 'span_train.jsonl'}", f"data.eval={DISTILL / 'span_heldout.jsonl'}",
            f"output_root={DISTILL / 'runs'}"]
    if student == "distilled":
        over += ["train.epochs=1", "train.max_steps=60"]
    cfg = load_config(cfg_path, over)
    with ray_session(num_cpus=2):
        res = lookup("job", "sft")().run(cfg, RunDir.create(cfg), show_progress=False)
    print(f"distilled {student}: loss {res['first_loss']:.3f} -> {res['final_loss']:.3f} in {res['wall_s']:.0f} s "
          f"(held-out eval_loss {res.get('eval_loss', float('nan')):.3f})", flush=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(res["artifact"])
    return res["artifact"]


def make_llm(name: str, world, tf, train):
    """(factory(task_or_row) -> client, conagents config, genground max_tokens)."""
    from lathe.methods.agents.llm import OpenAIChat, TransformersChat

    if name == "oracle":
        return None, ConAgentsConfig(), 200
    if name == "endpoint":
        url = os.environ["LATHE_AGENT_ENDPOINT"]
        llm = OpenAIChat(url, os.environ.get("LATHE_AGENT_MODEL"), os.environ.get("LATHE_AGENT_KEY_ENV"),
                         allow_remote=True)
        return (lambda *_: llm.clone()), ConAgentsConfig(max_tokens=256), 128
    if name == "base":
        from lathe.platform.pretrained import pretrained_dir

        llm = TransformersChat.from_dir(str(pretrained_dir("smollm2-135m-instruct")), max_context=2048)
        return (lambda *_: llm.clone()), ConAgentsConfig(max_tokens=96, max_steps=3, exec_retries=2,
                                                         grounding_retries=2, review_llm=False), 64
    art = distilled_student(name, world, tf, train)
    llm = TransformersChat.from_artifact(art, max_context=2048 if name == "distilled" else 512, prompt_style="sft")
    return (lambda *_: llm.clone()), COMPACT, 64


def quality(models: list[str], n_tasks: int, n_questions: int, seed: int = 0) -> list[dict]:
    world = rb.build_world(seed)
    tf = rb.generate("tmdb", seed, world)
    train, held = rb.split_tasks(tf.tasks, 0.3, seed)
    held = held[:n_tasks]
    sb = rb.ToolSandbox("tmdb", seed, world=world)

    def send(m, u, p):
        return sb.request(m, u, p)

    rows, passages = mh.generate(seed)
    rows = rows[:n_questions]
    by_id = {p["id"]: p for p in passages}
    know = mh.Knowledge(passages, "index")
    table = []
    for name in models:
        t0 = time.perf_counter()
        factory, ccfg, gg_tokens = make_llm(name, world, tf, train)
        con, rea = [], []
        for t in held:
            llm = OracleConAgents(t, send) if factory is None else factory(t)
            con.append(ConAgents(llm, rb.candidate_tools(t, tf.tools, seed=seed), send, ccfg, domain="tmdb").run(t.query))
            llm = OracleConAgents(t, send) if factory is None else factory(t)
            rea.append(react_run(llm, rb.candidate_tools(t, tf.tools, seed=seed), send, t.query,
                                 max_steps=ccfg.max_steps, max_tokens=ccfg.max_tokens))
        sc, sr = ev.score_conagents(held, con), ev.score_conagents(held, rea)
        gcfg = GenGroundConfig(max_tokens=gg_tokens, max_iters=5 if factory is None else 4, n_docs=6)
        gpred, rpred = [], []
        for r in rows:
            llm = OracleGenGround(r, by_id) if factory is None else factory(r)
            gpred.append(GenGround(llm, know.for_question(r), gcfg).answer(r["question"])["answer"])
            if factory is not None:  # the oracle teacher has no single-shot reader
                rpred.append(retrieve_then_read(factory(r), know.for_question(r), r["question"], 6)["answer"])
        qg = ev.score_qa(rows, gpred)
        qr = ev.score_qa(rows, rpred) if rpred else {"acc": float("nan"), "f1": float("nan")}
        row = {"model": name, "conagents_success": sc["success"], "conagents_path": sc["path"],
               "react_success": sr["success"], "react_path": sr["path"], "genground_acc": qg["acc"],
               "genground_f1": qg["f1"], "rtr_acc": qr["acc"], "rtr_f1": qr["f1"],
               "tasks": len(held), "questions": len(rows), "seconds": time.perf_counter() - t0,
               "success_by_budget": ev.success_by_budget(held, con, [1, 2, 3, 4, 5])}
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="oracle + tiny student, 4 tasks, 4 clients x 10 requests")
    ap.add_argument("--models", default=None, help="comma list of oracle,tiny,base,distilled,endpoint")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--no-serving", action="store_true")
    ap.add_argument("--no-enforce", action="store_true", help="report only")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.questions, args.clients, args.requests = 4, 4, 4, 10
    models = (args.models or ("oracle,tiny" if args.quick else "oracle,tiny,base,distilled")).split(",")
    if os.environ.get("LATHE_AGENT_ENDPOINT") and "endpoint" not in models:
        models.append("endpoint")
    OUT.mkdir(parents=True, exist_ok=True)
    table = quality(models, args.tasks, args.questions)
    print(ev.table(table, ["model", "conagents_success", "conagents_path", "react_success", "react_path",
                           "genground_acc", "genground_f1", "rtr_acc", "rtr_f1"], "quality (held-out synthetic)"))
    curves = {r["model"]: {int(k): v for k, v in r["success_by_budget"].items()} for r in table}
    ev.plot_success_vs_budget(curves, OUT / "success_vs_budget.png")
    for r in table:
        holds = "holds" if r["conagents_success"] > r["react_success"] else "does not hold"
        print(f"{r['model']}: ConAgents {r['conagents_success']:.1f}% vs ReAct {r['react_success']:.1f}% success "
              f"(paper ordering {holds}); GenGround {r['genground_acc']:.1f}% vs retrieve-then-read "
              f"{r['rtr_acc']:.1f}% acc")
    result = {"quality": table}
    ok = True
    if not args.no_serving:
        srv = serving(args.clients, args.requests)
        result["serving"] = srv
        print(json.dumps(srv))
        ok = srv["errors"] == 0
    (OUT / "results.json").write_text(json.dumps(result, indent=1, default=str))
    ratios = [r["conagents_success"] / max(r["react_success"], 1e-9) for r in table if r["model"] != "oracle"]
    ratio = ratios[0] if ratios else float("nan")
    if "serving" in result:
        s = result["serving"]
        print(f"agents serving: {s['rps']:.1f} req/s, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, "
              f"errors {s['errors']}; ConAgents/ReAct success ratio {ratio:.2f}")
    else:
        print(f"agents: ConAgents/ReAct success ratio {ratio:.2f}")
    return 0 if ok or args.no_enforce else 1


if __name__ == "__main__":
    sys.exit(main())
