"""Node failure as Ray's own tests do it: a two-node cluster on loopback (`ray.cluster_utils.Cluster`,
the head and a second node with its own resources, both at 127.0.0.1), a 2-worker sft job spread over
both nodes with `ray.storage_path` on a shared directory, and the second node's raylet killed mid-run
(`remove_node(allow_graceful=False)`). The job must finish on the remaining node from its last
checkpoint, with no step lost or repeated past it.

The driver joins through `ray_session("127.0.0.1:<port>")`, the path `lathe run --address` takes: Ray
alone would rewrite that address to the machine's outward IP and miss a loopback-only cluster."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]


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


def test_raylet_killed_mid_run_resumes_on_the_remaining_node(tmp_path):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group_table

    from lathe.jobs.sft import SFTJob
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    shared = tmp_path / "shared"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False, "resources": {"blocker": 1}})
    second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.shutdown)
        stack.enter_context(ray_session(cluster.address))
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

        def registered() -> list[str]:
            # a checkpoint counts once the controller has recorded it; a directory on disk whose report
            # died with its worker is not one Ray Train resumes from
            try:
                snap = json.loads((shared / "train" / "checkpoint_manager_snapshot.json").read_text())
            except (OSError, ValueError):
                return []
            return [c["checkpoint_dir_name"] for c in snap["checkpoint_results"]]

        def kill_second_node_mid_run():
            deadline = time.monotonic() + 600
            while not registered() and time.monotonic() < deadline:
                time.sleep(0.2)
            seen["spread"] = {n for pg in placement_group_table().values() if pg["state"] == "CREATED"
                              for n in pg["bundles_to_node_id"].values()}
            ray.kill(blocker)
            cluster.remove_node(second, allow_graceful=False)  # SIGKILLs its raylet and workers
            seen["killed_after"] = registered()

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
