"""A Ray head on 127.0.0.1 that the console owns, so jobs run in Ray's processes, never in the UI's.

The console submits every job through the Jobs API (the same call as `lathe submit`); without
`--address` it needs a cluster with a dashboard, which the embedded `ray.init` of `lathe run`
does not start. `ray start --head --block` runs in its own process group, so stopping it cannot
touch any other Ray on the machine. Every port is picked free, so two consoles do not collide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lathe.platform.errors import LatheError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    def __init__(self, num_cpus: int | None = None, cwd: str | Path = ".", start_timeout: float = 120):
        self.num_cpus = num_cpus or max(2, os.cpu_count() or 1)
        self.cwd = Path(cwd).resolve()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"

    def env(self) -> dict[str, str]:
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
               "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self) -> "LocalHead":
        ray_bin = Path(sys.executable).parent / "ray"
        if not ray_bin.is_file():
            raise LatheError(f"{ray_bin}: Ray's command is missing from this environment")
        # Ray's socket paths must stay short (AF_UNIX limit), so the temp dir is under /tmp.
        temp = Path("/tmp") / f"lathe-ui-ray-{os.getpid()}-{self.dashboard_port}"
        cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={temp}", "--include-dashboard=true",
               "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}"]
        self.proc = subprocess.Popen(cmd, env=self.env(), cwd=self.cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        # This process talks to the head through the Jobs API; auth modes must match on both sides.
        os.environ["RAY_AUTH_MODE"] = "disabled"
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                JobSubmissionClient(self.address).list_jobs()
                return
            except Exception:
                if self.proc is not None and self.proc.poll() is not None:
                    raise LatheError(f"the console's local Ray head exited with code {self.proc.returncode}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise LatheError(f"the console's local Ray head did not answer within {self.start_timeout:.0f} s")
                time.sleep(1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> "LocalHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
