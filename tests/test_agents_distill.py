"""Distillation: per-role (SPAN) and IGD exporters with their filters, and the sft job on oracle
trajectories making a student better on held-out tasks than the undistilled model."""

from __future__ import annotations

import pytest

from lathe.data import multihop as mh
from lathe.data import restbench as rb
from lathe.eval.agents import score_conagents
from lathe.methods.agents import distill as ds
from lathe.methods.agents.conagents import ConAgents

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_span_records_keep_successful_accepted_calls_only():
    log = [{"tag": "grounding", "messages": [{"role": "user", "content": "q"}], "output": "t\nAPI Selection: GET /a"},
           {"tag": "execution", "messages": [{"role": "user", "content": "e"}], "output": "junk", "json_ok": False},
           {"tag": "execution", "messages": [{"role": "user", "content": "e"}], "output": '{"url": "/a"}', "json_ok": True},
           {"tag": "deduce", "messages": [{"role": "user", "content": "x"}], "output": "y"},
           {"tag": "observing", "messages": [{"role": "user", "content": "o"}], "output": None, "error": "boom"}]
    recs = ds.span_records(log, "t1", success=True, oracle=True)
    assert [(r["role"], r["target"]) for r in recs] == [("grounding", "t\nAPI Selection: GET /a"),
                                                        ("execution", '{"url": "/a"}')]
    assert all(r["oracle"] and r["q_id"] == "t1" for r in recs)
    assert ds.span_records(log, "t1", success=False, oracle=True) == []
    rows = ds.to_sft_rows(recs)
    assert rows[0] == {"question": "q", "answer": "t\nAPI Selection: GET /a"}


def test_igd_filters_and_oracle_records():
    good = {"target": ds.igd_target("X was born in Y.", "Y"), "qid": "a"}
    empty = {"target": ds.igd_target("Empty", "Y"), "qid": "a"}
    no_rev = {"target": "<ref> X </ref>\n###Finish[Y]", "qid": "a"}
    wrong = {"target": ds.igd_target("X was born in Y.", "Z"), "qid": "a"}
    assert ds.igd_filter([good, empty, no_rev, wrong], {"a": "X was born in Y."}) == [good]
    rows, passages = mh.generate(0)
    recs = ds.oracle_igd_records(rows[:6], passages)
    assert recs and all(r["target"].rstrip().endswith("]") and "###Finish[" in r["target"] for r in recs)
    assert all(set(r) >= {"instruction", "question", "sub_question", "candidate_answer", "documents", "target"}
               for r in recs)


def _success(llm_factory, tasks, tools, world, cfg):
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    trajs = [ConAgents(llm_factory(), rb.candidate_tools(t, tools), lambda m, u, p: sb.request(m, u, p),
                       cfg, domain="tmdb").run(t.query) for t in tasks]
    return score_conagents(tasks, trajs)


def _top_rated(world_seed: int):
    world = rb.build_world(world_seed)
    tf = rb.generate("tmdb", world_seed, world)
    return next(t for t in tf.tasks if "top rated" in t.query), tf, world


