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


def submit(config: str, overrides: list[str], address: str | None, working_dir: str = ".",
           wait: bool = False, timeout: float = 3600, command: str = "run") -> str:
    """Submit `lathe <command> CONFIG overrides` (command: run or tune) as a Ray job; returns its id."""
    from lathe.platform.config import load_config

    if command not in ("run", "tune"):
        raise LatheError(f"submit: command must be 'run' or 'tune' (got {command!r})")
    load_config(config, overrides)  # fail here, not on the cluster
    # src/ first: the driver runs the submitted tree; workers use the lathe installed on the nodes.
    entry = " ".join([f"PYTHONPATH=src:$PYTHONPATH python -m lathe.cli {command}", shlex.quote(config),
                      *map(shlex.quote, overrides)])
    c = client(address)
    runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES,
                   "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "TOKENIZERS_PARALLELISM": "false"}}
    deadline = time.monotonic() + 60
    while True:
        try:
            job_id = c.submit_job(entrypoint=entry, runtime_env=runtime_env)
            break
        except RuntimeError as e:
            # A head that just started answers before its job agent is up; that passes.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise LatheError(f"job submission failed: {str(e).splitlines()[0]}") from None
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
