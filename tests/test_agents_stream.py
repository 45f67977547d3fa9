"""`stream: true` on the LLM app: OpenAI SSE chunks, token by token, stop strings held back."""

from __future__ import annotations

import asyncio
import json

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Server:
    def __init__(self, engine):
        self.engine, self.model_name, self.lock = engine, "tiny", asyncio.Lock()


def _collect(resp) -> list[str]:
    async def run():
        return [c if isinstance(c, str) else c.decode() async for c in resp.body_iterator]

    return asyncio.run(run())


def _engine(tiny_model, tiny_tokenizer):
    from lathe.serve.llm_app import TransformersEngine

    eng = TransformersEngine.__new__(TransformersEngine)  # skip loading from a dir: same fields
    eng.model, eng.tokenizer, eng.device, eng.max_model_len = tiny_model.eval(), tiny_tokenizer, "cpu", 256
    return eng


def test_chat_stream_matches_non_streamed_text(tiny_model, tiny_tokenizer):
    from lathe.serve.llm_app import ChatRequest, chat_prompt, sse_response

    eng = _engine(tiny_model, tiny_tokenizer)
    req = ChatRequest(messages=[{"role": "user", "content": "what is the capital"}], max_tokens=12,
                      temperature=0, stream=True)
    prompt = chat_prompt(eng.tokenizer, req.messages)
    whole = eng.generate([prompt], req)[0]
    events = _collect(sse_response(_Server(eng), prompt, req, chat=True))
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole.text and len(chunks) > 3  # several content chunks: streamed, not one blob
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["usage"]["completion_tokens"] == whole.completion_tokens


def test_completion_stream_cuts_at_stop_string(tiny_model, tiny_tokenizer):
    from lathe.serve.llm_app import CompletionRequest, sse_response

    eng = _engine(tiny_model, tiny_tokenizer)
    base = CompletionRequest(prompt="Q: what", max_tokens=16, temperature=0)
    whole = eng.generate(["Q: what"], base)[0].text
    assert len(whole) > 6
    stop = whole[3:6]  # a stop string that occurs inside the unconstrained output
    req = CompletionRequest(prompt="Q: what", max_tokens=16, temperature=0, stream=True, stop=[stop])
    events = _collect(sse_response(_Server(eng), "Q: what", req, chat=False))
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole[: whole.find(stop)] and stop not in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
