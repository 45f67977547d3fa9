"""The LEGO assistant on Ray Serve, on loopback: POST /ask and WS /chatbot in v1 and v2."""

from __future__ import annotations

import json
import socket
import time

import pytest

httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

TOKEN = "lego-t0ken-Q9x7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACT = json.dumps({"action": "NextStep", "action_input": {}})
SCRIPT = [["^Observation: Timeout error", json.dumps({"action": "Final Answer", "action_input": "The app did not answer."})],
          ["^Observation:", json.dumps({"action": "Final Answer", "action_input": "On to the next step."})],
          [".", ACT]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 180.0) -> dict:
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready: {last}")


@pytest.fixture(scope="module")
def app(ray_local):
    import os

    from ray import serve

    from lathe.serve.config import LegoAppConfig, ServeConfig
    from lathe.serve.deploy import deploy
    from lathe.serve.lego_app import build_app

    port = _free_port()
    os.environ["LEGO_TEST_TOKEN"] = TOKEN
    lego = {"llm": {"backend": "scripted", "script": SCRIPT}, "manual_steps": 10, "tool_timeout_s": 0.5,
            "replicas": {"num_cpus": 0.25}}
    cfg = ServeConfig.model_validate({"job": "serve", "http": {"port": port}, "auth_token_env": "LEGO_TEST_TOKEN",
                                      "lego": lego})
    urls = deploy(cfg)
    client_cfg = LegoAppConfig.model_validate({**lego, "transport": "client", "route_prefix": "/client"})
    serve.run(build_app(client_cfg, TOKEN), name="lego-client", route_prefix="/client", blocking=False)
    # the LLM as its own deployment, reached through a handle (a tiny preset: the plumbing, not the quality)
    from lathe.platform.config import ModelConfig
    from lathe.serve.config import LLMAppConfig
    from lathe.serve.deploy import lego_model_dir
    from lathe.serve.llm_app import build_app as build_llm

    handle_cfg = ServeConfig.model_validate({"job": "serve", "output_root": str(tmp_root(ray_local)), "lego": {
        **lego, "route_prefix": "/handle", "agent": {"max_new_tokens": 8, "parse_retries": 0, "max_tool_calls": 1},
        "llm": {"backend": "deployment", "model": {"preset": "tiny-1m", "tokenizer_vocab": 256},
                "replicas": {"num_cpus": 0.25}}}})
    model_dir = lego_model_dir(handle_cfg)
    serve.run(build_llm(LLMAppConfig(model=ModelConfig(path=model_dir), engine="transformers",
                                     replicas={"num_cpus": 0.25}), model_dir, None), name="lego-handle-llm",
              route_prefix=None)
    serve.run(build_app(handle_cfg.lego, TOKEN, "lego-handle-llm"), name="lego-handle", route_prefix="/handle",
              blocking=False)
    base = f"http://127.0.0.1:{port}"
    assert urls["lego"] == base
    for prefix in ("", "/client", "/handle"):
        _wait(base + prefix + "/healthz")
    yield base, f"ws://127.0.0.1:{port}"
    for name in ("lego", "lego-client", "lego-handle", "lego-handle-llm"):
        serve.delete(name)
    serve.shutdown()
    os.environ.pop("LEGO_TEST_TOKEN", None)


def tmp_root(_):
    import tempfile

    return tempfile.mkdtemp(prefix="lego-serve-")


def _recv_until_ai(ws, v2=True, limit=10):
    frames = []
    for _ in range(limit):
        msg = ws.recv(timeout=60)
        frames.append(json.loads(msg) if v2 else msg)
        if (v2 and frames[-1]["type"] in ("ai", "error") and frames[-1].get("type") != "error") or \
                (not v2 and msg.startswith("AI:")):
            return frames
    raise AssertionError(f"no answer in {frames}")


def test_v2_next_step_gives_one_tool_call_and_one_ai_frame(app):
    _, ws_url = app
    with ws_client.connect(ws_url + "/chatbot", additional_headers=AUTH, subprotocols=["lathe.xr.v2"]) as ws:
        assert ws.subprotocol == "lathe.xr.v2"
        ws.send("{bad json")
        err = json.loads(ws.recv(timeout=60))
        assert err["type"] == "error" and err["code"] == "bad_json"
        ws.send(json.dumps({"type": "human", "id": "h1", "session": "ws-s1", "text": "next step please"}))
        frames = _recv_until_ai(ws)
    assert [f["type"] for f in frames] == ["tool_call", "ai"]
    assert frames[0]["name"] == "NextStep" and frames[1]["id"] == "h1" and frames[1]["final"] is True
    assert frames[1]["text"] == "On to the next step." and frames[1]["session"] == "ws-s1"


