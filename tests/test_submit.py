"""`lathe submit` against a real `ray start --head` cluster on 127.0.0.1 that this test owns."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lathe.cli import main

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_cluster(tmp_path):
    """A Ray head on loopback with its own ports and temp dir; `--block` keeps it in our process
    group so stopping it cannot touch any other Ray on the machine."""
    bin_dir = Path(sys.executable).parent
    with _head(f"{bin_dir}:{os.environ['PATH']}") as out:
        yield out


@pytest.fixture
def system_python_head(tmp_path):
    """The new user's mistake: the venv's `ray start` run without activating the venv, so the
    cluster's `python` is the system one (here /usr/bin/python3, which lacks torch)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").symlink_to("/usr/bin/python3")
    with _head(f"{fake_bin}:/usr/bin:/bin") as (address, env):
        yield address, env, fake_bin / "python"


@contextlib.contextmanager
def _head(path: str):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    temp = Path("/tmp") / f"lathe-ray-{os.getpid()}-{dash}"  # Ray's socket paths must stay short
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
           f"--temp-dir={temp}",
           # every port our own, so another Ray on this machine cannot collide with this one
           f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
           f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}", f"--node-manager-port={_free_port()}",
           f"--object-manager-port={_free_port()}", "--include-dashboard=true", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("test Ray head did not come up")
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow  # a job trained on a real head (~60 s); the pre-flight test below submits through the same path
def test_submit_runs_job_and_logs_are_readable(head_cluster, monkeypatch, capsys):
    address, env = head_cluster
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(ROOT)
    rc = main(["submit", "configs/sft/tiny_demo.yaml", "train.max_steps=4", "ray.num_workers=1",
               "data.synthetic_size=64", "name=submitted", "output_root=/tmp/lathe-submit-runs",
               "--address", address, "--wait"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    job_id = captured.out.strip().splitlines()[-1]
    assert main(["jobs", "status", job_id, "--address", address]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, "--address", address]) == 0
    logs = capsys.readouterr().out
    assert "report:" in logs and "final_loss" in logs
    assert main(["jobs", "list", "--address", address]) == 0
    assert job_id in capsys.readouterr().out


def test_submit_rejects_bad_config_before_contacting_cluster(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: sft\ntrain: {lrr: 1}\n")
    assert main(["submit", str(bad), "--address", "http://127.0.0.1:9"]) == 2
    assert "unknown key 'train.lrr'" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system python3 without torch")
def test_submit_preflight_names_the_clusters_python(system_python_head, monkeypatch, capsys):
    address, _, system_python = system_python_head
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(ROOT)
    rc = main(["submit", "configs/sft/tiny_demo.yaml", "--address", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"the cluster runs {system_python} (Python " in err[0] and "cannot import torch" in err[0], err[0]
    assert "ray.python=" in err[0] and "ray start" in err[0]
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(address).list_jobs()
    assert not [j for j in jobs if "lathe.cli run" in j.entrypoint]  # nothing was submitted past the pre-flight
    # naming the cluster's Python in the config passes the pre-flight and submits the job
    rc = main(["submit", "configs/sft/tiny_demo.yaml", f"ray.python={sys.executable}", "train.max_steps=2",
               "ray.num_workers=1", "data.synthetic_size=32", "output_root=/tmp/lathe-submit-runs",
               "--address", address])
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    main(["jobs", "stop", job_id, "--address", address])


class _LocalJobs:
    """A stand-in for JobSubmissionClient that runs each entrypoint with `sh` under a given PATH,
    as a cluster's job supervisor would (no cluster needed)."""

    def __init__(self, path: str):
        self.path, self.jobs = path, {}

    def submit_job(self, entrypoint, runtime_env, submission_id):
        env = {"PATH": self.path, "HOME": os.environ.get("HOME", "/tmp"), **runtime_env["env_vars"]}
        p = subprocess.run(["/bin/sh", "-c", entrypoint], env=env, capture_output=True, text=True, timeout=120)
        self.jobs[submission_id] = ("SUCCEEDED" if p.returncode == 0 else "FAILED", p.stdout + p.stderr)
        return submission_id

    def get_job_status(self, job_id):
        return type("S", (), {"value": self.jobs[job_id][0]})()

    def get_job_logs(self, job_id):
        return self.jobs[job_id][1]


def test_preflight_script_reports_the_python_and_missing_modules(tmp_path):
    from lathe.jobs.submit import preflight
    from lathe.platform.errors import LatheError

    env = {"working_dir": str(ROOT), "env_vars": {"HF_HUB_OFFLINE": "1"}}
    venv = preflight(_LocalJobs(f"{Path(sys.executable).parent}:/usr/bin:/bin"), "python", env)
    assert venv.startswith(str(Path(sys.executable).parent)) and "(Python 3." in venv
    if Path("/usr/bin/python3").exists():
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "python").symlink_to("/usr/bin/python3")
        with pytest.raises(LatheError, match=rf"the cluster runs {fake}/python \(Python 3\.[0-9.]+\), which cannot "
                                             r"import torch.*; start the cluster with lathe's environment"):
            preflight(_LocalJobs(f"{fake}:/usr/bin:/bin"), "python", env)
    with pytest.raises(LatheError, match=r"the cluster cannot run `python` \(FAILED: .*not found\)"):
        preflight(_LocalJobs(str(tmp_path / "empty")), "python", env)
