"""Distillation data: specialised action distillation (SPAN, per-role ConAgents records) and
instructional grounding distillation (IGD, GenGround records), exported as the sft job's QA JSONL.

SPAN record: `{role: grounding|execution|observing|review, messages, target, q_id, oracle}` — one
per accepted LLM call of a successful trajectory (a JSON-mode call only when its reply parsed).
IGD record: `{instruction, question, sub_question, candidate_answer, documents, target}`; the target
is `<ref> citation </ref> <revise> answer </revise> ###Finish[answer]`. The IGD filters drop an
empty `<ref>`, a missing `<revise>`, and a revised answer the gold evidence does not contain.

`flatten_messages` is the student's prompt: the same text at training (sft job) and at inference
(`TransformersChat(prompt_style="sft")`). For the compact prompts (one user message each) it equals
what the LLM app's chat template renders, so a distilled model can also be served by the LLM app.

`student_config()` is the ConAgents configuration a distilled student is trained and run with, and
`span_rows` is the sft job's `data.builder: agents_span` (oracle SPAN rows from seeded worlds).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lathe.platform.registry import register

ROLES = ("grounding", "execution", "observing", "review")


def student_config(**overrides):
    """ConAgents for a small distilled student: compact prompts; every response takes the code path
    (the student writes the same short extraction program for a tool whatever the values, and the
    sandboxed interpreter reads the values, so no truncated response hides them); greedy code; no
    LLM review; a few short steps. Teacher data and student runs both use it."""
    from lathe.methods.agents.conagents import ConAgentsConfig

    base = dict(prompt_style="compact", review_llm=False, long_response_tokens=0, code_temperature=0.0,
                code_attempts=1, response_chars=300, max_tokens=96, max_steps=3, exec_retries=1, grounding_retries=1)
    return ConAgentsConfig(**(base | overrides))


def flatten_messages(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user", "assistant"))


def span_records(log: list[dict], q_id: str, success: bool, oracle: bool) -> list[dict]:
    """Per-role records from one trajectory's LLM call log (kept only when the task succeeded)."""
    if not success:
        return []
    out = []
    for r in log:
        role = r.get("tag")
        if role not in ROLES or r.get("output") is None or r.get("json_ok") is False:
            continue
        out.append({"role": role, "messages": r["messages"], "target": r["output"], "q_id": q_id, "oracle": oracle})
    return out


def igd_target(citation: str, answer: str) -> str:
    return f"<ref> {citation} </ref>\n<revise> {answer} </revise>\n###Finish[{answer}]"


def igd_records(trajectory: dict, row: dict, passages_by_id: dict, instruction: str) -> list[dict]:
    """Grounded steps of a GenGround trajectory as IGD records (before filtering)."""
    out = []
    for s in trajectory.get("steps", []):
        if s.get("finish"):
            continue
        cite = s.get("citation") or "Empty"
        out.append({"instruction": instruction, "question": row["question"], "sub_question": s["sub_question"],
                    "candidate_answer": s.get("candidate", ""), "documents": s.get("documents", []),
                    "target": igd_target(cite, s["answer"]), "qid": row.get("qid")})
    return out


def igd_filter(records: list[dict], gold_texts: dict[str, str] | None = None) -> list[dict]:
    """Drop `<ref> Empty </ref>`, records without `<revise>` tags, and (with `gold_texts`,
    qid -> the gold evidence) revised answers the evidence does not contain."""
    kept = []
    for r in records:
        t = r["target"]
        ref = re.search(r"<ref>(.*?)</ref>", t, re.S)
        rev = re.search(r"<revise>(.*?)</revise>", t, re.S)
        if not ref or not ref.group(1).strip() or ref.group(1).strip().lower() == "empty" or not rev:
            continue
        if not re.search(r"###Finish\[.*\]\s*$", t):
            continue
        if gold_texts is not None:
            gold = gold_texts.get(r.get("qid"), "")
            if rev.group(1).strip().lower() not in gold.lower():
                continue
        kept.append(r)
    return kept


