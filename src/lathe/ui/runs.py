"""Reading the run store for the console: runs under runs/, one run's report, metrics, config,
plots and results, and a sweep's trials while it is still running."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lathe.platform.errors import LatheError
from lathe.platform.runstore import RunDir


def list_runs(root: str | Path = "runs", limit: int = 200) -> list[dict]:
    """Run directories (those with a config.yaml), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    dirs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    rows = []
    for p in dirs[:limit]:
        try:
            cfg = yaml.safe_load((p / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
        state = "done" if (p / "results.json").is_file() else "running or failed"
        rows.append({"run": p.name, "job": cfg.get("job", "?"), "state": state, "path": str(p.resolve())})
    return rows


def _numeric_columns(records: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in cols:
                cols.append(k)
    return cols


def run_details(path: str | Path) -> dict:
    """Everything the Runs tab shows for one run."""
    run = RunDir.open(path)
    p = run.path
    report = (p / "report.md").read_text() if (p / "report.md").is_file() else "(no report yet)"
    results = json.loads((p / "results.json").read_text()) if (p / "results.json").is_file() else {}
    metrics = run.metrics()
    cols = _numeric_columns(metrics)
    return {
        "report": report,
        "config": (p / "config.yaml").read_text(),
        "results": results,
        "metrics_columns": cols,
        "metrics_rows": [[r.get(c) for c in cols] for r in metrics],
        "plots": sorted(str(x) for x in (p / "plots").glob("*.png")) if (p / "plots").is_dir() else [],
    }


def trials(run_dir: str | Path, metric: str) -> tuple[list[dict], dict[str, tuple[list, list]]]:
    """A sweep's trials (one run dir each under trials/): searched values, last metric, steps,
    and per-trial (step, metric) series for the plot. Reads the files as they grow."""
    root = Path(run_dir)
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        raise LatheError(f"{root}: not a run directory")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    space = list(((cfg.get("tune") or {}).get("space") or {}).keys())
    rows, series = [], {}
    for t in sorted((root / "trials").glob("*/config.yaml")):
        tdir = t.parent
        tcfg = yaml.safe_load(t.read_text()) or {}
        row = {}
        for key in space:
            node = tcfg
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            row[key] = node
        recs = RunDir(tdir).metrics()
        pts = [(r["step"], r[metric]) for r in recs if "step" in r and metric in r]
        row[metric] = pts[-1][1] if pts else None
        row["steps"] = pts[-1][0] if pts else 0
        row["state"] = "done" if (tdir / "results.json").is_file() else "running"
        rows.append(row)
        label = ", ".join(f"{k.split('.')[-1]}={row[k]:.3g}" if isinstance(row[k], float)
                          else f"{k.split('.')[-1]}={row[k]}" for k in space) or tdir.name
        series[label] = ([x for x, _ in pts], [y for _, y in pts])
    return rows, series
