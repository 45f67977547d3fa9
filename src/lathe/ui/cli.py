"""`lathe ui`: the console (Jobs, Tune, Runs, Services, Assistant) and the XR bridge with its WebXR page.

Without --address the console starts its own Ray head on 127.0.0.1 (jobs run there, never in the
console's process) and stops it on Ctrl-C. Prints the console URL and the WebXR page's URL.
"""

from __future__ import annotations

import sys


def _cmd_ui(args) -> int:
    from lathe.ui.launch import env_token, launch

    handle = launch(address=args.address, host=args.host, port=args.port, bridge_port=args.bridge_port,
                    assistant_config=args.assistant, assistant_overrides=args.set, llm_url=args.llm_url,
                    token=env_token(), with_assistant=not args.no_assistant, quiet=True)
    print(f"lathe ui: console at {handle.console_url}", flush=True)
    if handle.xr_url:
        print(f"lathe ui: WebXR page at {handle.xr_url}  (XR bridge WebSocket: {handle.bridge_url}/chatbot)",
              flush=True)
    print(f"lathe ui: jobs go to {handle.jobs_address}; Ctrl-C stops everything this command started",
          file=sys.stderr, flush=True)
    handle.wait()
    return 0


def add_parser(subparsers) -> None:
    sp = subparsers.add_parser("ui", help="the web console (jobs, sweeps, runs, services, assistant) and the XR bridge")
    sp.add_argument("--address", help="Ray dashboard / Jobs API of a cluster (default: the console starts its own)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (beyond loopback needs LATHE_UI_TOKEN)")
    sp.add_argument("--port", type=int, default=7860, help="console port (0: a free one)")
    sp.add_argument("--bridge-port", type=int, default=0, help="XR bridge port (0: a free one)")
    sp.add_argument("--assistant", default="configs/serve/lego.yaml", metavar="CONFIG",
                    help="serve YAML whose lego: section configures the assistant")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override in that config")
    sp.add_argument("--llm-url", help="OpenAI-compatible endpoint for the assistant's LLM, e.g. http://127.0.0.1:8000/llm/v1")
    sp.add_argument("--no-assistant", action="store_true", help="console only: no assistant, no XR bridge")
    sp.set_defaults(fn=_cmd_ui)