# ~60 s on 2 idle cores (18 oracle tasks, 150 tiny steps, 8 one-step rollouts); measured 2026-12-02:
# distilled Success/Path 100/100, undistilled 0/0. Catches: a broken SPAN export or sft data path (the
# student never learns the protocol), or rollouts that ignore the loaded weights.
def test_sft_on_oracle_trajectories_beats_the_undistilled_student(ray_local, tmp_path):
    """tiny-1m, full FT through the sft job on oracle SPAN records ("who directed" tasks of world 1 and
    the top-rated task of worlds 1-6); held out: the top-rated task of worlds 0, 7, 8, 9 (other
    databases, other answers). A 1M-parameter model trained for seconds learns the protocol (pick the
    tool the query needs, write the request, write the extraction program) but not to copy unseen
    strings, so the held-out tasks are the one-step ones that need no copying: one tool step, and the
    answer is the observation the student's program prints in the sandboxed interpreter."""
    from lathe.methods.agents.llm import TransformersChat
    from lathe.methods.peft.artifact import load_artifact
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir
    from lathe.platform.zoo import build_tiny

    teacher = ds.student_config()
    w1 = rb.build_world(1)
    tf1 = rb.generate("tmdb", 1, w1)
    records = ds.oracle_conagents_records([t for t in tf1.tasks if t.query.startswith("Who directed")], tf1.tools,
                                          w1, "tmdb", teacher)
    for w in range(1, 7):
        task, tf, world = _top_rated(w)
        records += ds.oracle_conagents_records([task], tf.tools, world, "tmdb", teacher)
    train_rows = ds.to_sft_rows(records)
    ds.write_jsonl(train_rows, tmp_path / "train.jsonl")
    ds.write_jsonl(train_rows[:8], tmp_path / "eval.jsonl")
    job_cfg = load_config("configs/agents/distill_tiny.yaml", [
        f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'eval.jsonl'}", f"output_root={tmp_path}"])
    res = lookup("job", "sft")().run(job_cfg, RunDir.create(job_cfg), show_progress=False)
    assert res["final_loss"] < res["first_loss"] * 0.2

    model, tok = load_artifact(res["artifact"])
    base = build_tiny("tiny-1m", vocab_size=len(tok), seed=job_cfg.seed)
    cfg = ds.student_config(max_steps=1, max_tokens=64)
    scores = {}
    for name, m in (("distilled", model), ("undistilled", base)):
        trajs, tasks = [], []
        for w in (0, 7, 8, 9):
            task, tf, world = _top_rated(w)
            sb = rb.ToolSandbox("tmdb", w, world=world)
            llm = TransformersChat(m, tok, max_context=512, prompt_style="sft", json_retries=0)
            trajs.append(ConAgents(llm, rb.candidate_tools(task, tf.tools), lambda a, u, p, sb=sb: sb.request(a, u, p),
                                   cfg, domain="tmdb").run(task.query))
            tasks.append(task)
        scores[name] = score_conagents(tasks, trajs)
    assert len({t.answer for t in tasks}) == 4  # four databases, four different gold answers
    print({k: (v["success"], v["path"]) for k, v in scores.items()})
    assert scores["distilled"]["success"] > scores["undistilled"]["success"]
    assert scores["distilled"]["path"] > scores["undistilled"]["path"]


def test_agents_span_builder_feeds_the_sft_job_held_out_worlds():
    """`data.builder: agents_span`: train rows from the train worlds, eval rows from another world, and
    a clear error for an unknown option."""
    from lathe.platform.errors import ConfigError
    from lathe.platform.registry import lookup

    build = lookup("sft_data", "agents_span")
    train, held = build({"train_worlds": [1], "eval_world": 0, "query_prefix": "Who directed", "eval_limit": 1}, 0)
    heads = lambda rows: {r["question"].split("\n")[1] for r in rows if r["question"].startswith("Candidate")}
    assert len(train) == 12 * 7 and len(held) == 7  # 12 tasks x (3 grounding + 2 execution + 2 code)
    assert not heads(train) & heads(held)
    assert any(r["answer"].startswith("Final Answer:") for r in held)
    with pytest.raises(ConfigError, match="unknown option"):
        build({"worlds": [1]}, 0)


@pytest.mark.slow  # trains the embedded default once (minutes on 2 cores; cached after) + SmolLM2 rollouts
def test_smollm2_distilled_default_beats_base_on_held_out_tasks():
    """The agents' embedded default (SmolLM2-135M-Instruct + LoRA distilled on world 1) against the
    base model with the same prompts, on held-out tasks of world 0."""
    from lathe.jobs.agents_student import student_dir
    from lathe.methods.agents.llm import TransformersChat
    from lathe.platform.pretrained import pretrained_dir

    world = rb.build_world(0)
    tf = rb.generate("tmdb", 0, world)
    held = [t for t in tf.tasks if t.query.startswith("Who directed")][:3]
    student = TransformersChat.from_dir(str(student_dir()), prompt_style="sft", json_retries=0)
    base = TransformersChat.from_dir(str(pretrained_dir("smollm2-135m-instruct")), prompt_style="sft", json_retries=0)
    cfg = ds.student_config()
    distilled = _success(student.clone, held, tf.tools, world, cfg)
    undistilled = _success(base.clone, held, tf.tools, world, cfg)
    print("distilled", distilled, "base", undistilled)
    assert distilled["success"] > undistilled["success"]
