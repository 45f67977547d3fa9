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


def add_enforce(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--no-enforce", action="store_true", help="only report: exit 0 even when a target is missed")
    return p


def verdict(targets: dict[str, bool], no_enforce: bool) -> int:
    """Exit status for the targets {description: met}; the missed ones go to stderr (the headline
    stays the last line of stdout)."""
    import sys

    missed = [k for k, ok in targets.items() if not ok]
    for k, ok in targets.items():
        print(f"target {'met   ' if ok else 'MISSED'}: {k}", file=sys.stderr)
    return 0 if no_enforce or not missed else 1
