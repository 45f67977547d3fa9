"""The LEGO assistant's WebSocket protocols and the per-connection session loop (no Ray here).

v1 (reference, text frames; for existing Unity clients):
    client -> server  `Human: <utterance>`    ASR text
                      `Unity: <response>`     the result of the last tool request
    server -> client  `ToolUnity: <Name>`     a tool request (v1 cannot carry arguments)
                      `AI: <response>`        the answer, for TTS
                      `Error: <message>`      a malformed frame (lathe's addition; the session goes on)
v2 (JSON frames, WebSocket subprotocol `lathe.xr.v2`):
    client -> server  human {id, session?, text} | event {kind, payload} | tool_result {id, ok, text, state?}
    server -> client  tool_call {id, name, args} | ai {id, text, final: true, session} | error {code, message}

Extending v2 from outside (the XR bridge adds `scene`): `register_client_frame("scene", Model)` makes
the parser accept the type, and `ChatSession.on("scene", handler)` routes it; `ChatSession.send_frame`
sends any server frame. Nothing here is LEGO-specific beyond the turn runner it is given.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

V2_SUBPROTOCOL = "lathe.xr.v2"
TIMEOUT_OBSERVATION = "Timeout error"
CLOSE_BAD_TOKEN = 4000


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HumanFrame(_Frame):
    type: Literal["human"] = "human"
    id: str | int = Field(description="echoed by the ai frame")
    session: str | None = Field(None, max_length=128)
    text: str = Field(min_length=1, max_length=8000)


class EventFrame(_Frame):
    type: Literal["event"] = "event"
    kind: Literal["metadata", "gesture", "step_state", "frame"]
    payload: dict[str, Any] = Field(default_factory=dict)


class ToolResultFrame(_Frame):
    type: Literal["tool_result"] = "tool_result"
    id: str | int
    ok: bool = True
    text: str = Field("", max_length=8000)
    state: dict[str, Any] | None = None


CLIENT_FRAMES: dict[str, type[BaseModel]] = {"human": HumanFrame, "event": EventFrame,
                                             "tool_result": ToolResultFrame}


def register_client_frame(type_name: str, model: type[BaseModel]) -> None:
    """Accept a new client -> server v2 frame type (a pydantic model with a `type` field)."""
    CLIENT_FRAMES[type_name] = model


def parse_v2(text: str | bytes) -> BaseModel:
    """One v2 frame, or ProtocolError(code, one-line message)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_json", f"frame is not JSON: {getattr(e, 'msg', e)}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_frame", "frame must be a JSON object")
    kind = obj.get("type")
    model = CLIENT_FRAMES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError("unknown_type", f"type: {kind!r} is not one of {', '.join(CLIENT_FRAMES)}")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "frame"
        raise ProtocolError("bad_frame", f"{kind}.{loc}: {err.get('msg')}") from None


def tool_call_frame(call_id: str, name: str, args: dict) -> dict:
    return {"type": "tool_call", "id": call_id, "name": name, "args": args}


def ai_frame(turn_id, text: str, session: str | None = None) -> dict:
    out = {"type": "ai", "id": turn_id, "text": text, "final": True}
    if session is not None:
        out["session"] = session
    return out


