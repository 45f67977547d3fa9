"""The XR bridge on loopback, in-process (no Ray): token and Origin refusals, the v1 Unity exchange,
v2 scene frames, actions, resume by session id, bad frames, and the slow-client send queue."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest

ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

TOKEN = "xr-t0ken-7Hq2"
ACT = json.dumps({"action": "NextStep", "action_input": {}})
SCRIPT = [["^Observation: Timeout error", json.dumps({"action": "Final Answer", "action_input": "No answer."})],
          ["^Observation:", json.dumps({"action": "Final Answer", "action_input": "On to the next step."})],
          ["next", ACT],
          [".", json.dumps({"action": "Final Answer", "action_input": "Happy to help."})]]


@pytest.fixture(scope="module")
def server():
    from lathe.xr_bridge.bridge import BridgeConfig, BridgeServer, XRBridge

    cfg = BridgeConfig.model_validate({"lego": {"llm": {"backend": "scripted", "script": SCRIPT},
                                                "manual_steps": 6, "tool_timeout_s": 2.0}})
    srv = BridgeServer(XRBridge(cfg, token=TOKEN)).start()
    yield srv
    srv.stop()


def _connect(srv, v2=True, token=TOKEN, session=None, origin=None):
    url = srv.ws_url + (f"?session={session}" if session else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if origin:
        headers["Origin"] = origin
    return ws_client.connect(url, subprotocols=["lathe.xr.v2"] if v2 else None, additional_headers=headers,
                             open_timeout=20, max_size=1 << 24)


def _recv_json(ws, timeout=30):
    return json.loads(ws.recv(timeout=timeout))


def _until(ws, kind, timeout=30):
    seen = []
    while True:
        f = _recv_json(ws, timeout)
        seen.append(f)
        if f["type"] == kind:
            return f, seen


def test_bad_token_closes_4000(server):
    for v2 in (False, True):
        with _connect(server, v2=v2, token="wrong") as ws:
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 4000
    assert server.bridge.stats["refused_token"] >= 2


def test_wrong_origin_refused_own_origin_accepted(server):
    with _connect(server, origin="http://evil.example:8080") as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd.code == 4003
    with _connect(server, origin=server.url) as ws:  # the page served by the bridge itself
        assert _recv_json(ws)["type"] == "scene"


def test_v1_unity_exchange(server):
    with _connect(server, v2=False) as ws:
        ws.send("Human: go to the next step please")
        assert ws.recv(timeout=30) == "ToolUnity: NextStep"
        ws.send("Unity: moved to step 2")
        assert ws.recv(timeout=30) == "AI: On to the next step."
        ws.send("Bogus frame")
        assert ws.recv(timeout=10).startswith("Error: v1 frames start with")


def test_v2_scene_frames_turn_and_resume(server):
    import trimesh

    with _connect(server) as ws:
        first = _recv_json(ws)
        assert first["type"] == "scene" and first["kind"] == "full" and first["state"]["current_step"] == 1
        sid = first["session"]
        full = trimesh.load(io.BytesIO(base64.b64decode(first["glb"])), file_type="glb")
        assert len(full.geometry) == len(server.bridge.assistant.manual.steps[0].bricks)
        ws.send(json.dumps({"type": "human", "id": "u1", "text": "next step"}))
        call, _ = _until(ws, "tool_call")
        assert call["name"] == "NextStep"
        scene, _ = _until(ws, "scene")
        assert scene["kind"] == "diff" and scene["state"]["current_step"] == 2
        new_ids = {int(n.split("-")[1]) for n in
                   trimesh.load(io.BytesIO(base64.b64decode(scene["glb"])), file_type="glb").geometry}
        assert new_ids == set(scene["highlight"])  # the diff carries exactly the step's new bricks
        ai, _ = _until(ws, "ai")
        assert ai["id"] == "u1" and ai["text"] == "On to the next step." and ai["session"] == sid
    # reconnect with the session id: the scene resumes at step 2 and the memory holds the first turn
    with _connect(server, session=sid) as ws:
        again = _recv_json(ws)
        assert again["kind"] == "full" and again["session"] == sid and again["state"]["current_step"] == 2
        ws.send(json.dumps({"type": "human", "id": "u2", "text": "thanks"}))
        ai, _ = _until(ws, "ai")
        assert ai["text"] == "Happy to help."
    memory = server.bridge.assistant.sessions[sid].agent.memory.to_json()
    assert "next step" in json.dumps(memory) and "thanks" in json.dumps(memory)


def test_v2_action_button_and_bad_frames(server):
    with _connect(server) as ws:
        assert _recv_json(ws)["kind"] == "full"
        ws.send(json.dumps({"type": "action", "id": 7, "name": "NextStep"}))
        res, seen = _until(ws, "action_result")
        assert res["ok"] and res["state"]["current_step"] == 2
        scene = [f for f in seen if f["type"] == "scene"]  # the scene frame comes first (the tool emits it)
        assert scene and scene[0]["kind"] == "diff" and scene[0]["state"]["current_step"] == 2
        ws.send(json.dumps({"type": "action", "name": "Rotate", "args": {"direction": "Sideways"}}))
        res, _ = _until(ws, "action_result")
        assert not res["ok"] and "direction" in res["text"]
        for frame, code in [("not json", "bad_json"), (json.dumps({"type": "dance"}), "unknown_type"),
                            (json.dumps({"type": "action", "name": "Fly"}), "unknown_tool"),
                            ("x" * (server.bridge.cfg.lego.max_frame_bytes + 10), "too_large")]:
            ws.send(frame)
            err, _ = _until(ws, "error")
            assert err["code"] == code, err
        ws.send(json.dumps({"type": "scene"}))  # resync: a full frame again
        again, _ = _until(ws, "scene")
        assert again["kind"] == "full" and again["state"]["current_step"] == 2


def test_vanished_client_does_not_stop_others(server):
    ws = _connect(server)
    _recv_json(ws)
    ws.send(json.dumps({"type": "human", "id": 1, "text": "next step"}))
    ws.close()  # mid-turn
    with _connect(server) as other:
        assert _recv_json(other)["type"] == "scene"
        other.send(json.dumps({"type": "human", "id": 2, "text": "hello"}))
        ai, _ = _until(other, "ai")
        assert ai["text"] == "Happy to help."


def test_send_queue_coalesces_scenes_never_drops_text():
    from lathe.xr_bridge.sendq import SendQueue

    async def main():
        sent: list[str] = []
        gate = asyncio.Event()
        state = {"v": 0}

        async def slow_send(text):
            await gate.wait()
            sent.append(text)

        q = SendQueue(slow_send, lambda t: f"scene:{state['v']}", max_text=100)
        for i in range(20):
            await q.put_text(f"text:{i}")
            state["v"] = i
            q.mark_scene()
        gate.set()
        await q.flush()
        await asyncio.sleep(0.05)
        await q.close()
        return sent, q

    sent, q = asyncio.run(main())
    texts = [s for s in sent if s.startswith("text:")]
    scenes = [s for s in sent if s.startswith("scene:")]
    assert texts == [f"text:{i}" for i in range(20)]        # every utterance, in order
    assert scenes[-1] == "scene:19"                         # the newest scene arrives
    assert len(scenes) < 5 and q.dropped == 20 - len(scenes)  # stale ones skipped, and counted


def test_send_queue_overflow_disconnects():
    from lathe.xr_bridge.sendq import SendQueue

    async def main():
        closed = []

        async def never(text):
            await asyncio.sleep(3600)

        async def overflow():
            closed.append(True)

        q = SendQueue(never, lambda t: None, max_text=3, on_overflow=overflow)
        for i in range(6):
            await q.put_text(str(i))
        await q.close()
        return closed, q

    closed, q = asyncio.run(main())
    assert closed == [True] and q.closed
