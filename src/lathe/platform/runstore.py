"""Run store: `runs/<name>-<timestamp>/` holds config, metrics, results, report and artifacts."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from lathe.platform.config import JobConfig, dump_yaml


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, cfg: JobConfig, root: str | Path | None = None) -> "RunDir":
        root = Path(root or cfg.output_root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / f"{cfg.name}-{stamp}"
        n = 1
        while path.exists():  # two runs in the same second
            path = root / f"{cfg.name}-{stamp}-{n}"
            n += 1
        (path / "artifacts").mkdir(parents=True)
        (path / "plots").mkdir()
        (path / "config.yaml").write_text(dump_yaml(cfg))
        return cls(path.resolve())

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            from lathe.platform.errors import LatheError

            raise LatheError(f"{path}: not a lathe run directory (no config.yaml)")
        return cls(path.resolve())

    # --- files -------------------------------------------------------------------------
    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def log_metrics(self, records: Iterable[dict]) -> None:
        with self.metrics_file.open("a") as f:
            for r in records:
                f.write(json.dumps(r, default=_jsonable) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def write_results(self, results: dict) -> Path:
        out = self.path / "results.json"
        out.write_text(json.dumps(results, indent=2, default=_jsonable))
        return out

    def write_report(self, title: str, sections: Sequence[tuple[str, str]], plots: Sequence[Path] = ()) -> Path:
        lines = [f"# {title}", "", f"Run directory: `{self.path}`", ""]
        for heading, body in sections:
            lines += [f"## {heading}", "", body.rstrip(), ""]
        for p in plots:
            lines += [f"![{p.stem}]({Path(p).relative_to(self.path)})", ""]
        out = self.path / "report.md"
        out.write_text("\n".join(lines))
        return out


def _jsonable(x: Any):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.{digits}g}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def plot_curves(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
                ylabel: str, title: str) -> Path:
    """Line plot of named (x, y) series, written as PNG (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label, marker="." if len(xs) < 40 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
