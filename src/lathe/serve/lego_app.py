"""Ray Serve app `LegoAssistant`: the cerebral agent over HTTP and WebSocket (spec section 7).

Routes (root path by default, as the reference, so a Unity client only changes its host):
  POST /ask      {text, session?}  -> {answer, session, tool_calls, state}   one turn, simulator transport
  WS   /chatbot  v1 text frames (default) or v2 JSON frames (subprotocol `lathe.xr.v2`); see lego_protocol
  GET  /healthz
Sessions (agent memory + scene) live in the replica that holds them and resume within
`session_ttl_s` (`?session=<id>` on connect, or v2 `human.session`). The LLM is a separate Serve
deployment reached through a handle (or an OpenAI-compatible URL). A bad bearer token closes the
socket with code 4000; the token is never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lathe.serve.auth import install_guards
from lathe.serve.lego_protocol import CLOSE_BAD_TOKEN, V2_SUBPROTOCOL, ChatSession, EventFrame

api = FastAPI(title="lathe LEGO assistant", description="The LEGO-MRTA assembly assistant (cerebral agent + XR tools).")
install_guards(api)


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=8000, description="the trainee's utterance")
    session: str | None = Field(None, max_length=128, description="resume this session (memory + scene)")


@dataclass
class Session:
    agent: object
    sim: object
    last_seen: float
    lock: threading.Lock = field(default_factory=threading.Lock)  # one turn at a time per session


def make_llm(cfg, handle=None):
    """The agent's LLM client (the one shared client, lathe.methods.agents.llm)."""
    from lathe.methods.agents import llm as L

    c = cfg.llm
    if c.backend == "scripted":
        return L.ScriptedLLM([tuple(r) for r in c.script])
    if c.backend == "openai":
        return L.OpenAIChat(c.base_url, model=c.api_model, api_key_env=c.api_key_env, allow_remote=c.allow_remote)
    from lathe.serve.llm_app import ChatRequest

    return L.HandleChat(handle, method="chat", wrap=lambda body: ChatRequest(**body))