def test_v1_gives_toolunity_then_ai(app):
    _, ws_url = app
    with ws_client.connect(ws_url + "/chatbot", additional_headers=AUTH) as ws:
        assert ws.subprotocol is None
        ws.send("Human: next step please")
        frames = _recv_until_ai(ws, v2=False)
    assert frames == ["ToolUnity: NextStep", "AI: On to the next step."]


def test_unanswered_tool_call_times_out_and_still_answers(app):
    _, ws_url = app
    with ws_client.connect(ws_url + "/client/chatbot", additional_headers=AUTH, subprotocols=["lathe.xr.v2"]) as ws:
        ws.send(json.dumps({"type": "human", "id": 1, "text": "next"}))
        frames = _recv_until_ai(ws)
        assert [f["type"] for f in frames] == ["tool_call", "ai"] and frames[1]["text"] == "The app did not answer."
        # answered in time: the client's text becomes the observation
        ws.send(json.dumps({"type": "human", "id": 2, "text": "next"}))
        call = json.loads(ws.recv(timeout=60))
        ws.send(json.dumps({"type": "tool_result", "id": call["id"], "ok": True, "text": "moved",
                            "state": {"current_step": 2}}))
        assert json.loads(ws.recv(timeout=60))["text"] == "On to the next step."
    with ws_client.connect(ws_url + "/client/chatbot", additional_headers=AUTH) as ws:
        ws.send("Human: next")
        assert _recv_until_ai(ws, v2=False) == ["ToolUnity: NextStep", "AI: The app did not answer."]


def test_bad_token_closes_with_4000_and_is_never_logged(app):
    _, ws_url = app
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        with ws_client.connect(ws_url + "/chatbot", additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=60)
        assert e.value.rcvd.code == 4000
    import glob

    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    hits = [p for p in glob.glob(logs + "/**/*", recursive=True)
            if not p.endswith((".sock", ".pid")) and _contains(p, TOKEN)]
    assert hits == []


def _contains(path: str, needle: str) -> bool:
    try:
        with open(path, "rb") as f:
            return needle.encode() in f.read()
    except (IsADirectoryError, PermissionError, OSError):
        return False


def test_ask_and_session_resume(app):
    base, ws_url = app
    assert httpx.post(base + "/ask", json={"text": "next"}, timeout=60).status_code == 401
    bad = httpx.post(base + "/ask", json={"text": ""}, headers=AUTH, timeout=60)
    assert bad.status_code == 422 and "text" in bad.json()["error"]
    r1 = httpx.post(base + "/ask", json={"text": "next", "session": "s-ask"}, headers=AUTH, timeout=60).json()
    assert r1["answer"] == "On to the next step." and r1["tool_calls"][0]["name"] == "NextStep"
    assert r1["state"]["current_step"] == 2 and r1["session"] == "s-ask"
    r2 = httpx.post(base + "/ask", json={"text": "next", "session": "s-ask"}, headers=AUTH, timeout=60).json()
    assert r2["state"]["current_step"] == 3  # resumed: same scene
    fresh = httpx.post(base + "/ask", json={"text": "next"}, headers=AUTH, timeout=60).json()
    assert fresh["state"]["current_step"] == 2 and fresh["session"] != "s-ask"
    with ws_client.connect(ws_url + "/chatbot?session=s-ask", additional_headers=AUTH,
                           subprotocols=["lathe.xr.v2"]) as ws:
        ws.send(json.dumps({"type": "event", "kind": "gesture", "payload": {"g": "thumbs up"}}))
        ws.send(json.dumps({"type": "human", "id": "x", "text": "next"}))
        _recv_until_ai(ws)
    r3 = httpx.post(base + "/ask", json={"text": "next", "session": "s-ask"}, headers=AUTH, timeout=60).json()
    assert r3["state"]["current_step"] == 5


def test_llm_deployment_through_a_handle(app):
    base, _ = app
    r = httpx.post(base + "/handle/ask", json={"text": "next step please"}, headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["answer"], str) and body["answer"] and body["state"]["n_steps"] == 10
    assert httpx.get(base + "/handle/healthz", timeout=30).json()["llm"] == "deployment"
