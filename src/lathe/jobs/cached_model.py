"""Embedded default models that the platform trains itself: an sft recipe run once through Ray Train
on first use and cached as a merged HF directory under the one cache root, keyed by the recipe's
hash (changing the recipe retrains). The LEGO assistant and the agents' student use it."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

from lathe.platform.pretrained import cache_root


def recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def trained_once(recipe: dict, where: str, label: str, root: str | Path | None = None,
                 show_progress: bool = True) -> Path:
    """The merged model dir of `recipe` under `<root>/<where>-<key>/merged`; trains it when not cached.
    `label` names it in the one line printed before training."""
    recipe = copy.deepcopy(recipe)
    out = Path(root or cache_root()) / f"{where}-{recipe_key(recipe)}"
    merged = out / "merged"
    if (merged / "config.json").is_file():
        return merged
    from lathe.jobs.sft import SFTJob, load_artifact
    from lathe.methods.peft.common import export_merged
    from lathe.platform.config import validate
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    ray_cfg = dict(recipe.get("ray", {}))
    if ray_cfg.get("num_workers", 1) == 1:
        # One worker gets the machine's cores (torch threads). Thread count does not change what is
        # learned, so it stays out of the cache key; on 2 cores this halves the first run.
        ray_cfg.setdefault("cpus_per_worker", float(min(os.cpu_count() or 1, 8)))
    cfg = validate({**recipe, "ray": ray_cfg, "output_root": str(out / "runs")}, label)
    print(f"lathe: training {label} once ({cfg.method} on {cfg.model.preset or cfg.model.path}, "
          f"{cfg.train.max_steps} steps); cached in {out}", flush=True)
    with ray_session():
        res = SFTJob().run(cfg, RunDir.create(cfg), show_progress=show_progress)
    model, tok = load_artifact(res["artifact"])
    tmp = out / "merged.tmp"
    export_merged(model, tok, tmp)
    (tmp / "lathe_recipe.json").write_text(json.dumps({"recipe": recipe, "results": res}, default=str))
    tmp.rename(merged)
    return merged
