"""The `edit` and `edit_stats` jobs end to end on embedded Ray (knowledge SFT kept tiny)."""

from __future__ import annotations

import json

import pytest

from lathe.platform.config import validate
from lathe.platform.errors import ConfigError
from lathe.platform.registry import lookup
from lathe.platform.runstore import RunDir

BASE = {"model": {"preset": "tiny-1m", "tokenizer_vocab": 256},
        "data": {"n_main": 3, "n_subj": 1, "n_relations": 2},
        "knowledge": {"train": {"max_steps": 6, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 1000},
                      "icl_rows": 10, "distract_rows": 10, "filler_rows": 10},
        "stats": {"n_samples": 40}, "ray": {"num_workers": 2}}
OPTS = {"rome": {"layer": 1, "v_num_grad_steps": 3, "cov_ridge": 1e-3, "context_template_length_params": [[3, 1]]},
        "memit": {"layers": [1, 2], "v_num_grad_steps": 3, "cov_ridge": 1e-3, "mom2_update_weight": 10,
                  "context_template_length_params": [[3, 1]]},
        "ft_l": {"num_steps": 3},
        "rome_lti": {"layer": 1, "v_num_grad_steps": 3, "cov_ridge": 1e-3, "context_template_length_params": [[3, 1]]},
        "memit_lti": {"layers": [1, 2], "v_num_grad_steps": 3, "cov_ridge": 1e-3, "mom2_update_weight": 10,
                      "context_template_length_params": [[3, 1]]}}


def _run(tmp_path, editor, **extra):
    data = {"job": "edit", "name": f"t-{editor}", "editor": editor, "options": OPTS[editor],
            "cache_dir": str(tmp_path.parent / "edit-cache"), "output_root": str(tmp_path), **BASE, **extra}
    cfg = validate(data, "test")
    run = RunDir.create(cfg)
    return run, lookup("job", "edit")().run(cfg, run, show_progress=False)


def _check(run, res, n):
    assert res["cases"] == n
    cases = sorted((run.path / "cases").glob("*.json"))
    assert len(cases) == n
    row = json.loads(cases[0].read_text())
    assert {"case_id", "pre", "post"} <= set(row)
    for when in ("pre", "post"):
        for k, v in res["summary"][when].items():
            assert 0 <= v <= 100, (k, v)
    assert (run.path / "report.md").is_file() and (run.path / "plots" / "eos_vs_efficacy.png").is_file()


def test_edit_job_rome_single(ray_local, tmp_path):
    run, res = _run(tmp_path, "rome")
    _check(run, res, 4)
    assert "efficacy" in res["summary"]["post"] and "subject_specificity.EOS" in res["summary"]["post"]
    assert res["knowledge"]["cached"] in (True, False)


@pytest.mark.slow
@pytest.mark.parametrize("editor", ["memit", "ft_l", "rome_lti", "memit_lti"])
def test_edit_job_every_editor(ray_local, tmp_path, editor):
    run, res = _run(tmp_path, editor, data={**BASE["data"], "n_main": 5, "n_subj": 0})
    _check(run, res, 5)


@pytest.mark.slow
def test_edit_job_batch_and_sequential(ray_local, tmp_path):
    run, res = _run(tmp_path, "memit", protocol={"mode": "batch", "batch_size": 4})
    _check(run, res, 4)
    run, res = _run(tmp_path, "rome", protocol={"mode": "sequential"})
    _check(run, res, 4)


def test_edit_stats_job(ray_local, tmp_path):
    data = {"job": "edit_stats", "name": "t-stats", "layers": [1], "cache_dir": str(tmp_path.parent / "edit-cache"),
            "output_root": str(tmp_path), "cov_ridge": 1e-3,
            **{k: v for k, v in BASE.items() if k != "ray"}}
    cfg = validate(data, "test")
    run = RunDir.create(cfg)
    res = lookup("job", "edit_stats")().run(cfg, run, show_progress=False)
    assert res["layers"]["1"]["min_eig"] >= -1e-6 and res["layers"]["1"]["dim"] == 344
    assert (run.artifacts / "mom2_layer1.safetensors").is_file()


def test_edit_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'editr'"):
        validate({"job": "edit", "editr": "rome"}, "x.yaml")
    cfg = validate({"job": "edit", "editor": "rom", "output_root": str(tmp_path)}, "x.yaml")
    with pytest.raises(ConfigError, match="did you mean 'rome'"):
        lookup("job", "edit")().run(cfg, RunDir.create(cfg), show_progress=False)
    cfg = validate({"job": "edit", "data": {"main": "a.json"}, "output_root": str(tmp_path)}, "x.yaml")
    with pytest.raises(ConfigError, match="both data.main and data.subj_spec"):
        lookup("job", "edit")().run(cfg, RunDir.create(cfg), show_progress=False)
