"""`lathe serve CONFIG [key=value ...] [--address ADDR]`: deploy the apps of a serve YAML.

Without --address: embedded Ray on 127.0.0.1, prints the URLs and serves until Ctrl-C.
With --address (or RAY_ADDRESS): deploys to that cluster, prints the URLs and returns (the apps
keep running there; `serve shutdown` removes them).
"""

from __future__ import annotations

import os
import sys


def _cmd_serve(args) -> int:
    from lathe.platform.config import load_config
    from lathe.platform.errors import ConfigError
    from lathe.platform.runtime import ray_session
    from lathe.serve.config import ServeConfig

    cfg = load_config(args.config, args.overrides)
    if not isinstance(cfg, ServeConfig):
        raise ConfigError(f"{args.config}: job: expected 'serve' for lathe serve (got {cfg.job!r}); use lathe run")
    address = args.address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    with ray_session(address, quiet=not args.verbose, serve_direct_ingress=cfg.http.ingress == "direct"):
        from lathe.serve.deploy import deploy, wait_forever

        urls = deploy(cfg)
        for name, url in urls.items():
            print(f"lathe serve: {name} at {url}  (OpenAPI: {url}/docs)", flush=True)
        if address:
            print("lathe serve: deployed to the cluster; apps keep running after this command", flush=True)
            return 0
        print("lathe serve: serving; Ctrl-C to stop", file=sys.stderr, flush=True)
        wait_forever()
    return 0


def add_parser(subparsers) -> None:
    sp = subparsers.add_parser("serve", help="deploy the retriever / LLM apps of a serve YAML on Ray Serve")
    sp.add_argument("config", help="serve YAML (see configs/serve/)")
    sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sp.add_argument("--address", help="deploy to this Ray cluster (default: embedded local Ray)")
    sp.add_argument("--verbose", action="store_true", help="show Ray's logs")
    sp.set_defaults(fn=_cmd_serve)
