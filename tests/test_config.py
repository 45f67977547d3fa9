"""Typed configs: every shipped YAML validates; every kind of bad input is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lathe.cli import main
from lathe.platform.config import load_config
from lathe.platform.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p) for p in (ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(Path(p).relative_to(ROOT / "configs")))
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.job and cfg.name


GOOD = """\
job: sft
name: t
train:
  lr: 0.001
  batch_size: 4
"""


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text, overrides, expect",
    [
        (GOOD.replace("batch_size", "batch_sise"), [], "unknown key 'train.batch_sise'; did you mean 'train.batch_size'?"),
        (GOOD, ["train.lr=fast"], "train.lr: Input should be a valid number"),
        (GOOD, ["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (GOOD, ["train.batch_size=0"], "train.batch_size: Input should be greater than or equal to 1"),
        (GOOD.replace("job: sft", "job: sfx"), [], "job: unknown job 'sfx'; did you mean 'sft'?"),
        (GOOD.replace("job: sft\n", ""), [], "missing key 'job'"),
        (GOOD + "model: [unclosed\n", [], "malformed YAML"),
        ("- just\n- a list\n", [], "expected a mapping"),
        (GOOD, ["train.lr"], "expected key.sub=value"),
        (GOOD, ["ray.num_workers=two"], "ray.num_workers: Input should be a valid integer"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, overrides, expect):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    assert expect in msg
    if "override" not in msg:
        assert msg.startswith(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_adapter_method_is_reported_by_cli(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "method: lorra\n")
    # validate accepts any method name syntactically; `run` resolves it before starting Ray
    from lathe.platform.registry import lookup

    with pytest.raises(ConfigError, match="unknown peft 'lorra'"):
        lookup("peft", load_config(path).method)


def test_cli_validate_exit_code_and_single_line(tmp_path, capsys):
    bad = _write(tmp_path, GOOD.replace("lr:", "learning_rate:"), "bad.yaml")
    good = _write(tmp_path, GOOD, "good.yaml")
    assert main(["config", "validate", good]) == 0
    assert main(["config", "validate", good, bad]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("error") and "unknown key 'train.learning_rate'" in out[-1]


def test_cli_run_bad_config_exits_2_without_traceback(tmp_path, capsys):
    bad = _write(tmp_path, GOOD.replace("lr: 0.001", "lr: [1, 2]"))
    assert main(["run", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lathe: error:") and "train.lr" in err[0]


def test_show_resolves_defaults_and_overrides(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    assert main(["config", "show", path, "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "num_to_keep: 2" in out and "preset: tiny-1m" in out


def test_partial_section_override_keeps_the_jobs_own_defaults():
    # the edit job's knowledge SFT and the unlearn job ship tuned TrainConfigs; naming one field must
    # not reset the others to TrainConfig's generic defaults (batch 8, lr 1e-3)
    cfg = load_config(ROOT / "configs" / "edit" / "rome.yaml", ["knowledge.train.epochs=60"])
    t = cfg.knowledge.train
    assert (t.epochs, t.batch_size, t.lr, t.warmup_steps) == (60, 32, 3e-3, 20)
    from lathe.jobs.unlearn import UnlearnSection

    t = UnlearnSection(train={"epochs": 2}).train
    assert (t.epochs, t.lr, t.batch_size, t.grad_accum) == (2, 1e-5, 8, 4)
