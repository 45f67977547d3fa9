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


def install_guards(app) -> None:
    """Middleware: 413 on oversized bodies, 401 without the bearer token (healthz stays open);
    validation errors become 422 {"error": "<field>: <message>"}. The replica sets
    `app.state.guard = {"token": ..., "max_body_bytes": ...}` in its constructor."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def guard(request: Request, call_next):
        conf = getattr(app.state, "guard", None) or {}
        token, max_body_bytes = conf.get("token"), conf.get("max_body_bytes", 1 << 16)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return JSONResponse({"error": f"request body of {length} bytes exceeds the limit of {max_body_bytes}"},
                                status_code=413)
        if token and not request.url.path.endswith("/healthz"):
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

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