def igd_prompt(r: dict) -> str:
    docs = "\n".join(r["documents"])
    return (f"{r['instruction']}\nDocuments:\n\"\"\"\n{docs}\n\"\"\"\nQuestion: {r['sub_question']}\n"
            f"Candidate answer: {r['candidate_answer']}")


def to_sft_rows(records: list[dict]) -> list[dict]:
    """The sft job's QA rows: {question: student prompt, answer: target} (SPAN or IGD records)."""
    rows = []
    for r in records:
        q = flatten_messages(r["messages"]) if "messages" in r else igd_prompt(r)
        rows.append({"question": q, "answer": r["target"]})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def oracle_conagents_records(tasks, tools, world: dict, domain: str, cfg=None, seed: int = 0) -> list[dict]:
    """Run ConAgents with the gold-path oracle over the in-process sandbox; SPAN records of the
    successful trajectories, marked `oracle: true`."""
    from lathe.data.restbench import ToolSandbox, candidate_tools
    from lathe.eval.agents import auto_success
    from lathe.methods.agents.conagents import ConAgents
    from lathe.methods.agents.oracle import OracleConAgents

    sb = ToolSandbox(domain, seed, world=world)

    def send(m, u, p):
        return sb.request(m, u, p)

    out = []
    for t in tasks:
        llm = OracleConAgents(t, send)
        traj = ConAgents(llm, candidate_tools(t, tools, seed=seed), send, cfg, domain=domain).run(t.query)
        out += span_records(llm.log, t.q_id, auto_success(traj["answer"], t.answer) == 1.0, oracle=True)
    return out


def oracle_igd_records(rows: list[dict], passages: list[dict], mode: str = "simulation", cfg=None) -> list[dict]:
    """GenGround with the oracle teacher; filtered IGD records (gold evidence = the hop passages)."""
    from lathe.data.multihop import Knowledge
    from lathe.methods.agents.genground import GROUND_INSTRUCTION, GenGround
    from lathe.methods.agents.oracle import OracleGenGround

    by_id = {p["id"]: p for p in passages}
    know = Knowledge(passages, mode)
    recs, gold = [], {}
    for r in rows:
        traj = GenGround(OracleGenGround(r, by_id), know.for_question(r), cfg).answer(r["question"])
        recs += igd_records(traj, r, by_id, GROUND_INSTRUCTION)
        gold[r["qid"]] = " ".join(by_id[i]["text"] for i in r["gold_passage_ids"] if i in by_id)
    return igd_filter(recs, gold)


@register("sft_data", "agents_span")
def span_rows(opts: dict, seed: int) -> tuple[list[dict], list[dict]]:
    """The sft job's `data.builder: agents_span`: (train rows, eval rows) of oracle SPAN records.
    Options: `domain` (tmdb), `train_worlds` (list of world seeds; default [1, 2, 3]), `eval_world`
    (the held-out world, default 0, the one the sandbox serves), `query_prefix` (keep only tasks whose
    query starts with it), `eval_limit` (at most this many eval tasks)."""
    from lathe.data import restbench as rb
    from lathe.platform.errors import ConfigError

    known = {"domain", "train_worlds", "eval_world", "query_prefix", "eval_limit"}
    bad = sorted(set(opts) - known)
    if bad:
        raise ConfigError(f"data.builder_options: unknown option(s) {', '.join(bad)} for agents_span "
                          f"(known: {', '.join(sorted(known))})")
    domain = opts.get("domain", "tmdb")
    prefix = opts.get("query_prefix") or ""
    cfg = student_config()

    def world_rows(w: int, limit: int | None = None) -> list[dict]:
        world = rb.build_world(w)
        tf = rb.generate(domain, w, world)
        tasks = [t for t in tf.tasks if t.query.startswith(prefix)][:limit]
        return to_sft_rows(oracle_conagents_records(tasks, tf.tools, world, domain, cfg, seed))

    train = [r for w in opts.get("train_worlds", [1, 2, 3]) for r in world_rows(int(w))]
    held = world_rows(int(opts.get("eval_world", 0)), opts.get("eval_limit"))
    if not train:
        raise ConfigError(f"data.builder_options: no {domain} task matches query_prefix {prefix!r}")
    return train, held
