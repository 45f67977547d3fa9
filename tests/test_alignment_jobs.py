"""The dpo and reward_model jobs on the one training loop (embedded Ray, tiny presets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lathe.platform.config import load_config
from lathe.platform.registry import lookup
from lathe.platform.runstore import RunDir

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[1]


def run_job(config: str, tmp_path: Path, *overrides: str) -> tuple[dict, RunDir]:
    cfg = load_config(ROOT / config, [f"output_root={tmp_path}", *overrides])
    run = RunDir.create(cfg)
    return lookup("job", cfg.job)().run(cfg, run, show_progress=False), run


def test_dpo_lora_job_raises_margin_and_saves_adapter(ray_local, tmp_path):
    res, run = run_job("configs/align/dpo.yaml", tmp_path, "method=lora", "adapter.r=4", "train.lr=5e-3",
                       "train.max_steps=6", "train.batch_size=8", "data.n_train=48", "data.n_test=16",
                       "eval.n_prompts=4", "eval.max_new_tokens=8")
    steps = [r for r in run.metrics() if "loss" in r]
    assert steps[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # θ = ref at the first step
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["reward_margin"] > 0
    art = Path(res["artifact"])
    assert (art / "adapter_config.json").is_file() and (art / "lathe_source.json").is_file()
    assert res["eval_pref_accuracy"] > 0.5 and res["eval_reward_margin"] > 0
    assert (run.path / "splits.json").is_file() and (run.path / "report.md").is_file()
    assert "eval_reward_policy" in res


@pytest.mark.slow  # a Ray Train fit of the Bradley-Terry head (~45 s on 2 cores)
def test_reward_model_job_learns_the_preference(ray_local, tmp_path):
    res, run = run_job("configs/align/reward_model.yaml", tmp_path, "train.max_steps=12", "train.batch_size=8",
                       "data.n_train=96", "data.n_test=32", "eval_pairs=32", "train.lr=3e-3")
    assert res["final_loss"] < res["first_loss"]
    assert res["eval_accuracy"] >= 0.9  # the synthetic pairs differ in obvious marker words
    cfg = json.loads((Path(res["artifact"]) / "config.json").read_text())
    assert cfg["num_labels"] == 1 if "num_labels" in cfg else len(cfg["id2label"]) == 1


def _bad_hh(tmp_path: Path) -> Path:
    d = tmp_path / "hh" / "helpful-base"
    d.mkdir(parents=True)
    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    (d / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"chosen": good["chosen"]}) + "\n")
    (d / "test.jsonl").write_text(json.dumps(good) + "\n")
    return tmp_path / "hh"


def test_bad_preference_file_fails_before_training(tmp_path):
    from lathe.jobs.preference_data import PreferenceDataConfig, load_splits
    from lathe.platform.errors import LatheError

    d = PreferenceDataConfig(source="hh", root=str(_bad_hh(tmp_path)))
    with pytest.raises(LatheError, match=r"train.jsonl: row 2: missing field 'rejected'"):
        load_splits(d, 0, tmp_path)
    with pytest.raises(LatheError, match="data.root: source 'pku' needs"):
        load_splits(PreferenceDataConfig(source="pku"), 0, tmp_path)


@pytest.mark.slow
def test_bad_preference_file_is_one_line_cli_error(tmp_path):
    _bad_hh(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lathe.cli", "run", str(ROOT / "configs/align/dpo.yaml"),
                           "data.source=hh", f"data.root={tmp_path / 'hh'}", f"output_root={tmp_path / 'runs'}"],
                          capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
                          timeout=300)
    assert proc.returncode != 0
    assert "train.jsonl: row 2: missing field 'rejected'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tune_over_dpo_beta_and_lr(ray_local, tmp_path):
    from lathe.jobs.tune import run_tune

    cfg = load_config(ROOT / "configs/align/dpo.yaml", [
        f"output_root={tmp_path}", "train.max_steps=3", "train.batch_size=8", "data.n_train=32", "data.n_test=16",
        "eval.n_prompts=0", "tune.num_samples=2", "tune.max_concurrent=1"])
    res = run_tune(cfg, RunDir.create(cfg), "configs/align/dpo.yaml")
    assert len(res["trials"]) == 2 and all(t["status"] == "ok" for t in res["trials"])
    assert set(res["best_config"]) == {"dpo.beta", "train.lr"}
    assert all(t["eval_pref_accuracy"] is not None for t in res["trials"])