def error_frame(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def parse_v1(text: str) -> tuple[str, str]:
    """`Human: ...` -> ('human', text); `Unity: ...` -> ('unity', text); else ProtocolError."""
    for prefix, kind in (("Human:", "human"), ("Unity:", "unity")):
        if text.startswith(prefix):
            body = text[len(prefix):].strip()
            if kind == "human" and not body:
                raise ProtocolError("bad_frame", "Human: frame has no text")
            return kind, body
    raise ProtocolError("bad_frame", "v1 frames start with 'Human:' or 'Unity:'")


# --------------------------------------------------------------------------------------------
# The session loop


@dataclass
class TurnOutput:
    answer: str
    tool_calls: list[dict] = field(default_factory=list)  # [{name, args, observation}]


# run_turn(utterance, execute) -> TurnOutput, where execute(name, args) -> observation (blocking).
TurnRunner = Callable[[str, Callable[[str, dict], str]], TurnOutput]


class ChatSession:
    """Drives one WebSocket connection: parses frames, runs turns (in a worker thread, one at a time),
    sends tool calls to the client and waits `tool_timeout_s` for their results.

    `send(text)` is the socket's send coroutine. `transport`: 'client' (the client executes tool
    calls and answers) or 'simulator' (`local_execute(name, args)` answers; the client is told
    about the call with a tool_call frame and need not answer)."""

    def __init__(self, send: Callable[[str], Awaitable[None]], version: Literal["v1", "v2"],
                 run_turn: TurnRunner, transport: Literal["client", "simulator"] = "simulator",
                 local_execute: Callable[[str, dict], str] | None = None, tool_timeout_s: float = 1.0,
                 session_id: str | None = None, on_event: Callable[[EventFrame], None] | None = None,
                 on_tool_state: Callable[[dict], None] | None = None, wrap: Callable[[str, str], str] | None = None,
                 on_session: Callable[["ChatSession", str], None] | None = None):
        if transport == "simulator" and local_execute is None:
            raise ValueError("transport 'simulator' needs local_execute")
        self._send, self.version, self.run_turn = send, version, run_turn
        self.transport, self.local_execute, self.tool_timeout_s = transport, local_execute, tool_timeout_s
        self.session_id, self.on_event, self.on_tool_state = session_id, on_event, on_tool_state
        self.wrap = wrap or (lambda name, text: text)
        self.on_session = on_session  # rebinds this connection when a human frame names another session
        self._pending: dict[str, asyncio.Future] = {}
        self._v1_waiting: asyncio.Future | None = None
        self._turn_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)
        self.handlers: dict[str, Callable[["ChatSession", BaseModel], Awaitable[None] | None]] = {
            "human": ChatSession._on_human, "event": ChatSession._on_event,
            "tool_result": ChatSession._on_tool_result}
        self.last_seen = time.monotonic()
        self.turns = 0

    def on(self, type_name: str, handler: Callable[["ChatSession", BaseModel], Awaitable[None] | None]) -> None:
        """Route v2 frames of `type_name` (registered with register_client_frame) to handler(session, frame)."""
        self.handlers[type_name] = handler

    async def send_frame(self, frame: dict) -> None:
        await self._send(json.dumps(frame))

    async def send_error(self, code: str, message: str) -> None:
        if self.version == "v2":
            await self.send_frame(error_frame(code, message))
        else:
            await self._send(f"Error: {message}")

    async def handle(self, text: str | bytes) -> None:
        """One incoming frame. Never raises for bad input: the client gets an error frame."""
        self.last_seen = time.monotonic()
        try:
            if self.version == "v1":
                kind, body = parse_v1(text if isinstance(text, str) else text.decode("utf-8", "replace"))
                if kind == "human":
                    self._spawn(self._turn(None, body))
                else:
                    self._resolve_v1(body)
                return
            frame = parse_v2(text)
            handler = self.handlers.get(frame.type)
            if handler is None:
                raise ProtocolError("unknown_type", f"type: {frame.type!r} has no handler on this server")
            out = handler(self, frame)
            if asyncio.iscoroutine(out):
                await out
        except ProtocolError as e:
            await self.send_error(e.code, e.message)

    async def _on_human(self, frame: HumanFrame) -> None:
        if frame.session is not None and frame.session != self.session_id:
            if self.on_session is None:
                raise ProtocolError("bad_session", f"session: this connection is bound to session {self.session_id!r}")
            self.on_session(self, frame.session)  # a queued turn runs on the new binding (turns are serialised)
            self.session_id = frame.session
        self._spawn(self._turn(frame.id, frame.text))

    def _on_event(self, frame: EventFrame) -> None:
        if self.on_event is not None:
            self.on_event(frame)

    def _on_tool_result(self, frame: ToolResultFrame) -> None:
        if self.transport == "simulator":
            return  # the simulator answered already; a client echoing results is harmless
        fut = self._pending.get(str(frame.id))
        if fut is None or fut.done():
            raise ProtocolError("unknown_call", f"tool_result.id: no pending tool_call {frame.id!r}")
        if frame.state and self.on_tool_state is not None:
            self.on_tool_state(frame.state)
        fut.set_result(frame.text if frame.ok else f"Error: {frame.text}")

    def _resolve_v1(self, body: str) -> None:
        if self.transport == "simulator":
            return  # Unity answers every ToolUnity request; with the simulator transport it is not needed
        fut = self._v1_waiting
        if fut is None or fut.done():
            raise ProtocolError("unknown_call", "Unity: frame but no tool request is pending")
        fut.set_result(body)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for running turns (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for f in self._pending.values():
            if not f.done():
                f.cancel()

    async def _request_tool(self, name: str, args: dict) -> str:
        """Send the tool call; the observation text (client result, local result, or Timeout error)."""
        call_id = f"t{next(self._ids)}"
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self.transport == "client":
            if self.version == "v2":
                self._pending[call_id] = fut
            else:
                self._v1_waiting = fut
        if self.version == "v2":
            await self.send_frame(tool_call_frame(call_id, name, args))
        else:
            await self._send(f"ToolUnity: {name}")
        if self.transport == "simulator":
            return await asyncio.to_thread(self.local_execute, name, args)
        try:
            text = await asyncio.wait_for(fut, self.tool_timeout_s)
            return self.wrap(name, text)
        except asyncio.TimeoutError:
            return TIMEOUT_OBSERVATION
        finally:
            self._pending.pop(call_id, None)
            if self._v1_waiting is fut:
                self._v1_waiting = None

    async def _turn(self, turn_id, text: str) -> None:
        loop = asyncio.get_running_loop()

        def execute(name: str, args: dict) -> str:  # runs in the turn's worker thread
            return asyncio.run_coroutine_threadsafe(self._request_tool(name, args), loop).result()

        async with self._turn_lock:
            try:
                out = await asyncio.to_thread(self.run_turn, text, execute)
            except Exception as e:  # a failing LLM backend must not kill the socket
                await self.send_error("turn_failed", f"{type(e).__name__}: {e}"[:500])
                return
            self.turns += 1
            if self.version == "v2":
                await self.send_frame(ai_frame(turn_id if turn_id is not None else self.turns, out.answer,
                                               self.session_id))
            else:
                await self._send(f"AI: {out.answer}")
