"""Ray Serve app `ToolSandbox`: the RestBench-style TMDB / Spotify APIs over the seeded world.

HTTP (under the route prefix, default /sandbox):
  ANY /{domain}/{path}   the API itself, e.g. GET /sandbox/tmdb/search/person?query=...
  GET /tools/{domain}    the tool docs (RestBench format)
  GET /healthz
Handles (used by the agents app, no HTTP hop): `call(domain, method, url, params, headers)` ->
{status, body}; `tools(domain)` -> [tool doc]; `tasks(domain)` -> synthetic tasks.
`faults` makes chosen tools raise or hang (testing the agents' error paths).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from lathe.serve.auth import install_guards

api = FastAPI(title="lathe ToolSandbox", description="RestBench-style REST tools over a seeded synthetic world.")
install_guards(api)


@serve.deployment(name="ToolSandbox")
@serve.ingress(api)
class ToolSandboxServer:
    def __init__(self, cfg: dict, token: str | None = None):
        from lathe.data import restbench as rb
        from lathe.serve.config import SandboxAppConfig

        self.cfg = SandboxAppConfig.model_validate(cfg)
        api.state.guard = {"token": token, "max_body_bytes": self.cfg.max_body_bytes}
        world = rb.build_world(self.cfg.seed)
        self.boxes = {d: rb.ToolSandbox(d, self.cfg.seed, self.cfg.error_rate, self.cfg.latency_ms,
                                        self.cfg.api_token, world=world) for d in self.cfg.domains}
        self.task_files = {d: rb.generate(d, self.cfg.seed, world) for d in self.cfg.domains}
        self.faults = {}
        for key, kind in self.cfg.faults.items():
            method, path = rb.split_call(key)
            self.faults[(method, rb.template_key(rb.url_path(path)))] = kind

    def _box(self, domain: str):
        if domain not in self.boxes:
            raise HTTPException(404, detail=f"domain: unknown {domain!r} (served: {', '.join(self.boxes)})")
        return self.boxes[domain]

    async def _fault(self, box, method: str, url: str) -> None:
        from lathe.data.restbench import path_matches, url_path

        path = url_path(url)
        for (m, tmpl), kind in self.faults.items():
            if m == method.upper() and path_matches(tmpl, path):
                if kind == "raise":
                    raise RuntimeError(f"tool {m} {tmpl} crashed (configured fault)")
                await asyncio.sleep(self.cfg.hang_s)

    async def call(self, domain: str, method: str, url: str, params: dict | None = None,
                   headers: dict | None = None) -> dict:
        box = self._box(domain)
        await self._fault(box, method, url)
        r = await asyncio.to_thread(box.request, method, url, params or {}, headers or {})
        return {"status": r.status, "body": r.body}

    def tools(self, domain: str) -> list[dict]:
        return [t.to_json() for t in self.task_files[self._box(domain).domain].tools]

    def tasks(self, domain: str) -> list[dict]:
        self._box(domain)
        return [t.to_json() | {"plan": t.plan} for t in self.task_files[domain].tasks]

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "domains": list(self.boxes), "error_rate": self.cfg.error_rate,
                "latency_ms": self.cfg.latency_ms}

    @api.get("/tools/{domain}")
    def tool_docs(self, domain: str) -> list[dict]:
        return self.tools(domain)

    @api.api_route("/{domain}/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def route(self, domain: str, path: str, request: Request):
        params = dict(request.query_params)
        if request.method in ("POST", "PUT", "PATCH"):
            try:
                body = await request.json() if await request.body() else {}
            except ValueError:
                return JSONResponse({"error": "body: not JSON"}, status_code=400)
            if isinstance(body, dict):
                params.update({k: v for k, v in body.items()})
        try:
            out = await self.call(domain, request.method, "/" + path, params, dict(request.headers))
        except RuntimeError as e:
            return JSONResponse({"status_code": 500, "status_message": str(e)}, status_code=500)
        if out["status"] == 204:
            return Response(status_code=204)
        return JSONResponse(out["body"], status_code=out["status"])


def build_app(cfg, token: str | None = None):
    rep = cfg.replicas
    return ToolSandboxServer.options(num_replicas=rep.num_replicas, max_ongoing_requests=rep.max_ongoing_requests,
                                     ray_actor_options={"num_cpus": rep.num_cpus}).bind(cfg.model_dump(), token)
