"""The one LLM client of lathe: `chat(messages, stop, temperature, max_tokens, json_mode, seed) -> str`.

Backends (all share stop trimming, JSON mode and the call log of `ChatLLM`):
  - `HandleChat`: an in-cluster LLM deployment through a Serve deployment handle, duck-typed
    (anything with `.<method>.remote(body)`), so this module never imports Ray;
  - `OpenAIChat`: any OpenAI-compatible `/v1/chat/completions` base URL (lathe's own LLM app
    included); loopback only unless `allow_remote=True`; the API key is read from an env var;
  - `TransformersChat`: in-process `generate` over any local HF causal LM dir or a
    (model, tokenizer) pair from the zoo, with the tokenizer's chat template;
  - `ScriptedLLM`: replays outputs keyed by a regex on the last user message (tests only:
    tiny random models cannot follow prompts).

Every call appends a record {tag, messages, output, latency_s, prompt_tokens, completion_tokens,
attempts, ...} to `llm.log`, the trajectory of that client. `clone()` gives a client on the same
backend with a fresh log (one per request when serving).
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from lathe.platform.errors import LatheError

JSON_INSTRUCTION = "Respond with one JSON object only, no other text."


class LLMError(LatheError):
    """A backend could not produce a completion (HTTP error, bad reply, missing model)."""


class LLMJSONError(LLMError):
    """JSON mode gave up: no parseable JSON object after the retries. Carries the last output."""

    def __init__(self, message: str, output: str, attempts: int):
        super().__init__(message)
        self.output, self.attempts = output, attempts


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


def apply_stop(text: str, stop: Iterable[str] | None) -> str:
    """Cut `text` before the earliest occurrence of any stop string (the stop string is excluded)."""
    cut = len(text)
    for s in stop or ():
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


def first_json_object(text: str) -> str | None:
    """The first balanced `{...}` in text (braces inside JSON strings do not count), or None."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find("{", start + 1)
    return None


def parse_json_object(text: str) -> dict:
    """Parse the first balanced object in text; ValueError with the reason otherwise."""
    blob = first_json_object(text)
    if blob is None:
        raise ValueError("no JSON object ({...}) found in the reply")
    try:
        value = json.loads(blob)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(value, dict):
        raise ValueError("the JSON value is not an object")
    return value


def _validate_messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise LLMError("messages: expected a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
                m.get("role") not in ("system", "user", "assistant", "tool"):
            raise LLMError(f"messages[{i}]: expected {{role: system|user|assistant|tool, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ChatLLM:
    """Base client. Subclasses implement `_complete(messages, stop, temperature, max_tokens, seed)`."""

    name = "llm"

    def __init__(self, json_retries: int = 3, default_max_tokens: int = 256):
        if json_retries < 0:
            raise LLMError("json_retries: must be >= 0")
        self.json_retries = json_retries
        self.default_max_tokens = default_max_tokens
        self.log: list[dict] = []

    # -- backend
    def _complete(self, messages: list[dict], stop: list[str], temperature: float, max_tokens: int,
                  seed: int | None) -> Completion:
        raise NotImplementedError

    # -- public API
    def clone(self) -> "ChatLLM":
        """Same backend, fresh call log."""
        other = copy.copy(self)
        other.log = []
        return other

    def chat(self, messages: list[dict], stop: list[str] | str | None = None, temperature: float = 0.0,
             max_tokens: int | None = None, json_mode: bool = False, seed: int | None = None,
             tag: str | None = None) -> str:
        """The reply text, cut before the first stop string. With json_mode, the first balanced JSON
        object of the reply (parse-and-retry with a corrective turn, then `LLMJSONError`)."""
        messages = _validate_messages(messages)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if temperature < 0:
            raise LLMError("temperature: must be >= 0")
        max_tokens = max_tokens or self.default_max_tokens
        if not json_mode:
            return self._call(messages, stop, temperature, max_tokens, seed, tag, attempt=1)
        convo = list(messages)
        convo[-1] = {**convo[-1], "content": convo[-1]["content"].rstrip() + "\n\n" + JSON_INSTRUCTION}
        out, err = "", ""
        for attempt in range(1, self.json_retries + 2):
            out = self._call(convo, stop, temperature, max_tokens, seed, tag, attempt=attempt)
            try:
                parse_json_object(out)
                self.log[-1]["json_ok"] = True
                return first_json_object(out)
            except ValueError as e:
                err = str(e)
                self.log[-1]["json_ok"] = False
                self.log[-1]["json_error"] = err
                convo = convo + [{"role": "assistant", "content": out},
                                 {"role": "user", "content": f"That reply could not be parsed: {err}. "
                                                             f"{JSON_INSTRUCTION}"}]
        raise LLMJSONError(f"json_mode: no valid JSON object after {self.json_retries + 1} attempts ({err})",
                           out, self.json_retries + 1)

    def chat_json(self, messages: list[dict], **kw) -> dict:
        """`chat(json_mode=True)` parsed to a dict."""
        return json.loads(self.chat(messages, json_mode=True, **kw))

    def _call(self, messages, stop, temperature, max_tokens, seed, tag, attempt) -> str:
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"tag": tag, "backend": self.name, "messages": messages, "stop": stop,
                               "temperature": temperature, "max_tokens": max_tokens, "seed": seed,
                               "attempt": attempt}
        try:
            c = self._complete(messages, stop, temperature, max_tokens, seed)
        except Exception as e:
            rec.update(output=None, error=f"{type(e).__name__}: {e}", latency_s=time.perf_counter() - t0)
            self.log.append(rec)
            if isinstance(e, LLMError):
                raise
            raise LLMError(f"{self.name}: {type(e).__name__}: {e}") from e
        text = apply_stop(c.text, stop)
        rec.update(output=text, latency_s=time.perf_counter() - t0, prompt_tokens=c.prompt_tokens,
                   completion_tokens=c.completion_tokens, finish_reason=c.finish_reason)
        self.log.append(rec)
        return text


# --------------------------------------------------------------------------------------------
# Backends


def _openai_body(messages, stop, temperature, max_tokens, seed, model) -> dict:
    body = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    if model:
        body["model"] = model
    if stop:
        body["stop"] = stop[:4]  # OpenAI accepts at most 4; apply_stop applies all of them anyway
    if seed is not None:
        body["seed"] = seed
    return body


def _from_openai_reply(reply: Any) -> Completion:
    try:
        choice = reply["choices"][0]
        text = choice["message"]["content"] or ""
        usage = reply.get("usage") or {}
        return Completion(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                          choice.get("finish_reason") or "stop")
    except (KeyError, IndexError, TypeError) as e:
        raise LLMError(f"reply is not an OpenAI chat completion (missing {e})") from None


class HandleChat(ChatLLM):
    """The LLM deployment through a Serve handle: `getattr(handle, method).remote(wrap(body))`,
    resolved with `.result()`. `wrap` turns the OpenAI body into the method's argument (e.g. the
    app's request model). Call from a worker thread, not from a running event loop."""

    name = "serve-handle"

    def __init__(self, handle: Any, method: str = "chat", wrap: Callable[[dict], Any] | None = None,
                 model: str | None = None, timeout_s: float | None = 120.0, **kw):
        super().__init__(**kw)
        if not hasattr(getattr(handle, method, None), "remote"):
            raise LLMError(f"HandleChat: handle has no method {method!r} with .remote()")
        self.handle, self.method, self.wrap, self.model, self.timeout_s = handle, method, wrap, model, timeout_s

    def _complete(self, messages, stop, temperature, max_tokens, seed) -> Completion:
        body = _openai_body(messages, stop, temperature, max_tokens, seed, self.model)
        resp = getattr(self.handle, self.method).remote(self.wrap(body) if self.wrap else body)
        reply = resp.result(timeout_s=self.timeout_s) if hasattr(resp, "result") else resp
        return _from_openai_reply(reply)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


class OpenAIChat(ChatLLM):
    """Any OpenAI-compatible chat endpoint. `base_url` is the part before `/chat/completions`
    (e.g. `http://127.0.0.1:8000/llm/v1`)."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str | None = None,
                 timeout_s: float = 120.0, allow_remote: bool = False, **kw):
        super().__init__(**kw)
        from urllib.parse import urlparse

        u = urlparse(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise LLMError(f"base_url: {base_url!r} is not an http(s) URL")
        if u.hostname not in LOOPBACK and not allow_remote:
            raise LLMError(f"base_url: {u.hostname} is not loopback; set allow_remote to use a remote endpoint")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s = model, timeout_s
        self._key = None
        if api_key_env:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise LLMError(f"api_key_env: environment variable {api_key_env!r} is not set")

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIChat({self.url!r}, model={self.model!r})"

    def _complete(self, messages, stop, temperature, max_tokens, seed) -> Completion:
        import urllib.error
        import urllib.request

        body = json.dumps(_openai_body(messages, stop, temperature, max_tokens, seed, self.model)).encode()
        headers = {"content-type": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise LLMError(f"{self.url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise LLMError(f"{self.url}: {e}") from None
        except json.JSONDecodeError:
            raise LLMError(f"{self.url}: reply is not JSON") from None
        return _from_openai_reply(reply)


def render_chat(tokenizer: Any, messages: list[dict]) -> str:
    """The tokenizer's chat template when it has one, else a plain `role: content` transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


class TransformersChat(ChatLLM):
    """In-process `model.generate` (greedy at temperature 0; seeded sampling otherwise).
    One generate at a time per model (a lock shared by clones)."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, max_context: int = 2048, device: str | None = None,
                 prompt_style: str = "chat", **kw):
        super().__init__(**kw)
        import torch

        if prompt_style not in ("chat", "sft"):
            raise LLMError("prompt_style: expected chat or sft")
        self.model, self.tokenizer, self.max_context = model, tokenizer, max_context
        self.prompt_style = prompt_style  # sft: the sft job's prompt over the flattened messages (students)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, path: str, dtype: str = "float32", **kw) -> "TransformersChat":
        from lathe.platform.zoo import load_pretrained

        model, tok = load_pretrained(path, dtype=dtype)
        return cls(model, tok, **kw)

    @classmethod
    def from_artifact(cls, path: str, **kw) -> "TransformersChat":
        """An sft job artifact (full model dir, or an adapter over its recorded base)."""
        from lathe.methods.peft.artifact import load_artifact

        model, tok = load_artifact(path)
        return cls(model, tok, **kw)

    def render(self, messages: list[dict]) -> list[int]:
        if self.prompt_style == "sft":
            from lathe.methods.agents.distill import flatten_messages
            from lathe.methods.sft import prompt_text

            tok = self.tokenizer
            ids = tok(prompt_text(tok, flatten_messages(messages)), add_special_tokens=False)["input_ids"]
            if tok.bos_token_id is not None and not getattr(tok, "chat_template", None):
                ids = [tok.bos_token_id] + ids
            return ids
        return self.tokenizer(render_chat(self.tokenizer, messages), add_special_tokens=False)["input_ids"]

    def _complete(self, messages, stop, temperature, max_tokens, seed) -> Completion:
        import torch

        ids = torch.tensor([self.render(messages)], dtype=torch.long)
        limit = getattr(self.model.config, "max_position_embeddings", self.max_context) or self.max_context
        limit = min(limit, self.max_context)
        budget = max(1, min(max_tokens, limit - 1))
        ids = ids[:, -(limit - budget):].to(self.device)
        sample = temperature > 0
        with self._lock, torch.no_grad(), torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                      do_sample=sample, temperature=temperature if sample else None,
                                      top_p=None, top_k=None,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos is not None and eos in new:
            new, finish = new[: new.index(eos)], "stop"
        return Completion(self.tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(new), finish)


class ScriptedLLM(ChatLLM):
    """Tests only. `rules`: [(regex, reply)], the first regex that `re.search`es the last user
    message wins. A reply is a string, a list of strings (replayed in turn, the last one repeats)
    or a callable(messages) -> str. No rule matching is an error naming the message."""

    name = "scripted"

    def __init__(self, rules: list[tuple[str, Any]] | dict[str, Any], **kw):
        super().__init__(**kw)
        items = list(rules.items()) if isinstance(rules, dict) else list(rules)
        self.rules = [(re.compile(p, re.S), r) for p, r in items]
        self.hits = [0] * len(self.rules)

    def clone(self) -> "ScriptedLLM":
        other = super().clone()
        other.hits = [0] * len(self.rules)
        return other

    def _complete(self, messages, stop, temperature, max_tokens, seed) -> Completion:
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        for i, (pat, reply) in enumerate(self.rules):
            if pat.search(last):
                n = self.hits[i]
                self.hits[i] += 1
                if callable(reply):
                    text = reply(messages)
                elif isinstance(reply, (list, tuple)):
                    text = reply[min(n, len(reply) - 1)]
                else:
                    text = reply
                prompt_tokens = sum(len(m["content"].split()) for m in messages)
                return Completion(text, prompt_tokens, len(text.split()))
        raise LLMError(f"ScriptedLLM: no rule matches the last user message {last[-200:]!r}")


def build_llm(spec: dict | None = None, **kw) -> ChatLLM:
    """A client from a small dict: {kind: openai, base_url, model?, api_key_env?, allow_remote?} |
    {kind: transformers, path} . Used by configs and the benchmark."""
    spec = dict(spec or {}, **kw)
    kind = spec.pop("kind", None)
    if kind == "openai":
        return OpenAIChat(**spec)
    if kind == "transformers":
        return TransformersChat.from_dir(**spec)
    raise LLMError(f"llm.kind: expected openai or transformers (got {kind!r})")
