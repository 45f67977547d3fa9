"""`lathe agents run`: run ConAgents / ReAct on sandbox tasks or GenGround / retrieve-then-read on
multi-hop questions with a chosen model; print the metric table, write trajectories.jsonl and
metrics.json.

  lathe agents run --method conagents --model oracle            # the gold-path teacher (no model)
  lathe agents run --method react --model distilled --tasks 5   # the embedded default (cached student)
  lathe agents run --method genground --model base --questions-file hotpot_dev.json --format hotpotqa
  lathe agents run --method conagents --model runs/x/artifact --task-file tmdb.json

Tasks: the held-out split of the synthetic tasks of `--domain` (world `--seed`, the world the sandbox
serves), or a RestBench task file in either published layout. Runs are in-process against the
in-process sandbox and corpus; `lathe serve configs/serve/agents.yaml` serves the same agents.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cmd_run(args) -> int:
    from lathe.data import multihop as mh
    from lathe.data import restbench as rb
    from lathe.eval import agents as ev
    from lathe.jobs.agents_student import model_backends
    from lathe.methods.agents import runs
    from lathe.platform.errors import LatheError

    if args.tasks is not None and args.tasks < 1:
        raise LatheError("--tasks: must be >= 1")
    out = Path(args.out)
    if args.method in runs.TASK_METHODS:
        world = rb.build_world(args.seed)
        if args.task_file:
            tf = rb.load_tasks(args.task_file, args.domain)
            tasks = tf.tasks
        else:
            tf = rb.generate(args.domain, args.seed, world)
            tasks = tf.tasks if args.split == "all" else rb.split_tasks(tf.tasks, 0.3, args.seed)[1]
        sandbox = rb.ToolSandbox(args.domain, args.seed, world=world)
        tools = tf.tools or sandbox.tools()
        tasks = tasks[: args.tasks] if args.tasks else tasks
        if not tasks:
            raise LatheError("no tasks to run")
        if args.model == "oracle" and any(t.plan is None for t in tasks):
            raise LatheError("--model oracle: needs synthetic tasks (a gold plan); real task files have none")

        def send(m, u, p):
            return sandbox.request(m, u, p)

        task_llm, _, cfg, _ = model_backends(args.model, send=send)
        if args.max_steps:
            from dataclasses import replace

            cfg = replace(cfg, max_steps=args.max_steps)
        trajs, metrics = runs.run_tasks(args.method, task_llm, tasks, tools, send, cfg, args.domain, args.candidates,
                                        args.seed)
        cols = ["method", "model", "tasks", "success", "path", "finished"]
    else:
        if args.questions_file:
            rows, passages = mh.load_questions(args.questions_file, args.format)
        else:
            rows, passages = mh.generate(args.seed)
        rows = rows[: args.tasks] if args.tasks else rows
        if not rows:
            raise LatheError("no questions to run")
        if args.model == "oracle" and any(not r.get("hops") for r in rows):
            raise LatheError("--model oracle: needs synthetic questions (a gold hop chain)")
        _, row_llm, _, gcfg = model_backends(args.model, passages_by_id={p["id"]: p for p in passages})
        if args.max_steps:
            from dataclasses import replace

            gcfg = replace(gcfg, max_iters=args.max_steps)
        trajs, metrics = runs.run_questions(args.method, row_llm, rows, mh.Knowledge(passages, args.knowledge,
                                                                                     args.seed), gcfg)
        cols = ["method", "model", "questions", "acc", "f1"]
    metrics = {"method": args.method, "model": args.model} | metrics
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectories.jsonl").write_text("".join(json.dumps(t, default=str) + "\n" for t in trajs))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    print(ev.table([metrics], cols, f"lathe agents run ({args.method}, {args.model})"))
    print(f"lathe agents: wrote {out / 'trajectories.jsonl'} and {out / 'metrics.json'}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    sp = subparsers.add_parser("agents", help="run the agents (ConAgents, GenGround and baselines) and score them")
    sub = sp.add_subparsers(dest="agents_cmd", required=True)
    r = sub.add_parser("run", help="run an agent method over tasks / questions with a model; print the metrics")
    r.add_argument("--method", choices=["conagents", "react", "genground", "rtr"], default="conagents")
    r.add_argument("--model", default="distilled",
                   help="oracle | distilled (the embedded default) | base | an sft artifact / model dir | "
                        "an OpenAI-compatible base URL")
    r.add_argument("--domain", choices=["tmdb", "spotify"], default="tmdb")
    r.add_argument("--seed", type=int, default=0, help="the sandbox world / corpus seed")
    r.add_argument("--tasks", type=int, default=None, help="at most this many tasks / questions")
    r.add_argument("--split", choices=["heldout", "all"], default="heldout", help="synthetic tasks to run")
    r.add_argument("--task-file", help="a RestBench task file (either published layout)")
    r.add_argument("--questions-file", help="a HotpotQA / MuSiQue / 2Wiki / StrategyQA file")
    r.add_argument("--format", default="hotpotqa", choices=["hotpotqa", "musique", "2wiki", "strategyqa", "lathe"])
    r.add_argument("--knowledge", default="index", choices=["oracle", "simulation", "index"])
    r.add_argument("--candidates", type=int, default=20, help="candidate tools per task")
    r.add_argument("--max-steps", type=int, default=None, help="tool steps (ConAgents/ReAct) or iterations")
    r.add_argument("--out", default="runs/agents-run", help="where trajectories.jsonl and metrics.json go")
    r.set_defaults(fn=_cmd_run)