class Assistant:
    """Session store and turn logic, without Serve (the deployment below wraps it)."""

    def __init__(self, cfg, llm):
        from lathe.data.lego import generate_manual, load_manual

        self.cfg, self.llm = cfg, llm
        self.manual = load_manual(cfg.manual) if cfg.manual else generate_manual(cfg.manual_seed, cfg.manual_steps)
        self.sessions: dict[str, Session] = {}

    def new_session(self) -> Session:
        from lathe.methods.lego import AssemblySimulator
        from lathe.methods.lego.agent import AgentConfig, CerebralAgent
        from lathe.methods.lego.vision import make_vision

        sim = AssemblySimulator(manual=self.manual, fault_rate=self.cfg.fault_rate)
        if self.cfg.vision != "scene_state":
            sim.vision = make_vision(self.cfg.vision, sim, self.cfg.vision_path)
        llm = self.llm.clone() if hasattr(self.llm, "clone") else self.llm
        agent = CerebralAgent(llm, self.manual, AgentConfig(**self.cfg.agent.model_dump()))
        return Session(agent, sim, time.monotonic())

    def session(self, sid: str | None) -> tuple[str, Session]:
        """Resume `sid` if it is alive, else start it (a new id when None)."""
        now = time.monotonic()
        for k in [k for k, s in self.sessions.items() if now - s.last_seen > self.cfg.session_ttl_s]:
            del self.sessions[k]
        if sid is not None and sid in self.sessions:
            s = self.sessions[sid]
        else:
            if len(self.sessions) >= self.cfg.max_sessions:
                oldest = min(self.sessions, key=lambda k: self.sessions[k].last_seen)
                del self.sessions[oldest]
            sid = sid or uuid.uuid4().hex[:16]
            s = self.sessions[sid] = self.new_session()
        s.last_seen = now
        return sid, s

    def ask(self, text: str, sid: str | None) -> dict:
        sid, s = self.session(sid)
        with s.lock:
            out = s.agent.run_turn(text, s.sim.call)
        s.last_seen = time.monotonic()
        return {"answer": out.answer, "session": sid, "state": s.sim.state(),
                "tool_calls": [{"name": c["name"], "args": c["args"], "observation": c["observation"]}
                               for c in out.tool_calls]}

    def bind(self, chat: ChatSession, sid: str) -> None:
        """Point a connection at session `sid` (its agent, scene and event handlers)."""
        from lathe.methods.lego.tools import wrap

        sid, s = self.session(sid)
        chat.session_id = sid

        def run_turn(text, execute):
            with s.lock:
                return s.agent.run_turn(text, execute)

        chat.run_turn, chat.local_execute, chat.wrap = run_turn, s.sim.call, wrap

        def on_event(f: EventFrame) -> None:
            s.last_seen = time.monotonic()
            if f.kind == "step_state":
                step = f.payload.get("current_step")
                if isinstance(step, int) and not isinstance(step, bool):
                    s.sim.set_step(step)
                    s.agent.observe_state({"current_step": s.sim.current_step})
            elif f.kind == "frame":
                stamp = f.payload.get("timestamp")
                if isinstance(stamp, (int, float)):
                    s.sim.frames[float(stamp)] = f.payload.get("image_id")
            s.agent.add_context(f"{f.kind}: {json.dumps(f.payload, sort_keys=True)[:300]}")

        def on_tool_state(state: dict) -> None:
            step = state.get("current_step")
            if isinstance(step, int) and not isinstance(step, bool):
                s.sim.set_step(step)
            s.agent.observe_state(state)

        chat.on_event, chat.on_tool_state = on_event, on_tool_state

    async def serve_socket(self, ws: WebSocket, token: str | None) -> None:
        if token:
            got = ws.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                await ws.accept()
                await ws.close(code=CLOSE_BAD_TOKEN, reason="missing or wrong bearer token")
                return
        v2 = V2_SUBPROTOCOL in (ws.scope.get("subprotocols") or [])
        await ws.accept(subprotocol=V2_SUBPROTOCOL if v2 else None)
        chat = ChatSession(ws.send_text, "v2" if v2 else "v1", run_turn=lambda t, e: None,
                           transport=self.cfg.transport, local_execute=lambda n, a: "",
                           tool_timeout_s=self.cfg.tool_timeout_s, on_session=self.bind)
        self.bind(chat, ws.query_params.get("session"))
        try:
            while True:
                msg = await ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    break
                data = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
                if len(data) > self.cfg.max_frame_bytes:
                    await chat.send_error("too_large", f"frame of {len(data)} bytes exceeds {self.cfg.max_frame_bytes}")
                    continue
                await chat.handle(data)
        finally:
            await chat.close()
            if chat.session_id in self.sessions:
                self.sessions[chat.session_id].last_seen = time.monotonic()


@serve.deployment(name="LegoAssistant")
@serve.ingress(api)
class LegoAssistantServer:
    def __init__(self, cfg: dict, token: str | None = None, llm_handle=None):
        from lathe.serve.config import LegoAppConfig

        self.cfg = LegoAppConfig.model_validate(cfg)
        self._token = token
        api.state.guard = {"token": token, "max_body_bytes": self.cfg.max_body_bytes}
        if isinstance(llm_handle, str):  # the LLM deployment's application name
            llm_handle = serve.get_app_handle(llm_handle)
        self.assistant = Assistant(self.cfg, make_llm(self.cfg, llm_handle))

    @api.get("/healthz")
    def healthz(self) -> dict:
        a = self.assistant
        return {"status": "ok", "manual": a.manual.manual_id, "n_steps": a.manual.n_steps,
                "sessions": len(a.sessions), "transport": self.cfg.transport, "llm": self.cfg.llm.backend}

    @api.post("/ask")
    async def ask(self, req: AskRequest) -> dict:
        try:
            return await asyncio.to_thread(self.assistant.ask, req.text, req.session)
        except Exception as e:  # the LLM backend failed: a clear 502, and the service goes on
            raise HTTPException(502, detail=f"assistant: {type(e).__name__}: {e}"[:500]) from None

    @api.websocket("/chatbot")
    async def chatbot(self, ws: WebSocket) -> None:
        await self.assistant.serve_socket(ws, self._token)


def build_app(cfg, token: str | None = None, llm_app=None):
    """A bound Serve application; `llm_app` names the running LLM application (backend: deployment)."""
    rep = cfg.replicas
    opts = {"ray_actor_options": {"num_cpus": rep.num_cpus, "num_gpus": rep.num_gpus},
            "max_ongoing_requests": rep.max_ongoing_requests, "num_replicas": rep.num_replicas}
    return LegoAssistantServer.options(**opts).bind(cfg.model_dump(), token, llm_app)
