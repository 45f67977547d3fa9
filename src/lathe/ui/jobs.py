"""The console's job logic, free of Gradio: shipped configs, the override form built from a
config's schema, submission through the same API as `lathe submit`, and reading a job back
(status, progress, logs, results) from the Jobs API and the run directory."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lathe.platform.config import JobConfig, load_config, parse_override, read_yaml
from lathe.platform.errors import LatheError

FORM_COLUMNS = ["key", "value", "type", "help"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def shipped_configs(root: str | Path = "configs", tune: bool | None = None) -> list[str]:
    """Job configs under `root` (serve configs excluded: they deploy apps, they do not run).
    tune=True: only those with a `tune:` section; tune=False: only those without."""
    out = []
    for path in sorted(Path(root).rglob("*.yaml")):
        try:
            data = read_yaml(path)
        except LatheError:
            continue
        if data.get("job") in (None, "serve"):
            continue
        if tune is not None and ("tune" in data) != tune:
            continue
        out.append(str(path))
    return out


# the quick Ray Train demo (and its sweep): what a newcomer's first submit should run
PREFERRED = ("sft/tiny_demo.yaml", "sft/tiny_tune.yaml")


def default_config(configs: list[str]) -> str | None:
    """The dropdown's first pick: a preferred tiny config when shipped, else the first one."""
    for want in PREFERRED:
        for c in configs:
            if Path(c).as_posix().endswith(want):
                return c
    return configs[0] if configs else None


# --- the form -------------------------------------------------------------------------------

def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return re.sub(r"<class '([^']+)'>", r"\1", text).replace("NoneType", "None")


def format_value(value: Any) -> str:
    """A value as override text that `parse_override` reads back to the same value."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def form_rows(cfg: JobConfig, skip: tuple[str, ...] = ("job", "tune")) -> list[list[str]]:
    """One row per leaf key of the resolved config: [dotted key, value text, type, description].
    A section that is unset (None) is one row whose value can be set to a mapping."""
    rows: list[list[str]] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name, info in type(model).model_fields.items():
            key = f"{prefix}{name}"
            if key in skip:
                continue
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, key + ".")
                continue
            if not isinstance(value, (str, int, float, bool, type(None))):  # lists, mappings, lists of sections
                value = json.loads(json.dumps(value, default=lambda o: o.model_dump(mode="json")))
            rows.append([key, format_value(value), _type_name(info.annotation), info.description or ""])

    walk(cfg, "")
    return rows


def _parsed(text: str) -> Any:
    return parse_override(f"x={text}")[1]


def overrides_from_form(before: list[list[str]], after: list[list[Any]], extra: str = "") -> list[str]:
    """`key=value` for each form row whose value changed (compared as parsed values, so 3e-3 and
    0.003 are the same), then the free-text overrides, one per line or space-separated."""
    base = {r[0]: r[1] for r in before}
    out = []
    for row in after:
        key, text = str(row[0]), "" if row[1] is None else str(row[1])
        if key not in base:
            raise LatheError(f"form: unknown key {key!r}")
        if _parsed(text) != _parsed(base[key]):
            out.append(f"{key}={text}")
    out += [tok for tok in re.split(r"[\s]+", extra.strip()) if tok]
    return out


# --- submission and watching ------------------------------------------------------------------

@dataclass
class JobView:
    job_id: str
    status: str
    progress: float | None = None          # 0..1 from the progress bar in the logs
    progress_text: str = ""
    run_dir: str | None = None
    results: list[dict] = field(default_factory=list)
    log_tail: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


# The job's own bar counts "step"s (jobs/base.py); others in the log (weight loading, eval) are not progress.
_BAR = re.compile(r"(\d+)/(\d+) \[[^\]\n]*step")
_RUN_DIR = re.compile(r"^lathe: (?:tuning )?\S+ '[^']*' -> (\S+)\s*$", re.MULTILINE)
_ERROR = re.compile(r"^lathe: error: (.+)$", re.MULTILINE)


def clean_log(text: str) -> str:
    """A progress bar redraws with \\r; keep the last state of each line."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def parse_progress(log: str) -> tuple[float | None, str]:
    hits = _BAR.findall(log)
    if not hits:
        return None, ""
    n, total = map(int, hits[-1])
    return (min(n / total, 1.0) if total else None), f"{n}/{total} steps"


def parse_markdown_table(log: str) -> list[dict]:
    """The last markdown table printed in the log (what `lathe run` prints at the end)."""
    block: list[str] = []
    last: list[str] = []
    for line in clean_log(log).splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            block.append(line)
        else:
            if len(block) >= 3:
                last = block
            block = []
    if len(block) >= 3:
        last = block
    if not last:
        return []
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in last]
    header, body = cells[0], [r for r in cells[2:] if len(r) == len(cells[0])]
    return [dict(zip(header, r)) for r in body]


def results_rows(run_dir: str | None, log: str) -> list[dict]:
    """The results table: results.json when the run dir is readable here, else the log's table."""
    if run_dir:
        path = Path(run_dir) / "results.json"
        if path.is_file():
            results = json.loads(path.read_text())
            if isinstance(results.get("trials"), list):
                return results["trials"]
            return [{k: v for k, v in results.items() if isinstance(v, (int, float, str)) and k != "artifact"}]
    return parse_markdown_table(log)


class JobsAPI:
    """Submit and follow jobs on one cluster (the console's local head, or --address)."""

    def __init__(self, address: str, working_dir: str | Path = ".", runs_root: str | Path | None = None):
        self.address = address
        self.working_dir = str(Path(working_dir).resolve())
        # Jobs run in a copy of the working dir; a relative output_root would land in that copy.
        # When the cluster shares this filesystem, runs go to the console's runs root instead.
        self.runs_root = Path(runs_root).resolve() if runs_root else None
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from lathe.jobs.submit import client

            self._client = client(self.address)
        return self._client

    def prepare(self, config: str, overrides: list[str]) -> list[str]:
        """Validate (raises ConfigError, one line) and add output_root when runs land locally."""
        cfg = load_config(config, overrides)
        if self.runs_root is not None and not Path(cfg.output_root).is_absolute():
            overrides = [*overrides, f"output_root={self.runs_root}"]
        return overrides

    def submit(self, config: str, overrides: list[str], command: str = "run") -> str:
        from lathe.jobs.submit import submit

        overrides = self.prepare(config, overrides)
        return submit(config, overrides, self.address, working_dir=self.working_dir, command=command)

    def view(self, job_id: str) -> JobView:
        c = self.client
        status = str(c.get_job_status(job_id).value)
        raw = c.get_job_logs(job_id)
        log = clean_log(raw)
        progress, text = parse_progress(raw)
        m = _RUN_DIR.findall(log)
        run_dir = m[-1] if m else None
        view = JobView(job_id, status, progress, text, run_dir, log_tail="\n".join(log.splitlines()[-60:]))
        if status == "SUCCEEDED":
            view.progress = 1.0
            view.results = results_rows(run_dir, raw)
        elif status == "FAILED":
            err = _ERROR.findall(log)
            view.message = err[-1] if err else "the job failed; see its log"
        return view

    def stop(self, job_id: str) -> bool:
        return bool(self.client.stop_job(job_id))

    def list(self) -> list[dict]:
        rows = []
        for info in self.client.list_jobs():
            rows.append({"id": info.submission_id or info.job_id, "status": str(info.status.value),
                         "entrypoint": info.entrypoint.split(" python -m ")[-1]})
        return rows[::-1]
