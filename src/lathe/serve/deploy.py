"""Deploy the apps of a `ServeConfig` on the current Ray (embedded or a cluster)."""

from __future__ import annotations

import time
from pathlib import Path

from lathe.serve.auth import resolve_token
from lathe.serve.config import ServeConfig


def materialize_model(cfg: ServeConfig) -> str:
    """A local HF model dir for the LLM app: a pretrained preset's converted dir, the configured
    artifact (an adapter is merged into its recorded base, cached), or a tiny preset saved once."""
    from lathe.platform.pretrained import PRETRAINED, pretrained_dir

    m = cfg.llm.model
    cache = Path(cfg.output_root) / "serve_models"
    if m.path:
        from lathe.methods.peft.artifact import merged_dir

        return str(merged_dir(m.path, cache).resolve())
    if m.preset in PRETRAINED:
        return str(pretrained_dir(m.preset))
    out = cache / f"{m.preset}-v{m.tokenizer_vocab}-s{cfg.seed}"
    if not (out / "config.json").is_file():
        from lathe.data import qa
        from lathe.platform.zoo import resolve_source, save_pretrained

        corpus = [r["question"] + " " + r["answer"] for r in qa.generate(256, cfg.seed)]
        model, tok = resolve_source(m, corpus, cfg.seed).load()
        save_pretrained(model, tok, out)
    return str(out.resolve())


def lego_model_dir(cfg: ServeConfig) -> str:
    """The LEGO assistant's LLM dir: the configured path or preset, else the embedded default."""
    m = cfg.lego.llm.model
    if m is None:
        from lathe.jobs.lego_assistant import assistant_dir

        return str(assistant_dir().resolve())
    if m.path:
        if not (Path(m.path) / "config.json").is_file():
            from lathe.platform.errors import ConfigError

            raise ConfigError(f"lego.llm.model.path: {m.path} is not a model directory (no config.json)")
        return str(Path(m.path).resolve())
    out = Path(cfg.output_root) / "serve_models" / f"lego-{m.preset}-v{m.tokenizer_vocab}-s{cfg.seed}"
    if not (out / "config.json").is_file():
        from lathe.methods.lego.finetune import build_rows
        from lathe.methods.sft import row_text
        from lathe.platform.zoo import resolve_source, save_pretrained

        rows, _ = build_rows({"formats": ["v2", "agent"], "n_manuals": 2, "steps_per_manual": 10}, cfg.seed)
        model, tok = resolve_source(m, [row_text(r) for r in rows], cfg.seed).load()
        save_pretrained(model, tok, out)
    return str(out.resolve())


def direct_url(app: str, host: str, proxy_port: int, timeout_s: float = 60.0) -> str:
    """http://host:port of `app`'s one ingress replica under Serve's direct ingress. The replica binds
    Serve's HTTP host (`http.host`) on its node, whatever address the node registered in Ray."""
    import ray
    from ray.serve.context import _get_global_client

    from lathe.platform.errors import ConfigError

    controller = _get_global_client()._controller  # Serve has no public call for its replicas' ports yet
    deadline = time.monotonic() + timeout_s
    while True:
        groups = [g for g in ray.get(controller.get_target_groups.remote(app)) if g.protocol == "HTTP"]
        if not any(g.app_name == app for g in groups):  # only the proxy's own groups: no direct ingress
            raise ConfigError(f"http.ingress=direct: this Ray's Serve runs without direct ingress "
                              "(RAY_SERVE_ENABLE_DIRECT_INGRESS=1: lathe serve sets it for its embedded Ray; a "
                              "cluster needs it in its nodes' environment); use http.ingress=proxy")
        # until the replica has its port, Serve lists the proxy for the app
        targets = [t for g in groups if g.app_name == app for t in g.targets if t.port != proxy_port]
        if targets or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not targets:
        raise ConfigError(f"http.ingress=direct: app {app!r} has no replica with its own port after "
                          f"{timeout_s:.0f} s (Serve still lists only its proxy for it)")
    if len(targets) > 1:
        raise ConfigError(f"http.ingress=direct: app {app!r} has {len(targets)} replicas with their own port; "
                          "direct ingress serves one replica per app (nothing balances between them): "
                          "use http.ingress=proxy")
    return f"http://{host}:{targets[0].port}"


