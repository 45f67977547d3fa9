"""Fine-tuning data for the LEGO assistant (the sft job's `data.builder: lego`) and the metrics run.

Row formats for the sft job:
- `v2` / `v1`: the spec's prompt layout (instruction header, `### Context:` with the rendered
  history and instruction, `### Response:`) -> the trainer response; loss on the response only.
- `agent`: the cerebral agent's own prompts (recorded from the agent itself, so training and
  inference prompts are identical) -> the next action as react_json. Built from guided assembly
  sessions on the simulator (mostly NextStep, as in the released data), so a fine-tuned model can
  drive the planning loop with real tool calls.
"""

from __future__ import annotations

import json
import random
from typing import Any, Literal

from pydantic import Field

from lathe.data.lego import Manual, chunk_manual, load_v2, v1_prompt, v2_prompt
from lathe.methods.lego.agent import AgentConfig, CerebralAgent
from lathe.methods.lego.mrta import _ASK, _QUESTIONS, chunk_manual_obj, lego_synthetic, tool_args
from lathe.methods.lego.simulator import AssemblySimulator
from lathe.methods.lego.tools import TOOL_NAMES
from lathe.platform.config import Strict
from lathe.platform.errors import ConfigError
from lathe.platform.registry import register


class LegoSFTData(Strict):
    source: Literal["synthetic", "files"] = "synthetic"
    v2_train: str | None = Field(None, description="published-layout v2 train rows (source: files)")
    v2_test: str | None = Field(None, description="published-layout v2 test rows (source: files)")
    formats: list[Literal["v2", "v1", "agent"]] = Field(default_factory=lambda: ["v2"], min_length=1)
    n_manuals: int = Field(12, ge=1)
    steps_per_manual: int = Field(20, ge=2)
    max_history: int | None = Field(None, ge=0, description="history pairs rendered in a v2 prompt; default all")
    agent_sessions: int = Field(2, ge=0, description="guided sessions per manual chunk (format agent)")
    agent_window_k: int = Field(5, ge=1)
    agent_prompt_style: Literal["full", "compact"] = "compact"
    agent_other_rate: float = Field(0.3, ge=0, le=1, description="share of session turns using other tools")
    agent_question_rate: float = Field(0.1, ge=0, le=1, description="share of session turns that are questions")
    eval_limit: int = Field(64, ge=0, description="eval rows (from the test split)")


class _Teacher:
    """Replies with a planned action; records (prompt messages, reply) for every call."""

    def __init__(self):
        self.plan: list[Any] = []
        self.records: list[tuple[list[dict], str]] = []

    def chat(self, messages, **kw) -> str:
        reply = self.plan.pop(0)
        reply = reply(messages) if callable(reply) else reply
        self.records.append(([dict(m) for m in messages], reply))
        return reply


def _act(name: str, args: dict | str) -> str:
    return json.dumps({"action": name, "action_input": args})


def session_script(sim: AssemblySimulator, rng: random.Random, other_rate: float = 0.3,
                   question_rate: float = 0.1) -> list[tuple[str, str | None, dict]]:
    """A guided session: StartAssemble, then NextStep to the last step with other tools and questions
    mixed in, then FinishedVideo. [(utterance, tool or None, args)]; the simulator is not changed."""
    probe = AssemblySimulator(manual=sim.manual, n_steps=sim.n_steps)
    turns = [(rng.choice(_ASK["StartAssemble"]), "StartAssemble", {})]
    probe.call("StartAssemble")
    others = [n for n in TOOL_NAMES if n not in ("StartAssemble", "NextStep", "FinishedVideo", "GoToStep",
                                                 "FrontStep")]
    while probe.current_step < probe.n_steps:
        r = rng.random()
        if r < question_rate and probe.manual is not None:
            ent = (probe.step_pieces() or ["piece"])[0]
            turns.append((rng.choice(_QUESTIONS).format(e=ent), None, {}))
            continue
        name = rng.choice(others) if r < question_rate + other_rate else "NextStep"
        args = tool_args(name, rng, probe)
        text = rng.choice(_ASK[name])
        turns.append((text.format(**args) if args else text.split("{")[0], name, args))
        probe.call(name, args)
    turns.append((rng.choice(_ASK["FinishedVideo"]), "FinishedVideo", {}))
    return turns


def tool_answer(name: str, observation: str) -> str:
    """The trainer's short report of a tool call: its first clause (e.g. 'Moved on to step 3 of 5.')."""
    text = observation.split("got a response: ", 1)[-1].strip()
    head = text.split(": ", 1)[0].split(". ", 1)[0].rstrip(".")
    return f"I used {name}. {head}."


def agent_rows(manual: Manual, rng: random.Random, cfg: AgentConfig, other_rate: float = 0.3,
               question_rate: float = 0.1) -> list[dict]:
    """{messages, answer} rows recorded from the agent over one guided session on `manual`."""
    teacher = _Teacher()
    sim = AssemblySimulator(manual=manual)
    agent = CerebralAgent(teacher, manual, cfg)
    for utterance, name, args in session_script(sim, rng, other_rate, question_rate):
        if name is None:
            step = manual.step(sim.current_step)
            teacher.plan = [_act("Final Answer", f"Follow the manual here: {step.text}")]
        else:
            teacher.plan = [_act(name, args), lambda m, n=name: _act("Final Answer", tool_answer(n, m[-1]["content"]))]
        agent.run_turn(utterance, sim.call)
    return [{"messages": msgs, "answer": reply} for msgs, reply in teacher.records]


def build_rows(opts: dict, seed: int) -> tuple[list[dict], list[dict]]:
    """The sft job's `data.builder: lego`: (train rows, eval rows)."""
    from pydantic import ValidationError

    from lathe.platform.config import describe

    try:
        o = LegoSFTData.model_validate(opts)
    except ValidationError as e:
        raise ConfigError(f"data.builder_options: {describe(e, LegoSFTData)}") from None
    rows: list[dict] = []
    test: list[dict] = []
    if o.source == "files":
        if not o.v2_train:
            raise ConfigError("data.builder_options.v2_train: required with source: files")
        v2 = {"train": load_v2(o.v2_train), "test": load_v2(o.v2_test) if o.v2_test else []}
        v1, manuals = {"train": [], "test": []}, []
        if "v1" in o.formats or "agent" in o.formats:
            raise ConfigError("data.builder_options.formats: only v2 is available with source: files")
    else:
        data = lego_synthetic(seed, o.n_manuals, o.steps_per_manual)
        v2, v1, manuals = data["v2"], data["v1"], data["manuals"]
    if "v2" in o.formats:
        rows += [{"prompt": v2_prompt(r, o.max_history), "answer": r["output"]} for r in v2["train"]]
        test += [{"prompt": v2_prompt(r, o.max_history), "answer": r["output"]} for r in v2["test"]]
    if "v1" in o.formats:
        rows += [{"prompt": v1_prompt(r), "answer": r["output"]} for r in v1["train"]]
        test += [{"prompt": v1_prompt(r), "answer": r["output"]} for r in v1["test"]]
    if "agent" in o.formats and o.agent_sessions:
        rng = random.Random(seed + 7)
        cfg = AgentConfig(prompt_style=o.agent_prompt_style, window_k=o.agent_window_k)
        for m in manuals:
            for chunk in chunk_manual(m):
                for _ in range(o.agent_sessions):
                    rows += agent_rows(chunk_manual_obj(chunk), rng, cfg, o.agent_other_rate,
                                       o.agent_question_rate)
    random.Random(seed).shuffle(rows)
    return rows, test[: o.eval_limit]


register("sft_data", "lego")(build_rows)
