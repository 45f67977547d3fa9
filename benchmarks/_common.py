"""Shared helpers for benchmark scripts: argument parsing and the JSON result file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes; finishes within about a minute on 2 cores")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="directory for the JSON result")
    return p


def save(name: str, out_dir: str, result: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
