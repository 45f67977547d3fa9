"""Distillation: per-role (SPAN) and IGD exporters with their filters, and the sft job on oracle
trajectories making a student better on held-out tasks than the undistilled model."""

from __future__ import annotations

import pytest

from lathe.data import multihop as mh
from lathe.data import restbench as rb
from lathe.methods.agents import distill as ds
from lathe.methods.agents.conagents import ConAgentsConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDENT = ConAgentsConfig(prompt_style="compact", review_llm=False, long_response_tokens=10 ** 9,
                          response_chars=300, max_tokens=96, max_steps=3, exec_retries=1, grounding_retries=1)


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


def _success(llm_factory, tasks, tools, world):
    from lathe.eval.agents import score_conagents
    from lathe.methods.agents.conagents import ConAgents

    sb = rb.ToolSandbox("tmdb", 0, world=world)
    trajs = [ConAgents(llm_factory(), rb.candidate_tools(t, tools), lambda m, u, p: sb.request(m, u, p),
                       STUDENT, domain="tmdb").run(t.query) for t in tasks]
    return score_conagents(tasks, trajs)


@pytest.mark.slow  # 120 sft steps + student rollouts: 5 min on the loaded 2-core machine
def test_sft_on_oracle_trajectories_beats_the_undistilled_student(ray_local, tmp_path):
    import torch

    from lathe.jobs.sft import evaluate
    from lathe.methods.agents.llm import TransformersChat
    from lathe.methods.peft.artifact import load_artifact
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir
    from lathe.platform.zoo import build_tiny

    world = rb.build_world(0)
    tf = rb.generate("tmdb", 0, world)
    # one task family (who directed <movie>?): held-out tasks differ only in the movie
    family = [t for t in tf.tasks if t.query.startswith("Who directed")]
    train, held = family[:9], family[9:]
    cfg = STUDENT
    train_rows = ds.to_sft_rows(ds.oracle_conagents_records(train, tf.tools, world, "tmdb", cfg))
    held_rows = ds.to_sft_rows(ds.oracle_conagents_records(held, tf.tools, world, "tmdb", cfg))
    ds.write_jsonl(train_rows, tmp_path / "train.jsonl")
    ds.write_jsonl(held_rows, tmp_path / "held.jsonl")
    job_cfg = load_config("configs/agents/distill_tiny.yaml", [
        f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'held.jsonl'}", f"output_root={tmp_path}",
        "train.max_steps=120", "train.batch_size=8", "data.max_length=320"])
    run = RunDir.create(job_cfg)
    res = lookup("job", "sft")().run(job_cfg, run, show_progress=False)
    assert res["final_loss"] < res["first_loss"] * 0.5

    model, tok = load_artifact(res["artifact"])
    base = build_tiny("tiny-1m", vocab_size=len(tok), seed=job_cfg.seed)
    before = evaluate(base, tok, held_rows, 320)
    after = evaluate(model, tok, held_rows, 320)
    assert after["eval_loss"] < before["eval_loss"] - 1.0 and after["eval_token_acc"] > before["eval_token_acc"] + 0.2

    torch.manual_seed(0)
    distilled = _success(lambda: TransformersChat(model, tok, max_context=512, prompt_style="sft"), held, tf.tools, world)
    undistilled = _success(lambda: TransformersChat(base, tok, max_context=512, prompt_style="sft"), held, tf.tools,
                           world)
    assert distilled["path"] > undistilled["path"]
    assert distilled["success"] >= undistilled["success"]
    print("distilled", distilled["success"], distilled["path"], "undistilled", undistilled["success"],
          undistilled["path"])


@pytest.mark.slow
def test_smollm2_lora_student_beats_base_on_held_out_tasks(ray_local, tmp_path):
    """The real model: SmolLM2-135M-Instruct + LoRA (sft job) on oracle trajectories vs the base model."""
    from lathe.methods.agents.llm import TransformersChat
    from lathe.methods.peft.artifact import load_artifact
    from lathe.platform.config import load_config
    from lathe.platform.pretrained import pretrained_dir
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir

    world = rb.build_world(0)
    tf = rb.generate("tmdb", 0, world)
    family = [t for t in tf.tasks if t.query.startswith("Who directed")]
    train, held = family[:9], family[9:]
    rows = ds.to_sft_rows(ds.oracle_conagents_records(train, tf.tools, world, "tmdb", STUDENT))
    ds.write_jsonl(rows, tmp_path / "train.jsonl")
    cfg = load_config("configs/agents/distill_smollm2_lora.yaml", [
        f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'train.jsonl'}", f"output_root={tmp_path}",
        "train.max_steps=40"])
    res = lookup("job", "sft")().run(cfg, RunDir.create(cfg), show_progress=False)
    model, tok = load_artifact(res["artifact"])
    student = _success(lambda: TransformersChat(model, tok, prompt_style="sft"), held, tf.tools, world)
    base = TransformersChat.from_dir(str(pretrained_dir("smollm2-135m-instruct")))
    undistilled = _success(lambda: base.clone(), held, tf.tools, world)
    assert student["success"] > undistilled["success"]