def deploy(cfg: ServeConfig) -> dict[str, str]:
    """Start Serve's HTTP proxy on cfg.http and run the configured apps; returns name -> URL
    (the proxy's, or with `http.ingress: direct` each app's replica's own)."""
    from ray import serve

    token = resolve_token(cfg.auth_token, cfg.auth_token_env)
    if cfg.http.host not in ("127.0.0.1", "localhost", "::1") and not token:
        from lathe.platform.errors import ConfigError

        raise ConfigError(f"http.host={cfg.http.host}: exposing the service beyond loopback requires auth_token(_env)")
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    base = f"http://{cfg.http.host}:{cfg.http.port}"

    def url(app: str) -> str:
        return direct_url(app, cfg.http.host, cfg.http.port) if cfg.http.ingress == "direct" else base
    urls = {}
    if cfg.retriever is not None:
        from lathe.serve.retriever_app import build_app

        serve.run(build_app(cfg.retriever, token), name="retriever", route_prefix=cfg.retriever.route_prefix,
                  blocking=False)
        urls["retriever"] = url("retriever") + cfg.retriever.route_prefix
    if cfg.llm is not None:
        from lathe.serve.llm_app import build_app as build_llm

        serve.run(build_llm(cfg.llm, materialize_model(cfg), token), name="llm", route_prefix=cfg.llm.route_prefix,
                  blocking=False)
        urls["llm"] = url("llm") + cfg.llm.route_prefix
    if cfg.sandbox is not None:
        from lathe.serve.sandbox_app import build_app as build_sandbox

        serve.run(build_sandbox(cfg.sandbox, token), name="sandbox", route_prefix=cfg.sandbox.route_prefix,
                  blocking=False)
        urls["sandbox"] = url("sandbox") + cfg.sandbox.route_prefix
    if cfg.agents is not None:  # after llm and sandbox: it looks their handles up by app name
        from lathe.serve.agents_app import STUDENT_APP, build_app as build_agents

        if cfg.agents.llm.kind == "student":  # the embedded default: its own app, reached through a handle
            from lathe.jobs.agents_student import student_dir
            from lathe.platform.config import ModelConfig
            from lathe.serve.config import LLMAppConfig
            from lathe.serve.llm_app import build_app as build_llm

            model_dir = str(student_dir().resolve())
            llm_cfg = LLMAppConfig(model=ModelConfig(path=model_dir), engine="transformers", max_model_len=1024,
                                   max_tokens_limit=256)
            serve.run(build_llm(llm_cfg, model_dir, None), name=STUDENT_APP, route_prefix=None)

        serve.run(build_agents(cfg.agents, token), name="agents", route_prefix=cfg.agents.route_prefix,
                  blocking=False)
        urls["agents"] = url("agents") + cfg.agents.route_prefix
    if cfg.lego is not None:
        from lathe.serve.lego_app import build_app as build_lego

        llm_app = None
        if cfg.lego.llm.backend == "deployment":
            from lathe.platform.config import ModelConfig
            from lathe.serve.config import LLMAppConfig
            from lathe.serve.llm_app import build_app as build_llm

            c = cfg.lego.llm
            model_dir = lego_model_dir(cfg)
            llm_cfg = LLMAppConfig(model=ModelConfig(path=model_dir), engine=c.engine, max_model_len=c.max_model_len,
                                   max_tokens_limit=c.max_tokens_limit, replicas=c.replicas)
            # its own Serve application (one FastAPI ingress per app), reached through a handle: no HTTP route
            serve.run(build_llm(llm_cfg, model_dir, None), name="lego-llm", route_prefix=None)
            llm_app = "lego-llm"
        serve.run(build_lego(cfg.lego, token, llm_app), name="lego", route_prefix=cfg.lego.route_prefix,
                  blocking=False)
        urls["lego"] = url("lego") + cfg.lego.route_prefix.rstrip("/")
    return urls


def wait_forever() -> None:
    try:
        while True:
            time.sleep(1)
    finally:
        from ray import serve

        serve.shutdown()
