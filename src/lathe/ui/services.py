"""Serve deployments and their status, read from the cluster dashboard's REST API
(`GET /api/serve/applications/`), so the console needs no Ray connection of its own."""

from __future__ import annotations

import httpx

COLUMNS = ["application", "route", "app status", "deployment", "status", "replicas", "message"]


def serve_rows(dashboard: str, timeout: float = 5.0) -> tuple[list[list], str]:
    """(rows, note): one row per deployment; the note says why there are none."""
    url = dashboard.rstrip("/") + "/api/serve/applications/"
    try:
        r = httpx.get(url, timeout=timeout)
        r.raise_for_status()
        details = r.json()
    except (httpx.HTTPError, ValueError) as e:
        return [], f"cannot read Serve status from {url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    apps = details.get("applications") or {}
    http = details.get("http_options") or {}
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    rows = []
    for name, app in sorted(apps.items()):
        deps = app.get("deployments") or {}
        route = app.get("route_prefix") or ""
        for dname, dep in sorted(deps.items()) or [("", {})]:
            replicas = dep.get("replicas") or []
            running = sum(1 for x in replicas if x.get("state") == "RUNNING")
            rows.append([name, f"{base}{route}" if route else "", app.get("status", ""), dname,
                         dep.get("status", ""), f"{running}/{len(replicas)}",
                         (dep.get("message") or app.get("message") or "")[:200]])
    return rows, "" if rows else "no Serve applications are running on this cluster"
