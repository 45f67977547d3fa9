"""The XR bridge: the LEGO assistant's WebSocket, extended with the live assembly scene, and the
WebXR page served beside it.

One protocol implementation: the frames, the v1/v2 parsing and the turn loop are
`lathe.serve.lego_protocol` (ChatSession); sessions, agents and simulators are the LEGO app's
`Assistant`. The bridge adds, per connection:

- `scene` frames (server -> client): `{type: "scene", seq, kind: "full"|"diff", session, t, state,
  highlight, root, step_text, glb?, remove?, poses?}`; `glb` is base64. A full frame replaces the
  client's scene; a diff carries only the bricks that appeared. A client may send
  `{type: "scene"}` to ask for a full frame again.
- `action` frames (client -> server): `{type: "action", name, args}` runs one XR tool directly (the
  page's buttons, the console's step controls), answered by `action_result` and a scene frame.
- a bounded send queue (`sendq.SendQueue`) that coalesces scene frames for slow clients and never
  drops an utterance;
- bearer token (header, or the subprotocol `lathe.token.<token>` for browsers, which cannot set
  headers) and an Origin allow-list;
- resume: `?session=<id>` (or a v2 `human.session`) rebinds memory and scene; the first frame on
  a v2 connection is the session's full scene.

v1 connections are Unity clients: they execute tool calls themselves (`ToolUnity:` / `Unity:`),
and the session's simulator mirrors each call the client answered, so watchers see the scene.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from lathe.platform.config import Strict
from lathe.serve.auth import bearer_matches, origin_allowed
from lathe.serve.config import LegoAppConfig
from lathe.serve.lego_protocol import (CLOSE_BAD_TOKEN, TIMEOUT_OBSERVATION, V2_SUBPROTOCOL, ChatSession,
                                       ProtocolError, register_client_frame)
from lathe.xr_bridge.scene import ManualScene, View
from lathe.xr_bridge.sendq import CLOSE_TOO_SLOW, SendQueue

log = logging.getLogger("lathe.xr_bridge")
CLOSE_BAD_ORIGIN = 4003
TOKEN_SUBPROTOCOL = "lathe.token."
WEB = Path(__file__).resolve().parent / "web"


class SceneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["scene"] = "scene"
    want: Literal["full"] = "full"


class ActionFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["action"] = "action"
    id: str | int | None = None
    name: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


register_client_frame("scene", SceneRequest)
register_client_frame("action", ActionFrame)


class BridgeConfig(Strict):
    lego: LegoAppConfig = Field(default_factory=LegoAppConfig, description="the assistant (agent, LLM, manual)")
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0: a free port")
    allowed_origins: list[str] = Field(default_factory=list,
                                       description="browser Origins allowed besides the bridge's own; '*' for any")
    v1_transport: Literal["client", "simulator"] = Field("client", description="v1 (Unity) clients run the tools")
    v2_transport: Literal["client", "simulator"] = Field("simulator", description="the WebXR page renders; "
                                                                                  "the simulator answers")
    max_text_backlog: int = Field(256, ge=1, description="text frames a client may fall behind before 4008")
    png_size: tuple[int, int] = (640, 480)


def scene_frame(payload: dict, seq: int, session: str, t: float) -> dict:
    return {"type": "scene", "seq": seq, "session": session, "t": t, **payload}


class Connection:
    """One socket: its ChatSession, send queue, and the scene view the client last received."""

    def __init__(self, bridge: "XRBridge", ws, version: str):
        self.bridge, self.ws, self.version = bridge, ws, version
        self.loop = asyncio.get_running_loop()
        self.sent_view: View | None = None
        self.seq = 0
        self._unsub = None
        self.queue = SendQueue(ws.send_text, self._scene_text, bridge.cfg.max_text_backlog, self._overflow)
        transport = bridge.cfg.v1_transport if version == "v1" else bridge.cfg.v2_transport
        self.chat = ChatSession(self.queue.put_text, version, run_turn=lambda t, e: None, transport=transport,
                                local_execute=lambda n, a: "", tool_timeout_s=bridge.cfg.lego.tool_timeout_s,
                                on_session=self.bind)
        self.chat.on("scene", lambda chat, frame: self._on_scene(frame))
        self.chat.on("action", lambda chat, frame: self._on_action(frame))
        self.session = None

    def bind(self, chat: ChatSession, sid: str | None) -> None:
        a = self.bridge.assistant
        a.bind(chat, sid)
        s = self.session = a.sessions[chat.session_id]
        if chat.transport == "client":  # the simulator mirrors what the client did, for the scene
            inner = chat.run_turn

            def run_turn(text, execute):
                def mirrored(name, args):
                    obs = execute(name, args)
                    if obs != TIMEOUT_OBSERVATION:
                        s.sim.execute(name, args)
                    return obs

                return inner(text, mirrored)

            chat.run_turn = run_turn
        if self._unsub is not None:
            self._unsub()
        self.sent_view = None  # a new binding starts from a full scene
        self._unsub = s.sim.subscribe(self._on_sim_event)
        if self.version == "v2":
            self.queue.mark_scene()

    def _on_sim_event(self, event: dict) -> None:  # any thread (the turn's worker, an action)
        t = time.time()
        try:
            self.loop.call_soon_threadsafe(self.queue.mark_scene, t)
        except RuntimeError:  # the loop is gone with the connection
            pass

    def _scene_text(self, t: float) -> str | None:
        if self.version != "v2" or self.session is None:
            return None
        scene = self.bridge.scene
        view = scene.view(self.session.sim.state())
        if self.sent_view is not None and view == self.sent_view:
            return None
        payload = scene.full_frame(view) if self.sent_view is None else scene.diff_frame(self.sent_view, view)
        self.seq += 1
        self.sent_view = view
        return json.dumps(scene_frame(payload, self.seq, self.chat.session_id, t))

    async def _overflow(self) -> None:
        self.bridge.stats["too_slow"] += 1
        try:
            await self.ws.close(code=CLOSE_TOO_SLOW, reason="client too slow: text frames backed up")
        except Exception:
            pass

    async def _on_scene(self, frame: SceneRequest) -> None:
        self.sent_view = None
        self.queue.mark_scene()

    async def _on_action(self, frame: ActionFrame) -> None:
        from lathe.methods.lego.tools import BY_NAME

        if frame.name not in BY_NAME:
            raise ProtocolError("unknown_tool", f"action.name: {frame.name!r} is not one of the 18 XR tools")
        s = self.session
        res = await asyncio.to_thread(s.sim.execute, frame.name, frame.args)
        s.agent.observe_state(s.sim.state())
        s.agent.add_context(f"the trainee pressed {frame.name}: {res.text}")
        s.last_seen = time.monotonic()
        await self.chat.send_frame({"type": "action_result", "id": frame.id, "name": res.name, "ok": res.ok,
                                    "text": res.text, "state": {"current_step": s.sim.current_step,
                                                                "n_steps": s.sim.n_steps}})

    async def close(self) -> None:
        if self._unsub is not None:
            self._unsub()
        await self.chat.close()
        await self.queue.close()


class XRBridge:
    """The assistant's sessions plus the scene; `app()` is its ASGI app."""

    def __init__(self, cfg: BridgeConfig, llm=None, token: str | None = None):
        from lathe.serve.lego_app import Assistant, make_llm

        self.cfg, self.token = cfg, token
        register_client_frame("scene", SceneRequest)  # again here: the registry is process-global
        register_client_frame("action", ActionFrame)
        if llm is None:
            llm = make_llm(cfg.lego)
        self.assistant = Assistant(cfg.lego, llm)
        self.scene = ManualScene(self.assistant.manual)
        self.connections: set[Connection] = set()
        self.stats = {"connections": 0, "refused_token": 0, "refused_origin": 0, "too_slow": 0}
        self.own_origins: list[str] = []

    def set_address(self, host: str, port: int) -> None:
        names = {host} | ({"127.0.0.1", "localhost", "[::1]"} if host in ("127.0.0.1", "localhost", "::1") else set())
        self.own_origins = [f"{scheme}://{h}:{port}" for h in names for scheme in ("http", "https")]

    def dropped(self) -> int:
        return sum(c.queue.dropped for c in self.connections)

    # --- the socket --------------------------------------------------------------------------
    async def serve_socket(self, ws) -> None:
        offered = list(ws.scope.get("subprotocols") or [])
        token_ok = bearer_matches(ws.headers.get("authorization"), self.token) or any(
            p.startswith(TOKEN_SUBPROTOCOL) and bearer_matches(f"Bearer {p[len(TOKEN_SUBPROTOCOL):]}", self.token)
            for p in offered)
        v2 = V2_SUBPROTOCOL in offered
        if not origin_allowed(ws.headers.get("origin"), [*self.own_origins, *self.cfg.allowed_origins]):
            self.stats["refused_origin"] += 1
            await ws.accept(subprotocol=V2_SUBPROTOCOL if v2 else None)
            await ws.close(code=CLOSE_BAD_ORIGIN, reason="Origin not allowed")
            return
        if not token_ok:
            self.stats["refused_token"] += 1
            await ws.accept(subprotocol=V2_SUBPROTOCOL if v2 else None)
            await ws.close(code=CLOSE_BAD_TOKEN, reason="missing or wrong bearer token")
            return
        await ws.accept(subprotocol=V2_SUBPROTOCOL if v2 else None)
        conn = Connection(self, ws, "v2" if v2 else "v1")
        self.connections.add(conn)
        self.stats["connections"] += 1
        limit = self.cfg.lego.max_frame_bytes
        try:
            conn.bind(conn.chat, ws.query_params.get("session"))
            while not conn.queue.closed:
                msg = await ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    break
                data = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
                if len(data) > limit:
                    await conn.chat.send_error("too_large", f"frame of {len(data)} bytes exceeds {limit}")
                    continue
                try:
                    await conn.chat.handle(data)
                except Exception as e:  # a bug on our side for this frame: say so, keep the socket
                    log.warning("xr bridge: frame failed: %s: %s", type(e).__name__, e)
                    await conn.chat.send_error("internal", f"{type(e).__name__}: {e}"[:300])
        except Exception as e:  # a vanished client: the others keep being served
            log.debug("xr bridge: connection ended: %s: %s", type(e).__name__, e)
        finally:
            self.connections.discard(conn)
            await conn.close()
            sessions = self.assistant.sessions
            if conn.chat.session_id in sessions:
                sessions[conn.chat.session_id].last_seen = time.monotonic()

    # --- HTTP --------------------------------------------------------------------------------
    def session_view(self, sid: str) -> View:
        from lathe.platform.errors import LatheError

        s = self.assistant.sessions.get(sid)
        if s is None:
            raise LatheError(f"no session {sid!r}")
        return self.scene.view(s.sim.state())

    def app(self):
        from lathe.platform.errors import LatheError
        from lathe.xr_bridge import assets

        api = FastAPI(title="lathe XR bridge", docs_url=None, redoc_url=None)
        bridge = self

        def check_http(request: Request) -> None:
            if not bearer_matches(request.headers.get("authorization"), bridge.token):
                raise HTTPException(401, "missing or wrong bearer token")

        @api.get("/healthz")
        def healthz() -> dict:
            a = bridge.assistant
            return {"status": "ok", "manual": a.manual.manual_id, "n_steps": a.manual.n_steps,
                    "sessions": len(a.sessions), "clients": len(bridge.connections), **bridge.stats,
                    "dropped_scene_frames": bridge.dropped()}

        @api.websocket("/chatbot")
        async def chatbot(ws: WebSocket) -> None:
            await bridge.serve_socket(ws)

        @api.get("/")
        def root():
            return RedirectResponse("/xr/")

        @api.get("/xr")
        def xr_redirect():
            return RedirectResponse("/xr/")

        @api.get("/xr/")
        def page():
            return FileResponse(WEB / "index.html", media_type="text/html",
                                headers={"Cache-Control": "no-store"})

        @api.get("/xr/{name}.js")
        def client_js(name: str):
            path = WEB / f"{name}.js"
            if not name.replace("_", "").isalnum() or not path.is_file():
                raise HTTPException(404, f"no {name}.js")
            return FileResponse(path, media_type="text/javascript")

        @api.get("/xr/vendor/{path:path}")
        def vendored(path: str):
            root = assets.VENDOR.resolve()
            target = (root / path).resolve()
            if root not in target.parents or not target.is_file():
                missing = assets.missing()
                detail = f"not vendored: {missing[0]}; run `make install`" if missing else f"no vendor file {path}"
                raise HTTPException(404, detail)
            return FileResponse(target, media_type="text/javascript" if target.suffix == ".js" else None)

        @api.get("/scene/{sid}.glb")
        def scene_glb(sid: str, request: Request):
            check_http(request)
            try:
                view = bridge.session_view(sid)
            except LatheError as e:
                return JSONResponse({"error": str(e)}, status_code=404)
            return Response(bridge.scene.glb(view), media_type="model/gltf-binary")

        @api.get("/scene/{sid}.png")
        async def scene_png(sid: str, request: Request):
            check_http(request)
            try:
                view = bridge.session_view(sid)
            except LatheError as e:
                return JSONResponse({"error": str(e)}, status_code=404)
            w, h = bridge.cfg.png_size
            png = await asyncio.to_thread(bridge.scene.png, view, w, h)
            return Response(png, media_type="image/png")

        return api


class BridgeServer:
    """Runs an XRBridge under uvicorn in a background thread (the console's process, a test)."""

    def __init__(self, bridge: XRBridge, host: str | None = None, port: int | None = None):
        from lathe.ui.head import free_port

        self.bridge = bridge
        self.host = host or bridge.cfg.host
        self.port = port or bridge.cfg.port or free_port()
        if self.host not in ("127.0.0.1", "localhost", "::1") and not bridge.token:
            from lathe.platform.errors import ConfigError

            raise ConfigError(f"host={self.host}: serving the XR bridge beyond loopback requires a token")
        bridge.set_address(self.host, self.port)
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/chatbot"

    def start(self, timeout: float = 30) -> "BridgeServer":
        import threading

        import uvicorn

        config = uvicorn.Config(self.bridge.app(), host=self.host, port=self.port, log_level="warning",
                                ws_max_size=max(1 << 20, 4 * self.bridge.cfg.lego.max_frame_bytes),
                                lifespan="off", ws="websockets-sansio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="lathe-xr-bridge", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the XR bridge did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "BridgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
