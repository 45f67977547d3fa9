"""The cerebral agent: an LLM with memory and a planning loop over the 18 XR tools (spec section 6).

Per user turn, at most `max_tool_calls` iterations: build the prompt (system prompt, tools, manual
context, memory, utterance) -> the LLM returns a tool call or a final answer -> arguments are checked
against the canonical schema (bad ones become an error observation) -> the tool runs through the
given `execute(name, args)` (the simulator, or an XR client over WebSocket) -> the wrapped
observation is appended and the loop repeats. Unparseable output is retried `parse_retries` times
with the parse error quoted back.

The LLM is anything with `chat(messages, stop=, temperature=, max_tokens=, seed=) -> str`, i.e. the
shared client `lathe.methods.agents.llm` (a local HF model, an OpenAI-compatible endpoint, a Serve
handle, or a scripted LLM in tests).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from lathe.methods.lego import prompts
from lathe.methods.lego.tools import BY_NAME, ToolArgError, validate_args, wrap

ACTION_FINAL = "Final Answer"


@dataclass
class AgentConfig:
    mode: Literal["react_json", "function_calling"] = "react_json"
    memory: Literal["window", "buffer"] = "window"
    window_k: int = 5
    max_tool_calls: int = 5
    parse_retries: int = 2
    temperature: float = 0.0
    max_new_tokens: int = 512          # spec: 512 new tokens (reference, open model)
    seed: int | None = 0
    open_model: bool = True            # adds the "I don't know" rule
    few_shot: bool = True              # the open-model variant's 3 example turns
    prompt_style: Literal["full", "compact"] = "full"
    chunk_size: int = 10               # manual context: the active 10-step chunk

    def __post_init__(self):
        if self.mode not in ("react_json", "function_calling"):
            raise ValueError(f"agent.mode: {self.mode!r} is not react_json or function_calling")
        if self.memory not in ("window", "buffer"):
            raise ValueError(f"agent.memory: {self.memory!r} is not window or buffer")
        for k in ("window_k", "max_tool_calls", "max_new_tokens", "chunk_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"agent.{k}: must be at least 1")
        if self.parse_retries < 0:
            raise ValueError("agent.parse_retries: must be >= 0")


@dataclass
class Exchange:
    user: str
    assistant: str = ""
    tools: list[str] = field(default_factory=list)     # one-line summaries of the turn's tool calls
    context: list[str] = field(default_factory=list)   # event lines received before the turn


class Memory:
    """`buffer` keeps every exchange; `window` the last k. Tool-call summaries live in the exchange,
    so later turns can refer back to earlier actions."""

    def __init__(self, kind: str = "window", k: int = 5):
        self.kind, self.k = kind, k
        self.exchanges: list[Exchange] = []
        self.pending_context: list[str] = []

    def add_context(self, line: str) -> None:
        self.pending_context.append(line)

    def start(self, user: str) -> Exchange:
        ex = Exchange(user, context=self.pending_context)
        self.pending_context = []
        self.exchanges.append(ex)
        return ex

    def visible(self) -> list[Exchange]:
        """The finished exchanges shown in the prompt."""
        done = [e for e in self.exchanges if e.assistant]
        return done if self.kind == "buffer" else done[-self.k:]

    def to_json(self) -> dict:
        return {"kind": self.kind, "k": self.k, "pending_context": list(self.pending_context),
                "exchanges": [e.__dict__ for e in self.exchanges]}

    @classmethod
    def from_json(cls, d: dict) -> "Memory":
        m = cls(d["kind"], d["k"])
        m.pending_context = list(d.get("pending_context", []))
        m.exchanges = [Exchange(**e) for e in d.get("exchanges", [])]
        return m


@dataclass
class Action:
    name: str               # a tool name (possibly unknown) or ACTION_FINAL
    args: Any               # dict for tools, str for the final answer


class ParseError(ValueError):
    pass


def _first_object(text: str) -> dict:
    """The first JSON object in text (models wrap it in prose or code fences)."""
    dec, first_err = json.JSONDecoder(), None
    for i, c in enumerate(text):
        if c != "{":
            continue
        try:
            obj, _ = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            first_err = first_err or e
            continue
        if isinstance(obj, dict):
            return obj
    if first_err is not None:
        raise ParseError(f"invalid JSON: {first_err.msg} at character {first_err.pos}")
    raise ParseError("no JSON object found")


def parse_react(text: str) -> Action:
    """`{"action": ..., "action_input": ...}` -> Action; ParseError says what is wrong."""
    obj = _first_object(text)
    action = obj.get("action")
    if not isinstance(action, str) or not action.strip():
        raise ParseError('missing "action" (a tool name or "Final Answer")')
    action = action.strip()
    arg = obj.get("action_input", {} if action != ACTION_FINAL else "")
    if action == ACTION_FINAL:
        return Action(ACTION_FINAL, arg if isinstance(arg, str) else json.dumps(arg))
    if isinstance(arg, str):  # models often send a bare string or "" for no arguments
        arg = {} if not arg.strip() else _string_args(action, arg)
    return Action(action, arg)


def _string_args(name: str, text: str):
    try:
        val = json.loads(text)
        if isinstance(val, dict):
            return val
    except json.JSONDecodeError:
        val = text
    tool = BY_NAME.get(name)
    props = list(tool.parameters["properties"]) if tool else []
    return {props[0]: val} if len(props) == 1 else text


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def parse_function_call(text: str) -> Action:
    """A chat-template tool call (`<tool_call>{"name", "arguments"}</tool_call>`, or a bare
    {"name", "arguments"} object), else the text is the final answer."""
    m = _TOOL_CALL.search(text)
    blob = m.group(1) if m else (text if text.lstrip().startswith("{") else None)
    if blob is None:
        if not text.strip():
            raise ParseError("empty reply")
        return Action(ACTION_FINAL, text.strip())
    obj = _first_object(blob)
    name = obj.get("name") or (obj.get("function") or {}).get("name")
    if not isinstance(name, str):
        raise ParseError('a tool call needs a "name"')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ParseError("tool call arguments are not JSON") from None
    return Action(name, args)


def summarize_call(name: str, args: dict, observation: str) -> str:
    body = observation.split("got a response: ", 1)[-1]
    shown = json.dumps(args, separators=(",", ":")) if args else ""
    body = " ".join(body.split())
    return f"{name}({shown}) -> {body[:160]}"


@dataclass
class TurnOutput:
    answer: str
    tool_calls: list[dict] = field(default_factory=list)  # [{name, args, observation, ok}]
    parse_failures: int = 0
    llm_calls: int = 0


class CerebralAgent:
    """One trainee session: memory, the manual context and the planning loop."""

    def __init__(self, llm, manual=None, config: AgentConfig | None = None, n_steps: int | None = None):
        self.llm, self.manual = llm, manual
        self.cfg = config or AgentConfig()
        self.memory = Memory(self.cfg.memory, self.cfg.window_k)
        self.view = {"current_step": 1, "n_steps": n_steps or (manual.n_steps if manual is not None else 10)}

    # ---- context ---------------------------------------------------------------------------
    def observe_state(self, state: dict) -> None:
        """Update the agent's view of the scene (a step_state event, a tool result's state)."""
        for k in ("current_step", "n_steps"):
            v = state.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
                self.view[k] = v

    def add_context(self, line: str) -> None:
        self.memory.add_context(line)

    def manual_context(self) -> str:
        k, n = self.view["current_step"], self.view["n_steps"]
        head = f"The trainee is at step {k} of {n}."
        if self.manual is None or self.cfg.prompt_style == "compact":
            return head
        size = self.cfg.chunk_size
        lo = ((k - 1) // size) * size + 1
        hi = min(self.manual.n_steps, lo + size - 1)
        title = f" ({self.manual.title})" if self.manual.title else ""
        lines = [f"Manual {self.manual.manual_id}{title}, steps {lo}-{hi} of {self.manual.n_steps}:"]
        lines += [f"Step {i}: {self.manual.step(i).text}" for i in range(lo, hi + 1)]
        return head + "\n" + "\n".join(lines)

    def messages(self, ex: Exchange, scratch: list[dict]) -> list[dict]:
        """The prompt for the next LLM call of the current exchange."""
        msgs = [{"role": "system", "content": prompts.system_message(
            self.cfg.mode, self.manual_context(), self.cfg.open_model, self.cfg.few_shot, self.cfg.prompt_style)}]
        for past in self.memory.visible():
            msgs.append({"role": "user", "content": self._user_text(past)})
            done = "".join(f"[{t}]\n" for t in past.tools)
            msgs.append({"role": "assistant", "content": done + past.assistant})
        msgs.append({"role": "user", "content": self._user_text(ex)})
        return msgs + scratch

    @staticmethod
    def _user_text(ex: Exchange) -> str:
        ctx = "".join(f"[context] {c}\n" for c in ex.context)
        return ctx + ex.user

    # ---- the loop --------------------------------------------------------------------------
    def _ask(self, msgs: list[dict], out: TurnOutput) -> str:
        out.llm_calls += 1
        stop = ["\nObservation:"] if self.cfg.mode == "react_json" else None
        return self.llm.chat(msgs, stop=stop, temperature=self.cfg.temperature,
                             max_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)

    def _parse(self, text: str) -> Action:
        return parse_react(text) if self.cfg.mode == "react_json" else parse_function_call(text)

    def _next_action(self, ex: Exchange, scratch: list[dict], out: TurnOutput) -> Action:
        extra: list[dict] = []
        text = ""
        for attempt in range(self.cfg.parse_retries + 1):
            text = self._ask(self.messages(ex, scratch + extra), out)
            try:
                return self._parse(text)
            except ParseError as e:
                out.parse_failures += 1
                extra = extra + [{"role": "assistant", "content": text},
                                 {"role": "user", "content": prompts.RETRY.format(error=e)}]
        # Still unparseable after the retries: its text is the best answer there is.
        return Action(ACTION_FINAL, text.strip() or "I'm sorry, I could not work that out. Could you rephrase?")

    def _observation_message(self, raw: str, obs: str) -> list[dict]:
        if self.cfg.mode == "react_json":
            return [{"role": "assistant", "content": raw}, {"role": "user", "content": f"Observation: {obs}"}]
        return [{"role": "assistant", "content": raw}, {"role": "tool", "content": obs}]

    def run_turn(self, utterance: str, execute: Callable[[str, dict], str]) -> TurnOutput:
        """One user turn; `execute(name, args)` runs a validated tool call and returns the observation."""
        ex = self.memory.start(utterance)
        out = TurnOutput("")
        scratch: list[dict] = []
        action: Action | None = None
        while True:
            if len(out.tool_calls) >= self.cfg.max_tool_calls:
                scratch.append({"role": "user", "content": prompts.LAST_CALL})
                action = self._next_action(ex, scratch, out)
                if action.name != ACTION_FINAL:
                    last = out.tool_calls[-1]["observation"] if out.tool_calls else ""
                    action = Action(ACTION_FINAL, last.split("got a response: ", 1)[-1] or "Done.")
                break
            action = self._next_action(ex, scratch, out)
            if action.name == ACTION_FINAL:
                break
            raw = self._raw(action)
            try:
                args = validate_args(action.name, action.args)
            except ToolArgError as e:
                obs, ok, args = wrap(action.name, f"Error: {e}"), False, action.args
            else:
                obs, ok = execute(action.name, args), True
                self._track(action.name, args, obs)
            out.tool_calls.append({"name": action.name, "args": args, "observation": obs, "ok": ok})
            ex.tools.append(summarize_call(action.name, args if isinstance(args, dict) else {}, obs))
            scratch += self._observation_message(raw, obs)
        out.answer = str(action.args).strip() or "Done."
        ex.assistant = out.answer
        return out

    def _raw(self, action: Action) -> str:
        if self.cfg.mode == "react_json":
            return json.dumps({"action": action.name, "action_input": action.args})
        return "<tool_call>" + json.dumps({"name": action.name, "arguments": action.args}) + "</tool_call>"

    def _track(self, name: str, args: dict, obs: str) -> None:
        """Keep the step view in sync with what the tools report."""
        m = re.search(r"\bstep (\d+) of (\d+)", obs)
        if m and "not a valid step" not in obs:
            self.observe_state({"current_step": int(m.group(1)), "n_steps": int(m.group(2))})

    # ---- session state (resume) ------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"memory": self.memory.to_json(), "view": dict(self.view)}

    def load_state_dict(self, d: dict) -> None:
        self.memory = Memory.from_json(d["memory"])
        self.view = dict(d["view"])
