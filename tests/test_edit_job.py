"""The `edit` and `edit_stats` jobs end to end on embedded Ray.

Fast tests edit a saved tiny model (`model.path`, no knowledge SFT); the slow ones go through the
preset path (the model first learns the synthetic graph by a tiny SFT, cached per session)."""

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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama + tokenizer trained on the synthetic graph's text (untrained weights)."""
    from lathe.data import evoke
    from lathe.platform.zoo import build_tiny, save_pretrained, train_tokenizer

    _, _, kg = evoke.evoke_synthetic(0, BASE["data"]["n_main"], BASE["data"]["n_subj"], BASE["data"]["n_relations"])
    tok = train_tokenizer([p + " " + a for p, a in evoke.knowledge_corpus(kg, icl_rows=10, distract_rows=10,
                                                                       filler_rows=10)], vocab_size=256)
    model = build_tiny("tiny-1m", vocab_size=len(tok), seed=0)
    return str(save_pretrained(model, tok, tmp_path_factory.mktemp("edit-model")))


def _run(tmp_path, editor, options=None, **extra):
    data = {"job": "edit", "name": f"t-{editor}", "editor": editor, "options": options or OPTS[editor],
            "cache_dir": str(tmp_path.parent / "edit-cache"), "output_root": str(tmp_path), **BASE,
            "protocol": {"generation_log": 1}, **extra}
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


def test_edit_job_rome_single_on_model_path(ray_local, tmp_path, tiny_dir):
    """5 records (4 main + 1 subj) through a pool of 2 edit actors. Every case's pre-edit scores
    equal the unedited model's (so each actor restored its weights before the next case), the
    post-edit scores moved o* up, and the first cases are marked restore-checked."""
    from lathe.data import evoke
    from lathe.eval import evoke as ev
    from lathe.jobs.sft import load_artifact

    opts = {**OPTS["rome"], "v_lr": 2.0, "v_num_grad_steps": 8, "v_weight_decay": 1e-3, "clamp_norm_factor": 50.0}
    run, res = _run(tmp_path, "rome", model={"path": tiny_dir}, data={**BASE["data"], "n_main": 4}, options=opts)
    _check(run, res, 5)
    assert "efficacy" in res["summary"]["post"] and "subject_specificity.EOS" in res["summary"]["post"]
    assert res["knowledge"]["cached"] is None and res["workers"] == 2
    rows = {(r["set"], r["case_id"]): r for r in map(lambda p: json.loads(p.read_text()), (run.path / "cases").glob("*.json"))}
    assert {k[0] for k in rows} == {"main", "subj"}
    main, subj, _ = evoke.evoke_synthetic(0, 4, BASE["data"]["n_subj"], BASE["data"]["n_relations"])
    model, tok = load_artifact(tiny_dir)
    sc = ev.Scorer(model.eval(), tok)
    for kind, recs, fn in (("main", main, ev.score_main), ("subj", subj, ev.score_subj)):
        for r in recs:
            want = fn(sc, r)
            got = rows[(kind, r["case_id"])]["pre"]
            assert got.keys() == want.keys()
            assert all(got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9) for k in want), (kind, r["case_id"])
    pre, post = res["summary"]["pre"], res["summary"]["post"]
    assert post["efficacy"] > pre["efficacy"] and post["paraphrase"] >= pre["paraphrase"]
    assert post["relation_specificity.DP"] != pre["relation_specificity.DP"]
    assert sum(r["restored_checked"] for r in rows.values()) == 5  # 2 actors x (first 3 of their cases)


@pytest.mark.slow
def test_edit_job_rome_single_learns_graph_first(ray_local, tmp_path):
    own = str(tmp_path / "own-cache")
    run, res = _run(tmp_path, "rome", cache_dir=own)
    _check(run, res, 4)
    assert res["knowledge"]["cached"] is False and res["knowledge"]["sft_steps"] == 6
    run2, res2 = _run(tmp_path, "rome", cache_dir=own)  # the graph-trained model is reused
    assert res2["knowledge"]["cached"] is True and res2["knowledge"]["dir"] == res["knowledge"]["dir"]
    assert res2["summary"] == res["summary"]


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


def test_edit_stats_job(ray_local, tmp_path, tiny_dir):
    data = {"job": "edit_stats", "name": "t-stats", "layers": [1], "cache_dir": str(tmp_path / "edit-cache"),
            "output_root": str(tmp_path), "cov_ridge": 1e-3,
            **{k: v for k, v in BASE.items() if k != "ray"}, "model": {"path": tiny_dir}}
    cfg = validate(data, "test")
    run = RunDir.create(cfg)
    res = lookup("job", "edit_stats")().run(cfg, run, show_progress=False)
    assert res["layers"]["1"]["min_eig"] >= -1e-6 and res["layers"]["1"]["dim"] == 344
    assert (run.artifacts / "mom2_layer1.safetensors").is_file()
    cached = list((tmp_path / "edit-cache" / "stats").glob("*-l1-*.safetensors"))
    assert len(cached) == 1
    # a second run reads the cache: same file, same statistics
    run2 = RunDir.create(cfg)
    res2 = lookup("job", "edit_stats")().run(cfg, run2, show_progress=False)
    assert res2["layers"] == res["layers"]
    assert list((tmp_path / "edit-cache" / "stats").glob("*-l1-*.safetensors")) == cached


def test_edit_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'editr'"):
        validate({"job": "edit", "editr": "rome"}, "x.yaml")
    cfg = validate({"job": "edit", "editor": "rom", "output_root": str(tmp_path)}, "x.yaml")
    with pytest.raises(ConfigError, match="did you mean 'rome'"):
        lookup("job", "edit")().run(cfg, RunDir.create(cfg), show_progress=False)
    cfg = validate({"job": "edit", "data": {"main": "a.json"}, "output_root": str(tmp_path)}, "x.yaml")
    with pytest.raises(ConfigError, match="both data.main and data.subj_spec"):
        lookup("job", "edit")().run(cfg, RunDir.create(cfg), show_progress=False)
