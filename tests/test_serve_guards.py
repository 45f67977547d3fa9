"""The apps' request guards (lathe.serve.auth) on a bare FastAPI app, without Ray: bearer token,
body size, healthz open, one-line 422s, and streamed responses passed through untouched."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from lathe.serve.auth import install_guards


class Echo(BaseModel):
    text: str
    n: int = 1


@pytest.fixture()
def client() -> TestClient:
    api = FastAPI()
    install_guards(api)
    api.state.guard = {"token": "s3cret", "max_body_bytes": 256}

    @api.get("/app/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @api.post("/app/echo")
    def echo(req: Echo) -> dict:
        return {"text": req.text * req.n}

    @api.get("/app/stream")
    def stream():
        return StreamingResponse((f"data: {i}\n\n" for i in range(3)), media_type="text/event-stream")

    return TestClient(api)


AUTH = {"Authorization": "Bearer s3cret"}


def test_token_required_except_healthz(client):
    assert client.get("/app/healthz").status_code == 200
    refused = client.post("/app/echo", json={"text": "a"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in refused.json()["error"]
    assert client.post("/app/echo", json={"text": "a"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/app/echo", json={"text": "ab", "n": 2}, headers=AUTH)
    assert ok.status_code == 200 and ok.json() == {"text": "abab"}


def test_oversized_body_is_413_and_the_next_request_is_served(client):
    big = client.post("/app/echo", json={"text": "x" * 1000}, headers=AUTH)
    assert big.status_code == 413 and "exceeds the limit of 256" in big.json()["error"]
    assert client.post("/app/echo", json={"text": "a"}, headers=AUTH).json() == {"text": "a"}


def test_validation_error_is_one_line(client):
    bad = client.post("/app/echo", json={"text": "a", "n": "many"}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"].startswith("n: ")


def test_streamed_response_passes_through(client):
    with client.stream("GET", "/app/stream", headers=AUTH) as r:
        assert r.status_code == 200
        assert "".join(r.iter_text()) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
