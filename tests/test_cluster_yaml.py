"""ray_cluster.yaml is a real launcher config: head, CPU and GPU worker types, setup commands."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_has_head_workers_and_setup():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = [n for n in types if n != cfg["head_node_type"]]
    assert {"cpu_worker", "gpu_worker"} <= set(workers)
    assert all(types[w]["max_workers"] >= 1 for w in workers)
    setup = " ".join(cfg["setup_commands"])
    assert "lathe" in setup and ".[gpu" in setup and "torch==2.13.0" in setup
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])
    assert cfg["provider"]["type"] and cfg["max_workers"] >= 1
