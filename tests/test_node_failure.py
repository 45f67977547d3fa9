"""Node failure as Ray's own tests do it: a two-node cluster on loopback (`ray start --head`, then
`ray start --address` with its own resources), a 2-worker sft job spread over both nodes with
`ray.storage_path` on a shared directory, and the second node's raylet killed mid-run. The job must
finish on the remaining node from its last checkpoint, with no step lost or repeated past it.

Status: not yet seen passing. On the shared 2-core machine (load 30-60) the loopback cluster came up
and both nodes registered, but the in-process driver did not attach to it (ray.init rewrites 127.0.0.1 to
the outward IP; with that patched it found no local node); see the issue-17 report."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    return [f"--node-manager-port={_port()}", f"--object-manager-port={_port()}",
            f"--dashboard-agent-listen-port={_port()}", f"--dashboard-agent-grpc-port={_port()}",
            f"--metrics-export-port={_port()}", f"--runtime-env-agent-port={_port()}"]


@contextlib.contextmanager
def _node(args: list[str], env: dict):
    proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             *_node_ports(), *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _raylet_pid(node_proc) -> int:
    import psutil

    for child in psutil.Process(node_proc.pid).children(recursive=True):
        if child.name() == "raylet":
            return child.pid
    raise AssertionError("no raylet under the second node's `ray start`")


def _wait_port(port: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, "the test Ray head did not come up"
        time.sleep(1)


def _wait_nodes(n: int, timeout: float = 180) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while sum(1 for x in ray.nodes() if x["Alive"]) < n:
        assert time.monotonic() < deadline, "the second node did not join"
        time.sleep(1)


def _cfg(tmp_path, storage, **train):
    from lathe.platform.config import validate

    return validate({"job": "sft", "name": "nodefail", "output_root": str(tmp_path),
                     "model": {"preset": "tiny-1m", "tokenizer_vocab": 512},
                     "data": {"synthetic_size": 256, "max_length": 48, "eval_fraction": 0.0},
                     "train": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "max_steps": 60,
                               "checkpoint_every": 10, "num_to_keep": 3, **train},
                     "ray": {"num_workers": 2, "cpus_per_worker": 1, "use_gpu": False,
                             "storage_path": str(storage)}}, "test")


def test_raylet_killed_mid_run_resumes_on_the_remaining_node(tmp_path, monkeypatch):
    import ray
    from ray.util.placement_group import placement_group_table

    from lathe.jobs.sft import SFTJob
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    # ray.init rewrites a 127.0.0.1 address to the machine's outward IP; this cluster lives on loopback
    import ray._private.services as services

    monkeypatch.setattr(services, "get_node_ip_address", lambda address=None: "127.0.0.1")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs = _port()
    temp = Path("/tmp") / f"lathe-nf-{os.getpid()}-{gcs}"
    shared = tmp_path / "shared"
    head_args = ["--head", f"--port={gcs}", f"--temp-dir={temp}", "--num-cpus=2", "--include-dashboard=false",
                 f"--ray-client-server-port={_port()}", '--resources={"blocker": 1}']
    with _node(head_args, env), contextlib.ExitStack() as stack:
        _wait_port(gcs)  # the second node and the driver join a head that is up
        second = stack.enter_context(_node([f"--address=127.0.0.1:{gcs}", "--num-cpus=1"], env))
        stack.enter_context(ray_session(f"127.0.0.1:{gcs}"))
        _wait_nodes(2)

        # hold one head CPU so the two 1-CPU workers start one per node; freed before the kill
        @ray.remote(num_cpus=1, resources={"blocker": 1})
        class Blocker:
            def ping(self):
                return 1

        blocker = Blocker.remote()
        ray.get(blocker.ping.remote())
        cfg = _cfg(tmp_path, shared, max_failures=1)
        run = RunDir.create(cfg)
        seen: dict = {}

        def kill_second_node_mid_run():
            deadline = time.monotonic() + 600
            while not list(shared.glob("train/step_00000010")) and time.monotonic() < deadline:
                time.sleep(0.2)
            seen["spread"] = {n for pg in placement_group_table().values() if pg["state"] == "CREATED"
                              for n in pg["bundles_to_node_id"].values()}
            ray.kill(blocker)
            os.kill(_raylet_pid(second), signal.SIGKILL)
            seen["killed_after"] = sorted(p.name for p in shared.glob("train/step_*"))

        killer = threading.Thread(target=kill_second_node_mid_run, daemon=True)
        killer.start()
        res = SFTJob().run(cfg, run, show_progress=False)
        killer.join(timeout=30)
        records = run.metrics()

    assert len(seen.get("spread", ())) == 2, seen  # the workers really ran on both nodes
    resumed = [r["step"] for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0] % 10 == 0 and resumed[0] >= 10, (resumed, seen)
    assert f"step_{resumed[0]:08d}" in seen["killed_after"]
    assert res["steps"] == 60 and res["workers"] == 2
    # after the resume, every step past the checkpoint ran exactly once, in order
    i = next(k for k, r in enumerate(records) if r.get("event") == "resumed")
    after = [r["step"] for r in records[i:] if "loss" in r]
    assert after == list(range(resumed[0] + 1, 61))
    # and the resumed run ends where an uninterrupted one does: nothing lost or replayed
    with ray_session():
        clean = _cfg(tmp_path, tmp_path / "clean")
        ref = SFTJob().run(clean, RunDir.create(clean), show_progress=False)
    assert res["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-4)
