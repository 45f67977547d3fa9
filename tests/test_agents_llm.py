"""The one LLM client: stop trimming, JSON parse-and-retry, call log, and each backend."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from lathe.methods.agents.llm import (HandleChat, LLMError, LLMJSONError, OpenAIChat, ScriptedLLM,
                                      TransformersChat, apply_stop, first_json_object)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stop_cuts_before_earliest_stop_string():
    assert apply_stop("a Thought: b Execution Result c", ["Execution Result", "Thought"]) == "a "
    assert apply_stop("no stops here", ["XYZ"]) == "no stops here"
    llm = ScriptedLLM([(".*", "step one\nExecution Result: x")])
    assert llm.chat([{"role": "user", "content": "go"}], stop=["Execution Result"]) == "step one\n"


def test_first_balanced_object_ignores_braces_in_strings():
    text = 'sure: {"url": "/movie/{id}", "p": {"a": "}"}} trailing {"x": 1}'
    assert json.loads(first_json_object(text)) == {"url": "/movie/{id}", "p": {"a": "}"}}
    assert first_json_object("no json") is None


def test_json_mode_retries_with_corrective_turn_then_succeeds():
    llm = ScriptedLLM([("request|could not be parsed", ["not json at all", '{"url": "/x"', 'ok {"url": "/x", "params": {}}'])])
    out = llm.chat([{"role": "user", "content": "make a request"}], json_mode=True, tag="exec")
    assert json.loads(out) == {"url": "/x", "params": {}}
    assert [r["attempt"] for r in llm.log] == [1, 2, 3]
    assert [r["json_ok"] for r in llm.log] == [False, False, True]
    # the retry sees the bad reply and a corrective user turn naming the problem
    third = llm.log[2]["messages"]
    assert third[-2] == {"role": "assistant", "content": '{"url": "/x"'}
    assert "could not be parsed" in third[-1]["content"]
    assert all(r["tag"] == "exec" for r in llm.log)


def test_json_mode_gives_up_with_typed_error():
    llm = ScriptedLLM([(".*", "never json")], json_retries=2)
    with pytest.raises(LLMJSONError) as e:
        llm.chat([{"role": "user", "content": "q"}], json_mode=True)
    assert e.value.attempts == 3 and e.value.output == "never json" and len(llm.log) == 3
    with pytest.raises(LLMJSONError):  # a JSON array is not an object
        ScriptedLLM([(".*", "[1, 2]")], json_retries=0).chat([{"role": "user", "content": "q"}], json_mode=True)


def test_scripted_rules_and_log():
    llm = ScriptedLLM([(r"^search", ["first", "second"]), ("fetch", lambda msgs: msgs[-1]["content"].upper())])
    u = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    assert [llm.chat(u("search a")), llm.chat(u("search b")), llm.chat(u("search c"))] == ["first", "second", "second"]
    assert llm.chat(u("fetch it")) == "FETCH IT"
    with pytest.raises(LLMError, match="no rule matches"):
        llm.chat(u("something else"))
    assert len(llm.log) == 5 and llm.log[-1]["error"].startswith("LLMError")
    assert llm.clone().log == [] and len(llm.log) == 5
    with pytest.raises(LLMError, match=r"messages\[0\]"):
        llm.chat([{"role": "wizard", "content": "x"}])


def test_transformers_backend_greedy_is_deterministic_and_logs_tokens(tiny_model, tiny_tokenizer):
    llm = TransformersChat(tiny_model, tiny_tokenizer)
    msgs = [{"role": "user", "content": "What is the capital of Freedonia?"}]
    a = llm.chat(msgs, max_tokens=12)
    b = llm.chat(msgs, max_tokens=12)
    assert a == b
    rec = llm.log[0]
    assert rec["prompt_tokens"] > 5 and 1 <= rec["completion_tokens"] <= 12 and rec["latency_s"] > 0
    s1 = llm.chat(msgs, temperature=1.0, max_tokens=12, seed=3)
    s2 = llm.chat(msgs, temperature=1.0, max_tokens=12, seed=3)
    assert s1 == s2
    outs = {llm.chat(msgs, temperature=1.5, max_tokens=12, seed=s) for s in range(4)}
    assert len(outs) > 1  # sampling with different seeds differs: the seed reaches generate


class _Fake(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _Fake.bodies.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if body.get("max_tokens") == 999:
            self.send_response(422)
            self.end_headers()
            self.wfile.write(b'{"error": "max_tokens: too many"}')
            return
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Paris STOP more"},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_openai_backend_over_loopback(monkeypatch):
    srv = HTTPServer(("127.0.0.1", 0), _Fake)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        monkeypatch.setenv("FAKE_KEY", "sk-123")
        llm = OpenAIChat(f"http://127.0.0.1:{srv.server_port}/llm/v1", model="m", api_key_env="FAKE_KEY")
        assert llm.chat([{"role": "user", "content": "capital?"}], stop=["STOP"], seed=5) == "Paris "
        path, headers, body = _Fake.bodies[-1]
        assert path == "/llm/v1/chat/completions" and body["stop"] == ["STOP"] and body["seed"] == 5
        assert headers["authorization"] == "Bearer sk-123" and "sk-123" not in repr(llm)
        assert llm.log[0]["prompt_tokens"] == 7 and llm.log[0]["completion_tokens"] == 3
        with pytest.raises(LLMError, match="HTTP 422.*too many"):
            llm.chat([{"role": "user", "content": "x"}], max_tokens=999)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(LLMError, match="not loopback"):
        OpenAIChat("http://10.1.2.3:8000/v1")
    with pytest.raises(LLMError, match="not set"):
        OpenAIChat("http://127.0.0.1:1/v1", api_key_env="LATHE_SURELY_UNSET_VAR")


def test_handle_backend_is_duck_typed():
    seen = []

    class Resp:
        def __init__(self, v):
            self.v = v

        def result(self, timeout_s=None):
            return self.v

    class Method:
        def remote(self, req):
            seen.append(req)
            return Resp({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

    class Handle:
        chat = Method()

    llm = HandleChat(Handle(), wrap=lambda b: ("wrapped", b))
    assert llm.chat([{"role": "user", "content": "x"}], temperature=0.0, max_tokens=4) == "hi"
    assert seen[0][0] == "wrapped" and seen[0][1]["max_tokens"] == 4
    with pytest.raises(LLMError, match="no method"):
        HandleChat(object())
    bad = HandleChat(type("H", (), {"chat": type("M", (), {"remote": lambda self, r: {"nope": 1}})()})())
    with pytest.raises(LLMError, match="not an OpenAI chat completion"):
        bad.chat([{"role": "user", "content": "x"}])
