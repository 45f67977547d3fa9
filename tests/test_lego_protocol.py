"""The v1 text / v2 JSON WebSocket protocols and the session loop, without a server."""

from __future__ import annotations

import asyncio
import json

from lego_helpers import ReplayLLM, act, final
from pydantic import BaseModel

from lathe.data.lego import generate_manual
from lathe.methods.lego import AssemblySimulator, wrap
from lathe.methods.lego.agent import AgentConfig, CerebralAgent
from lathe.serve.lego_protocol import ChatSession, parse_v1, parse_v2, register_client_frame


def _session(version, transport="simulator", replies=None, timeout=0.3):
    m = generate_manual(2, 10)
    sim = AssemblySimulator(manual=m)
    agent = CerebralAgent(ReplayLLM(replies or [act("NextStep"), final("Now step 2.")]), m, AgentConfig())
    sent: list[str] = []

    async def send(text):
        sent.append(text)

    s = ChatSession(send, version, agent.run_turn, transport=transport, local_execute=sim.call,
                    tool_timeout_s=timeout, session_id="s1", on_event=lambda f: agent.add_context(f.kind),
                    on_tool_state=agent.observe_state, wrap=wrap)
    return s, sent, sim, agent


def _run(coro):
    return asyncio.run(coro)


def test_v2_next_step_turn_gives_one_tool_call_and_one_ai_frame():
    async def go():
        s, sent, sim, _ = _session("v2")
        await s.handle(json.dumps({"type": "human", "id": "h1", "session": "s1", "text": "next step"}))
        await s.drain()
        return [json.loads(x) for x in sent], sim

    frames, sim = _run(go())
    assert [f["type"] for f in frames] == ["tool_call", "ai"]
    assert frames[0]["name"] == "NextStep" and frames[0]["args"] == {}
    assert frames[1] == {"type": "ai", "id": "h1", "text": "Now step 2.", "final": True, "session": "s1"}
    assert sim.current_step == 2


def test_v1_gives_toolunity_then_ai():
    async def go():
        s, sent, sim, _ = _session("v1")
        await s.handle("Human: next step")
        await s.drain()
        return sent

    assert _run(go()) == ["ToolUnity: NextStep", "AI: Now step 2."]


def test_client_transport_answer_and_timeout():
    async def answered():
        s, sent, sim, agent = _session("v2", "client")
        await s.handle(json.dumps({"type": "human", "id": 7, "text": "next"}))
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)
        call = json.loads(sent[0])
        await s.handle(json.dumps({"type": "tool_result", "id": call["id"], "ok": True, "text": "moved",
                                   "state": {"current_step": 6}}))
        await s.drain()
        return sent, agent

    sent, agent = _run(answered())
    assert json.loads(sent[-1])["id"] == 7 and agent.view["current_step"] == 6
    prompt = agent.llm.prompts[-1][-1]["content"]
    assert prompt == "Observation: Called the Unity tool NextStep and got a response: moved"

    async def unanswered(version):
        s, sent, sim, agent = _session(version, "client", timeout=0.2)
        await s.handle(json.dumps({"type": "human", "id": "h", "text": "next"}) if version == "v2" else "Human: next")
        await s.drain()
        return sent, agent, sim

    for version in ("v2", "v1"):
        sent, agent, sim = _run(unanswered(version))
        assert agent.llm.prompts[-1][-1]["content"] == "Observation: Timeout error"
        assert len(sent) == 2 and ("AI: Now step 2." == sent[1] or json.loads(sent[1])["type"] == "ai")
        assert sim.current_step == 1  # the client owns the state in this transport

    async def v1_answered():
        s, sent, sim, agent = _session("v1", "client")
        await s.handle("Human: next")
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)
        await s.handle("Unity: now at step 2")
        await s.drain()
        return sent, agent

    sent, agent = _run(v1_answered())
    assert sent == ["ToolUnity: NextStep", "AI: Now step 2."]
    assert agent.llm.prompts[-1][-1]["content"].endswith("got a response: now at step 2")

    async def stray():
        s, sent, _, _ = _session("v2", "client")
        await s.handle(json.dumps({"type": "tool_result", "id": "nope", "text": "x"}))
        s1, sent1, _, _ = _session("v1", "client")
        await s1.handle("Unity: hello")
        return [json.loads(x)["code"] for x in sent], sent1

    codes, v1_sent = _run(stray())
    assert codes == ["unknown_call"] and v1_sent[0].startswith("Error: Unity: frame but no tool request")


def test_malformed_frames_get_error_frames_and_the_session_goes_on():
    async def go():
        s, sent, sim, agent = _session("v2")
        for bad in ("{not json", json.dumps([1]), json.dumps({"type": "dance"}), json.dumps({"type": "human"}),
                    json.dumps({"type": "human", "id": 1, "text": ""}),
                    json.dumps({"type": "event", "kind": "smell", "payload": {}}),
                    json.dumps({"type": "tool_result", "id": "nope", "text": "x"}),  # ignored: simulator transport
                    json.dumps({"type": "human", "id": 1, "session": "other", "text": "hi"})):
            await s.handle(bad)
        await s.handle(json.dumps({"type": "event", "kind": "gesture", "payload": {"g": "point"}}))
        await s.handle(json.dumps({"type": "human", "id": 2, "text": "next"}))
        await s.drain()
        return [json.loads(x) for x in sent], agent

    frames, agent = _run(go())
    codes = [f.get("code") for f in frames if f["type"] == "error"]
    assert codes == ["bad_json", "bad_frame", "unknown_type", "bad_frame", "bad_frame", "bad_frame", "bad_session"]
    assert all("\n" not in f["message"] for f in frames if f["type"] == "error")
    assert [f["type"] for f in frames[-2:]] == ["tool_call", "ai"]
    assert agent.llm.prompts[0][-1]["content"].startswith("[context] gesture")

    async def v1():
        s, sent, _, _ = _session("v1")
        await s.handle("Hello there")
        await s.handle("Human: next")
        await s.drain()
        return sent

    sent = _run(v1())
    assert sent[0].startswith("Error: v1 frames start with") and sent[1:] == ["ToolUnity: NextStep", "AI: Now step 2."]


def test_v2_can_be_extended_with_a_frame_type_from_outside():
    class SceneFrame(BaseModel):
        type: str = "scene"
        camera: list[float]

    register_client_frame("scene", SceneFrame)
    seen = []

    async def go():
        s, sent, _, _ = _session("v2")
        await s.handle(json.dumps({"type": "scene", "camera": [1, 2, 3]}))  # parsed, but no handler yet
        s.on("scene", lambda sess, f: seen.append(f.camera))
        await s.handle(json.dumps({"type": "scene", "camera": [1, 2, 3]}))
        await s.handle(json.dumps({"type": "scene", "camera": "x"}))
        return [json.loads(x) for x in sent]

    try:
        frames = _run(go())
    finally:
        from lathe.serve.lego_protocol import CLIENT_FRAMES
        CLIENT_FRAMES.pop("scene", None)
    assert seen == [[1.0, 2.0, 3.0]]
    assert [f["code"] for f in frames] == ["unknown_type", "bad_frame"]
    assert parse_v1("Unity: ok") == ("unity", "ok")
