"""The train-once cache of the embedded default models (lathe.jobs.cached_model)."""

import contextlib
import os

import pytest


class _Stop(Exception):
    pass


def test_single_worker_recipe_trains_on_all_cores_under_an_unchanged_key(tmp_path, monkeypatch):
    """The recipe hash (the cache key) ignores the thread count the run is given; a recipe that sets
    cpus_per_worker keeps it. Catches a key that moves with the machine, or threads pinned to 1."""
    from lathe.jobs import cached_model as cm
    from lathe.jobs import sft

    seen = []

    def fake_run(self, cfg, run_dir, show_progress=True):
        seen.append(cfg.ray.cpus_per_worker)
        raise _Stop

    monkeypatch.setattr(sft.SFTJob, "run", fake_run)
    monkeypatch.setattr("lathe.platform.runtime.ray_session", lambda *a, **k: contextlib.nullcontext({}))
    recipe = {"job": "sft", "name": "t", "model": {"preset": "tiny-1m"}, "ray": {"num_workers": 1}}
    key = cm.recipe_key(recipe)
    with pytest.raises(_Stop):
        cm.trained_once(recipe, "t", "test model", root=tmp_path, show_progress=False)
    assert seen == [float(min(os.cpu_count() or 1, 8))]
    assert cm.recipe_key(recipe) == key and "cpus_per_worker" not in recipe["ray"]
    assert (tmp_path / f"t-{key}").is_dir()
    pinned = {**recipe, "ray": {"num_workers": 1, "cpus_per_worker": 1}}
    with pytest.raises(_Stop):
        cm.trained_once(pinned, "t", "test model", root=tmp_path, show_progress=False)
    assert seen[-1] == 1.0
