"""Request guards shared by the apps: bearer token, body size, one-line 422 messages."""

from __future__ import annotations

import hmac
import os


def resolve_token(token: str | None, env: str | None) -> str | None:
    if env:
        value = os.environ.get(env)
        if not value:
            from lathe.platform.errors import ConfigError

            raise ConfigError(f"auth_token_env: environment variable {env!r} is not set")
        return value
    return token


class _Guard:
    """The guards as plain ASGI middleware. Starlette's `@app.middleware("http")` wraps every
    request in a task group and memory streams: ~0.7 ms of CPU per request on a 2-core box, on the
    replica's core, which a serving replica should spend on its model."""

    def __init__(self, app, api):
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        conf = getattr(self.api.state, "guard", None) or {}
        token, max_body_bytes = conf.get("token"), conf.get("max_body_bytes", 1 << 16)
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length", b"").decode("latin-1")
        refusal = None
        if length.isdigit() and int(length) > max_body_bytes:
            refusal = JSONResponse({"error": f"request body of {length} bytes exceeds the limit of {max_body_bytes}"},
                                   status_code=413)
        elif token and not scope.get("path", "").endswith("/healthz"):
            got = headers.get(b"authorization", b"")
            if not hmac.compare_digest(got, f"Bearer {token}".encode()):
                refusal = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                       headers={"WWW-Authenticate": "Bearer"})
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


def install_guards(app) -> None:
    """Middleware: 413 on oversized bodies, 401 without the bearer token (healthz stays open);
    validation errors become 422 {"error": "<field>: <message>"}. The replica sets
    `app.state.guard = {"token": ..., "max_body_bytes": ...}` in its constructor."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app.add_middleware(_Guard, api=app)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {e.get('msg')}")
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()[:3]]
        return JSONResponse({"error": "; ".join(parts), "detail": detail}, status_code=422)


def bearer_matches(header: str | None, token: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` value (True when no token is set)."""
    if not token:
        return True
    return hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())


def origin_allowed(origin: str | None, allowed: list[str] | tuple[str, ...]) -> bool:
    """WebSocket Origin allow-list: a browser always sends Origin, so a page from another site is
    refused; a client without a browser (no Origin header) passes to the token check. '*' allows all."""
    if origin is None or "*" in allowed:
        return True
    return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}
