"""The console's Assistant tab: a v2 client of the XR bridge (the same socket the headset uses).

Each chat turn or step button opens the bridge's WebSocket with the console session's id (so memory
and step resume), sends a `human` or `action` frame, collects the turn's tool calls and scene
frames until the answer, then fetches the session's GLB and rendered PNG over HTTP for Model3D
and the image. No model runs in the console: the agent and its LLM live behind the bridge.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx

from lathe.platform.errors import LatheError

STEP_TOOLS = [("◀ back", "FrontStep", {}), ("next ▶", "NextStep", {}), ("explode", "Explode", {}),
              ("recover", "Recover", {}), ("enlarge", "Enlarge", {}), ("shrink", "Shrink", {}),
              ("rotate ⟲", "Rotate", {"direction": "Left"}), ("highlight", "HighlightCorrectComponents", {})]


class AssistantClient:
    def __init__(self, bridge_url: str, token: str | None = None, timeout_s: float = 120.0):
        self.http = bridge_url.rstrip("/")
        self.ws = self.http.replace("http://", "ws://").replace("https://", "wss://") + "/chatbot"
        self.token, self.timeout_s = token, timeout_s
        self.out = Path(tempfile.mkdtemp(prefix="lathe-ui-scene-"))

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _exchange(self, session: str | None, frame: dict, until: str) -> dict:
        from websockets.sync.client import connect

        url = self.ws + (f"?session={session}" if session else "")
        tool_calls, scenes, result = [], 0, None
        try:
            with connect(url, subprotocols=["lathe.xr.v2"], additional_headers=self._headers(),
                         open_timeout=30, max_size=1 << 26) as ws:
                first = json.loads(ws.recv(timeout=self.timeout_s))  # the session's full scene
                session = first.get("session", session)
                ws.send(json.dumps(frame))
                deadline = time.monotonic() + self.timeout_s
                while result is None:
                    f = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                    if f["type"] == "tool_call":
                        tool_calls.append([f["name"], json.dumps(f.get("args") or {})])
                    elif f["type"] == "scene":
                        scenes += 1
                    elif f["type"] == "error":
                        raise LatheError(f"assistant: {f.get('code')}: {f.get('message')}")
                    elif f["type"] == until:
                        result = f
                # scene frames that follow the answer are fetched over HTTP below
        except TimeoutError:
            raise LatheError(f"assistant: no answer within {self.timeout_s:.0f} s") from None
        except OSError as e:
            raise LatheError(f"assistant: cannot reach the XR bridge at {self.ws}: {e}") from None
        return {"session": session, "result": result, "tool_calls": tool_calls, "scenes": scenes,
                **self.scene_files(session)}

    def scene_files(self, session: str) -> dict:
        """The session's GLB and PNG, written to files for Gradio's Model3D and Image."""
        out = {}
        for ext in ("glb", "png"):
            r = httpx.get(f"{self.http}/scene/{session}.{ext}", headers=self._headers(), timeout=self.timeout_s)
            if r.status_code != 200:
                raise LatheError(f"assistant: scene {ext}: HTTP {r.status_code}: {r.text[:200]}")
            path = self.out / f"{session}-{time.time_ns()}.{ext}"  # a new name, so the page reloads it
            path.write_bytes(r.content)
            out[ext] = str(path)
        return out

    def turn(self, session: str | None, text: str) -> dict:
        return self._exchange(session, {"type": "human", "id": f"ui{time.time_ns()}", "text": text}, "ai")

    def action(self, session: str | None, name: str, args: dict) -> dict:
        return self._exchange(session, {"type": "action", "id": f"ui{time.time_ns()}", "name": name, "args": args},
                              "action_result")

    def state(self, session: str | None) -> dict:
        """Connect once (a new session when None) and return its files, without a turn."""
        from websockets.sync.client import connect

        url = self.ws + (f"?session={session}" if session else "")
        with connect(url, subprotocols=["lathe.xr.v2"], additional_headers=self._headers(), open_timeout=30,
                     max_size=1 << 26) as ws:
            first = json.loads(ws.recv(timeout=self.timeout_s))
        return {"session": first["session"], "step": first.get("state"), **self.scene_files(first["session"])}


def assistant_tab(client: AssistantClient, demo) -> None:
    import gradio as gr

    from lathe.ui.app import guarded

    with gr.Tab("Assistant", id="assistant"):
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="LEGO assembly assistant", height=380, elem_id="assistant-chat")
                with gr.Row():
                    say = gr.Textbox(show_label=False, placeholder="Ask the assistant…", scale=5,
                                     elem_id="assistant-say")
                    send = gr.Button("send", variant="primary", scale=1, elem_id="assistant-send")
                error = gr.Markdown(elem_id="assistant-error")
                calls = gr.Dataframe(headers=["tool", "args"], label="tool calls of the last turn", interactive=False,
                                     elem_id="assistant-calls")
            with gr.Column(scale=3):
                image = gr.Image(label="rendered scene", type="filepath", interactive=False, elem_id="assistant-image")
                model3d = gr.Model3D(label="3D scene (GLB)", elem_id="assistant-model3d", height=320)
                step = gr.Markdown(elem_id="assistant-step")
                with gr.Row():
                    buttons = [(gr.Button(label, size="sm", elem_id=f"assistant-{tool}-{i}"), tool, args)
                               for i, (label, tool, args) in enumerate(STEP_TOOLS)]

    def _step_md(res) -> str:
        r = res.get("result") or {}
        st = r.get("state") or {}
        return f"**step {st.get('current_step', '?')}** of {st.get('n_steps', '?')}" if st else ""

    @guarded(8, 5)
    def on_send(text, history, sid):
        if not text or not text.strip():
            raise LatheError("type something to ask the assistant")
        res = client.turn(sid, text.strip())
        history = list(history or []) + [{"role": "user", "content": text},
                                         {"role": "assistant", "content": res["result"]["text"]}]
        return history, "", res["png"], res["glb"], res["session"], "", res["tool_calls"] or [["(none)", ""]], \
            _step_md(res)

    send.click(on_send, [say, chat, session], [chat, say, image, model3d, session, error, calls, step])
    say.submit(on_send, [say, chat, session], [chat, say, image, model3d, session, error, calls, step])

    for btn, tool, args in buttons:
        def press(sid, _tool=tool, _args=args):
            try:
                res = client.action(sid, _tool, _args)
            except Exception as e:  # noqa: BLE001
                from lathe.ui.app import one_line

                return gr.skip(), gr.skip(), gr.skip(), one_line(e), gr.skip()
            r = res["result"]
            return res["png"], res["glb"], res["session"], "", f"{_step_md(res)} — {r.get('text', '')}"

        btn.click(press, session, [image, model3d, session, error, step])

    demo.load(lambda sid: _load(client, sid), session, [image, model3d, session, error])


def _load(client: AssistantClient, sid):
    import gradio as gr

    from lathe.ui.app import one_line

    try:
        res = client.state(sid)
    except Exception as e:  # noqa: BLE001
        return gr.skip(), gr.skip(), gr.skip(), one_line(e)
    return res["png"], res["glb"], res["session"], ""
