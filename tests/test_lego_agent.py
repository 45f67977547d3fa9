"""The cerebral agent: planning loop, argument checks, retries, memory, both modes."""

from __future__ import annotations

import pytest
from lego_helpers import ReplayLLM, act, final

from lathe.data.lego import generate_manual
from lathe.methods.lego import AssemblySimulator
from lathe.methods.lego.agent import AgentConfig, CerebralAgent, parse_function_call, parse_react
from lathe.methods.lego.prompts import SYSTEM


def _agent(replies, **cfg):
    m = generate_manual(1, 12)
    sim = AssemblySimulator(manual=m)
    llm = ReplayLLM(replies)
    return CerebralAgent(llm, m, AgentConfig(**cfg)), sim, llm


def test_react_turn_calls_the_tool_then_answers():
    agent, sim, llm = _agent([act("NextStep"), final("On to step 2.")])
    calls = []
    out = agent.run_turn("next please", lambda n, a: calls.append((n, a)) or sim.call(n, a))
    assert calls == [("NextStep", {})] and sim.current_step == 2 and out.answer == "On to step 2."
    assert len(llm.prompts) == 2
    sys = llm.prompts[0][0]["content"]
    assert llm.prompts[0][0]["role"] == "system" and sys.startswith(SYSTEM) and "I don't know" in sys
    assert "HighlightCorrectComponents" in sys and "Step 1:" in sys and "Examples:" in sys
    obs = llm.prompts[1][-1]["content"]
    assert obs.startswith("Observation: Called the Unity tool NextStep and got a response: Moved on to step 2")
    assert agent.view["current_step"] == 2


def test_invalid_arguments_and_unknown_tools_are_error_observations():
    agent, sim, llm = _agent([act("GoToStep", {"step": "three"}), act("Teleport"), act("Rotate", {"direction": "Up"}),
                              final("Done")])
    calls = []
    out = agent.run_turn("go", lambda n, a: calls.append(n) or sim.call(n, a))
    assert calls == ["Rotate"]  # the bad calls never reach the transport
    oks = [c["ok"] for c in out.tool_calls]
    assert oks == [False, False, True]
    assert "Error: GoToStep.step: expected an integer" in out.tool_calls[0]["observation"]
    assert "unknown tool 'Teleport'" in llm.prompts[2][-1]["content"]


def test_unparseable_output_is_retried_twice_with_the_error_quoted():
    agent, sim, llm = _agent(["hmm", '{"action": ', act("NextStep"), final("ok")])
    out = agent.run_turn("next", sim.call)
    assert out.parse_failures == 2 and out.answer == "ok" and sim.current_step == 2
    assert "could not be parsed: no JSON object found" in llm.prompts[1][-1]["content"]
    assert "could not be parsed: invalid JSON" in llm.prompts[2][-1]["content"]
    agent, sim, llm = _agent(["no json here"])
    out = agent.run_turn("next", sim.call)
    assert len(llm.prompts) == 3 and out.parse_failures == 3 and out.answer == "no json here"


def test_at_most_max_tool_calls_per_turn():
    agent, sim, llm = _agent([act("NextStep")], max_tool_calls=3)
    out = agent.run_turn("keep going", sim.call)
    assert len(out.tool_calls) == 3 and sim.current_step == 4
    assert out.answer.startswith("Moved on to step 4")  # falls back to the last observation


def test_window_memory_keeps_last_5_exchanges_with_tool_summaries():
    def reply(messages):
        last = messages[-1]["content"]
        if last.startswith("Observation:"):
            return final("done " + messages[-3]["content"].split()[-1])
        return act("NextStep")

    agent, sim, llm = _agent([reply], window_k=5)
    for i in range(7):
        agent.run_turn(f"turn {i}", sim.call)
    agent.run_turn("turn 7", sim.call)
    prompt = llm.prompts[-2]  # first call of the last turn
    users = [m["content"] for m in prompt if m["role"] == "user"]
    assert users == [f"turn {i}" for i in range(2, 8)]
    assistants = [m["content"] for m in prompt if m["role"] == "assistant"]
    assert len(assistants) == 5 and all(a.startswith("[NextStep() -> Moved on to step") for a in assistants)
    assert "turn 1" not in str(prompt)
    buffer_agent, sim2, llm2 = _agent([reply], memory="buffer")
    for i in range(7):
        buffer_agent.run_turn(f"turn {i}", sim2.call)
    assert sum(m["role"] == "user" for m in llm2.prompts[-2]) == 7


def test_context_lines_and_state_resume():
    agent, sim, llm = _agent([act("GetCurrentStep"), final("You are at step 1.")])
    agent.add_context("gesture: thumbs up")
    agent.observe_state({"current_step": 5})
    agent.run_turn("where am I", sim.call)
    assert llm.prompts[0][-1]["content"] == "[context] gesture: thumbs up\nwhere am I"
    assert "The trainee is at step 5 of 12" in llm.prompts[0][0]["content"]
    fresh = CerebralAgent(ReplayLLM([final("x")]), agent.manual, agent.cfg)
    fresh.load_state_dict(agent.state_dict())
    assert [e.user for e in fresh.memory.visible()] == ["where am I"]


def test_function_calling_mode():
    agent, sim, llm = _agent(['<tool_call>{"name": "GoToStep", "arguments": {"step": 4}}</tool_call>',
                              "We are at step 4 now."], mode="function_calling")
    out = agent.run_turn("go to step 4", sim.call)
    assert sim.current_step == 4 and out.answer == "We are at step 4 now."
    assert llm.prompts[1][-1]["role"] == "tool" and '"GoToStep"' in llm.prompts[0][0]["content"]
    assert parse_function_call('{"name": "NextStep", "arguments": "{}"}').name == "NextStep"
    assert parse_react('```json\n{"action": "Final Answer", "action_input": "hi"}\n```').args == "hi"


def test_config_errors():
    with pytest.raises(ValueError, match="agent.mode"):
        AgentConfig(mode="react")
    with pytest.raises(ValueError, match="window_k"):
        AgentConfig(window_k=0)
