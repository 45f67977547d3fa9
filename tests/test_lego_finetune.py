"""Fine-tuning the LEGO assistant through the sft job (Ray Train), the metrics script, and a fine-tuned
(not scripted) model driving the agent through a whole assembly session with real tool calls."""

from __future__ import annotations

import json

import pytest
import yaml

from lathe.platform.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_configs_start_with_their_command_and_the_default_recipe_matches():
    from pathlib import Path

    from lathe.jobs.lego_assistant import DEFAULT_RECIPE

    root = Path(__file__).resolve().parents[1] / "configs"
    for p in list((root / "lego").glob("*.yaml")) + [root / "serve" / "lego.yaml"]:
        first = p.read_text().splitlines()[0]
        assert first.startswith("#") and ("lathe run" in p.read_text() or "lathe serve" in p.read_text()), p
    assert yaml.safe_load((root / "lego" / "finetune_melora.yaml").read_text()) == DEFAULT_RECIPE


def test_builder_rows_follow_the_spec_layout():
    from lathe.methods.lego.finetune import build_rows

    rows, test = build_rows({"formats": ["v2", "agent"], "n_manuals": 2, "steps_per_manual": 10, "eval_limit": 5}, 0)
    v2 = [r for r in rows if "prompt" in r]
    agent = [r for r in rows if "messages" in r]
    assert v2 and agent and len(test) == 5
    p = v2[0]["prompt"]
    assert p.startswith("Below is a conversation between an assistant") and "\n### Context:\n" in p
    assert p.endswith("\n### Response:\n") and v2[0]["answer"] and "### Response" not in v2[0]["answer"]
    a = agent[0]
    assert a["messages"][0]["role"] == "system" and json.loads(a["answer"])["action"]
    names = {json.loads(r["answer"])["action"] for r in agent}
    assert {"StartAssemble", "NextStep", "FinishedVideo", "Final Answer"} <= names
    with pytest.raises(ConfigError, match="formats"):
        build_rows({"formats": ["v3"]}, 0)


def test_encode_prompt_masks_prompt_and_keeps_its_end(tiny_tokenizer):
    from lathe.methods.sft import IGNORE, encode_prompt

    enc = encode_prompt(tiny_tokenizer, "word " * 200 + "LAST", "the answer", max_length=64)
    assert len(enc["input_ids"]) == 64
    n_target = sum(1 for x in enc["labels"] if x != IGNORE)
    assert n_target == len(tiny_tokenizer("the answer", add_special_tokens=False)["input_ids"]) + 1
    prompt = tiny_tokenizer.decode(enc["input_ids"][: 64 - n_target])
    assert prompt.endswith("LAST")


@pytest.mark.slow  # ~60 s; the metrics are unit-tested in test_lego_eval, the v2 builder above
@pytest.mark.ray
def test_qlora_sft_20_steps_on_v2_then_metrics_script(ray_local, tmp_path, capsys):
    from lathe.jobs.lego_eval import main as metrics_main
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir

    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "lego" / "finetune_qlora.yaml", [
        f"output_root={tmp_path}", "model.preset=tiny-1m", "model.tokenizer_vocab=512", "train.max_steps=20",
        "train.batch_size=4", "train.grad_accum=1", "train.precision=auto", "train.lr=5e-3", "data.max_length=96",
        "data.builder_options.n_manuals=3", "data.builder_options.steps_per_manual=10",
        "data.builder_options.eval_limit=8", "train.checkpoint_every=20"])
    assert cfg.quantization == "nf4" and cfg.method == "lora"
    res = lookup("job", "sft")().run(cfg, RunDir.create(cfg), show_progress=False)
    out = capsys.readouterr().out
    assert "quantization nf4 skipped (no CUDA GPU)" in out
    assert res["steps"] == 20 and res["final_loss"] < res["first_loss"]
    assert metrics_main([res["artifact"], "--n-manuals", "3", "--steps-per-manual", "10", "--limit", "4",
                         "--max-new-tokens", "8", "--out", str(tmp_path / "eval")]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"bleu", "rougeL", "tool_acc", "theme_acc"} <= set(scores) and scores["rows"] == 4
    assert (tmp_path / "eval" / "report.md").is_file()


@pytest.mark.ray
def test_finetuned_tiny_model_drives_a_5_turn_session_to_the_last_step(ray_local, tmp_path):
    """The model is trained here (not scripted); its own outputs choose the tools."""
    from lathe.data.lego import generate_manual
    from lathe.jobs.sft import load_artifact
    from lathe.methods.agents.llm import TransformersChat
    from lathe.methods.lego import AssemblySimulator
    from lathe.methods.lego.agent import AgentConfig, CerebralAgent
    from lathe.platform.config import validate
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir

    cfg = validate({"job": "sft", "name": "lego-agent", "output_root": str(tmp_path), "method": "full",
                    "model": {"preset": "tiny-1m", "tokenizer_vocab": 1024},
                    "data": {"builder": "lego", "max_length": 192, "builder_options": {
                        "formats": ["agent"], "n_manuals": 10, "steps_per_manual": 5, "agent_sessions": 4,
                        "agent_other_rate": 0.0, "agent_question_rate": 0.0, "agent_window_k": 2, "eval_limit": 0}},
                    "train": {"max_steps": 150, "batch_size": 8, "lr": 5e-3, "warmup_steps": 5,
                              "checkpoint_every": 1000},
                    "ray": {"num_workers": 1}}, "test")
    res = lookup("job", "sft")().run(cfg, RunDir.create(cfg), show_progress=False)
    model, tok = load_artifact(res["artifact"])
    llm = TransformersChat(model, tok, max_context=256)  # the context it was trained on (192 + the reply)
    manual = generate_manual(4242, 5)  # a manual it never saw
    sim = AssemblySimulator(manual=manual)
    agent = CerebralAgent(llm, manual, AgentConfig(prompt_style="compact", window_k=2, max_new_tokens=64))
    called = []
    script = ["Let's start assembling, please."] + ["Done with this one, next step please."] * 4
    for utterance in script:
        out = agent.run_turn(utterance, lambda n, a: called.append(n) or sim.call(n, a))
        assert out.answer
    assert sim.current_step == manual.n_steps == 5
    assert called[0] == "StartAssemble" and called.count("NextStep") >= 4


@pytest.mark.slow
def test_embedded_default_smollm2_drives_a_5_turn_session(ray_local):
    """The embedded default (SmolLM2-135M-Instruct + MELoRA, trained on first use and cached) completes a
    scripted assembly session through its own tool calls."""
    from lathe.data.lego import generate_manual
    from lathe.jobs.lego_assistant import assistant_dir
    from lathe.methods.agents.llm import TransformersChat
    from lathe.methods.lego import AssemblySimulator
    from lathe.methods.lego.agent import AgentConfig, CerebralAgent

    llm = TransformersChat.from_dir(str(assistant_dir(show_progress=False)), max_context=2048)
    manual = generate_manual(4242, 5)
    sim = AssemblySimulator(manual=manual)
    agent = CerebralAgent(llm, manual, AgentConfig(prompt_style="compact", max_new_tokens=64))
    called = []
    for utterance in ["Let's start assembling, please."] + ["Done with this one, next step please."] * 4:
        agent.run_turn(utterance, lambda n, a: called.append(n) or sim.call(n, a))
    assert sim.current_step == 5 and "NextStep" in called
