"""Start the console: a cluster for jobs (the console's own loopback Ray head, or `address`), the XR
bridge with the LEGO assistant, and the Gradio app. `launch(...)` returns a handle whose `stop()`
ends everything it started; `lathe ui` calls it and waits for Ctrl-C."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lathe.platform.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class UIHandle:
    console_url: str
    bridge_url: str | None
    xr_url: str | None
    jobs_address: str
    stoppers: list = field(default_factory=list)
    bridge: Any = None

    def stop(self) -> None:
        for fn in reversed(self.stoppers):
            try:
                fn()
            except Exception:
                pass
        self.stoppers.clear()

    def wait(self) -> None:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def bridge_config(assistant_config: str | None, overrides: list[str], llm_url: str | None, host: str,
                  port: int):
    """The bridge's config from a LEGO serve YAML (its `lego:` section) plus overrides; `llm_url`
    (an OpenAI-compatible endpoint) replaces an in-cluster LLM deployment, which this process
    cannot hold a handle to."""
    from lathe.platform.config import load_config
    from lathe.serve.config import LegoAppConfig
    from lathe.xr_bridge.bridge import BridgeConfig

    if assistant_config:
        cfg = load_config(assistant_config, overrides)
        lego = getattr(cfg, "lego", None)
        if lego is None:
            raise ConfigError(f"{assistant_config}: no 'lego:' section (the assistant to serve)")
        data = lego.model_dump(mode="json")
    else:
        data = LegoAppConfig().model_dump(mode="json")
    if llm_url:
        data["llm"] = {**data["llm"], "backend": "openai", "base_url": llm_url}
    elif data["llm"]["backend"] == "deployment":
        where = assistant_config or "the default assistant"
        raise ConfigError(f"{where}: lego.llm.backend=deployment runs the LLM inside Ray Serve; give the console "
                          f"--llm-url (an OpenAI-compatible endpoint, e.g. lathe serve configs/serve/llm.yaml "
                          f"-> http://127.0.0.1:8000/llm/v1), or set lego.llm.backend=openai|scripted")
    return BridgeConfig.model_validate({"lego": data, "host": host, "port": port})


def launch(address: str | None = None, host: str = "127.0.0.1", port: int = 7860, bridge_port: int = 0,
           assistant_config: str | None = "configs/serve/lego.yaml", assistant_overrides: list[str] | None = None,
           llm_url: str | None = None, token: str | None = None, with_assistant: bool = True,
           configs_root: str | Path = "configs", runs_root: str | Path = "runs", working_dir: str | Path = ".",
           quiet: bool = False) -> UIHandle:
    """Start everything and return at once (the Gradio server runs in its own thread)."""
    from lathe.ui.app import Console, build
    from lathe.ui.head import LocalHead, free_port
    from lathe.ui.jobs import JobsAPI

    if host not in LOOPBACK and not token:
        raise ConfigError(f"host={host}: exposing the console beyond loopback requires a token (LATHE_UI_TOKEN)")
    handle = UIHandle("", None, None, "")
    try:
        links: dict[str, str] = {}
        runs_local = None
        if address:
            jobs_address = address
            if any(h in address for h in LOOPBACK):
                runs_local = runs_root
        else:
            head = LocalHead(cwd=working_dir).start()
            handle.stoppers.append(head.stop)
            jobs_address = head.address
            runs_local = runs_root
        links["Ray dashboard / Jobs API"] = jobs_address
        handle.jobs_address = jobs_address
        assistant = None
        if with_assistant:
            from lathe.ui.assistant import AssistantClient
            from lathe.xr_bridge.bridge import BridgeServer, XRBridge

            cfg = bridge_config(assistant_config, list(assistant_overrides or []), llm_url, host,
                                bridge_port or free_port())
            server = BridgeServer(XRBridge(cfg, token=token)).start()
            handle.stoppers.append(server.stop)
            handle.bridge = server.bridge
            handle.bridge_url, handle.xr_url = server.url, f"{server.url}/xr/"
            links["XR bridge (WebSocket)"] = server.ws_url
            links["WebXR page"] = handle.xr_url + (f"#token={token}" if token else "")
            assistant = AssistantClient(server.url, token)
        console = Console(jobs=JobsAPI(jobs_address, working_dir=working_dir, runs_root=runs_local),
                          dashboard=jobs_address, configs_root=Path(configs_root), runs_root=Path(runs_root),
                          links=links, assistant=assistant)
        demo = build(console)
        demo.queue(default_concurrency_limit=8)
        auth = [("lathe", token)] if token else None
        demo.launch(server_name=host, server_port=port or free_port(), prevent_thread_lock=True, quiet=quiet,
                    auth=auth, show_error=False, allowed_paths=[str(Path(runs_root).resolve()), tempfile_root()])
        handle.stoppers.append(demo.close)
        handle.console_url = demo.local_url.rstrip("/")
        return handle
    except BaseException:
        handle.stop()
        raise


def tempfile_root() -> str:
    import tempfile

    return tempfile.gettempdir()


def env_token() -> str | None:
    return os.environ.get("LATHE_UI_TOKEN") or None
