"""Ray Jobs API: submit a lathe config to a cluster and manage the job."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from lathe.platform.errors import LatheError

EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]


def client(address: str | None):
    import os

    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise LatheError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, auth, wrong port: one line
        raise LatheError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}") from None


# What the job's driver imports first; a cluster whose `python` lacks one fails deep inside the job.
DEPENDENCIES = ("torch", "transformers", "ray", "pydantic", "yaml", "safetensors", "tokenizers", "numpy")
_MARK = "LATHE_PREFLIGHT"
_PREFLIGHT = (
    "import importlib.util as u, sys\n"
    f"missing = [m for m in {DEPENDENCIES!r} if u.find_spec(m) is None]\n"
    f"print({_MARK!r}, sys.executable, '%d.%d.%d' % sys.version_info[:3], ','.join(missing) or '-')\n"
)


def _submit(c, entry: str, runtime_env: dict) -> str:
    import uuid

    import requests

    deadline = time.monotonic() + 120
    sid, tried = f"lathe-{uuid.uuid4().hex[:12]}", False  # one id, so a retried submission is not run twice
    while True:
        try:
            return c.submit_job(entrypoint=entry, runtime_env=runtime_env, submission_id=sid)
        except (RuntimeError, requests.exceptions.ConnectionError) as e:
            if tried and "already exists" in str(e):
                return sid  # the dropped attempt did get through
            tried = True
            # A head that just started answers before its job agent is up, and a busy dashboard can
            # drop a connection; both pass.
            transient = isinstance(e, requests.exceptions.ConnectionError) or "No available agent" in str(e)
            if transient and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise LatheError(f"job submission failed: {str(e).splitlines()[0]}") from None


def preflight(c, python: str, runtime_env: dict, timeout: float = 120) -> str:
    """Run a tiny job with the cluster's `python` that only checks lathe's dependencies import.

    Returns the cluster's Python (path and version); raises one LatheError line saying which Python
    the cluster runs and how to fix it."""
    job_id = _submit(c, f"{python} -c {shlex.quote(_PREFLIGHT)}", runtime_env)
    status = wait_for(c, job_id, timeout)
    logs = c.get_job_logs(job_id)
    line = next((ln for ln in logs.splitlines() if ln.startswith(_MARK + " ")), None)
    fix = ("start the cluster with lathe's environment first on PATH (e.g. `source .venv/bin/activate` "
           "before `ray start`), or name its Python with ray.python=/path/to/venv/bin/python")
    if line is None:
        last = (logs.strip().splitlines() or [status])[-1]
        raise LatheError(f"the cluster cannot run `{python}` ({status}: {last.strip()}); {fix}")
    _, exe, version, missing = line.split(" ", 3)
    if missing.strip() != "-":
        raise LatheError(f"the cluster runs {exe} (Python {version}), which cannot import "
                         f"{missing.strip().replace(',', ', ')}; {fix}")
    return f"{exe} (Python {version})"


def submit(config: str, overrides: list[str], address: str | None, working_dir: str = ".",
           wait: bool = False, timeout: float = 3600, check: bool = True, command: str = "run") -> str:
    """Submit `lathe <command> CONFIG overrides` (command: run or tune) as a Ray job; returns its id."""
    from lathe.platform.config import load_config

    if command not in ("run", "tune"):
        raise LatheError(f"submit: command must be 'run' or 'tune' (got {command!r})")
    cfg = load_config(config, overrides)  # fail here, not on the cluster
    python = shlex.quote(cfg.ray.python) if cfg.ray.python else "python"
    # src/ first: the driver runs the submitted tree; workers use the lathe installed on the nodes.
    entry = " ".join([f"PYTHONPATH=src:$PYTHONPATH {python} -m lathe.cli {command}", shlex.quote(config),
                      *map(shlex.quote, overrides)])
    c = client(address)
    runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES,
                   "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "TOKENIZERS_PARALLELISM": "false"}}
    if check:
        preflight(c, python, runtime_env)
    job_id = _submit(c, entry, runtime_env)
    if wait:
        status = wait_for(c, job_id, timeout)
        if status != "SUCCEEDED":
            import sys

            tail = c.get_job_logs(job_id).rstrip().splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise LatheError(f"job {job_id} ended {status}; see `lathe jobs logs {job_id}`")
    return job_id


def wait_for(c, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(c.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1.0)
    return "TIMEOUT"
