"""Run an agent method over a task or question set and score it: the one loop behind
`lathe agents run` and benchmarks/agents.py.

`llm_for(item)` gives the client for one task (ConAgents / ReAct) or question (GenGround /
retrieve-then-read); a factory, because the oracle teacher is built per item from its gold plan.
Every run returns (trajectories, metrics); a trajectory carries its item id and its scores.
"""

from __future__ import annotations

from typing import Callable

from lathe.eval import agents as ev

TASK_METHODS = ("conagents", "react")
QA_METHODS = ("genground", "rtr")


def run_tasks(method: str, llm_for: Callable, tasks, tools, send, cfg, domain: str, candidates: int = 20,
              seed: int = 0) -> tuple[list[dict], dict]:
    """ConAgents or the ReAct baseline over sandbox tasks: Success% and Path%."""
    from lathe.data.restbench import candidate_tools
    from lathe.methods.agents.conagents import ConAgents, react_run

    if method not in TASK_METHODS:
        raise ValueError(f"method: expected one of {', '.join(TASK_METHODS)} (got {method!r})")
    trajs = []
    for t in tasks:
        cands = candidate_tools(t, tools, candidates, seed=seed)
        llm = llm_for(t)
        if method == "conagents":
            out = ConAgents(llm, cands, send, cfg, domain=domain).run(t.query)
        else:
            out = react_run(llm, cands, send, t.query, max_steps=cfg.max_steps, max_tokens=cfg.max_tokens,
                            seed=cfg.seed)
        out |= {"q_id": t.q_id, "gold": t.answer, "success": ev.auto_success(out.get("answer"), t.answer),
                "path": ev.path_rate(t.solution, out.get("calls", [])), "llm_calls": len(llm.log)}
        trajs.append(out)
    metrics = ev.score_conagents(tasks, trajs)
    metrics["success_by_budget"] = ev.success_by_budget(tasks, trajs, list(range(1, max(cfg.max_steps, 1) + 1)))
    return trajs, metrics


def run_questions(method: str, llm_for: Callable, rows: list[dict], knowledge, cfg) -> tuple[list[dict], dict]:
    """GenGround or retrieve-then-read over multi-hop questions: cover-EM (acc) and F1."""
    from lathe.methods.agents.genground import GenGround, retrieve_then_read

    if method not in QA_METHODS:
        raise ValueError(f"method: expected one of {', '.join(QA_METHODS)} (got {method!r})")
    trajs = []
    for r in rows:
        llm = llm_for(r)
        retrieve = knowledge.for_question(r)
        if method == "genground":
            out = GenGround(llm, retrieve, cfg).answer(r["question"])
        else:
            out = retrieve_then_read(llm, retrieve, r["question"], cfg.n_docs, cfg.max_tokens, cfg.seed)
        out |= {"qid": r["qid"], "gold": r["answers"], "acc": ev.cover_em(out["answer"], r["answers"]),
                "f1": ev.f1_score(out["answer"], r["answers"]), "llm_calls": len(llm.log)}
        trajs.append(out)
    return trajs, ev.score_qa(rows, [t["answer"] for t in trajs])
