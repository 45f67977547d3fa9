"""The LEGO assistant's embedded default model: SmolLM2-135M-Instruct fine-tuned with MELoRA on the
synthesised LEGO-MRTA data (v2 rows + agent trajectories), trained on first use through the sft job
and cached as a merged HF directory, so a newcomer never meets a random-init assistant.

The recipe is `DEFAULT_RECIPE` (configs/lego/finetune_melora.yaml is the same recipe as a YAML; a test
keeps them equal). The cache key is a hash of the recipe, so changing it retrains.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from lathe.platform.pretrained import cache_root  # one cache root ($LATHE_CACHE) for every cached model

DEFAULT_RECIPE: dict = {
    "job": "sft", "name": "lego-melora", "seed": 0, "method": "melora",
    "adapter": {"r": 4, "n": 8, "lora_alpha": 64, "lora_dropout": 0.05,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "model": {"preset": "smollm2-135m-instruct"},
    "data": {"builder": "lego", "max_length": 256,
             "builder_options": {"formats": ["v2", "agent"], "n_manuals": 12, "steps_per_manual": 20,
                                 "max_history": 3, "agent_sessions": 1, "eval_limit": 32}},
    "train": {"max_steps": 60, "batch_size": 4, "lr": 1.0e-3, "warmup_steps": 1, "checkpoint_every": 30},
    "ray": {"num_workers": 1},
}


def recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def assistant_dir(recipe: dict | None = None, root: str | Path | None = None, show_progress: bool = True) -> Path:
    """The merged model dir of the recipe's fine-tune; trains it (sft job, Ray Train) when not cached."""
    recipe = copy.deepcopy(recipe or DEFAULT_RECIPE)
    out = Path(root or cache_root()) / "lego" / f"assistant-{recipe_key(recipe)}"
    merged = out / "merged"
    if (merged / "config.json").is_file():
        return merged
    from lathe.jobs.sft import SFTJob, load_artifact
    from lathe.methods.peft.common import export_merged
    from lathe.platform.config import validate
    from lathe.platform.runstore import RunDir
    from lathe.platform.runtime import ray_session

    cfg = validate({**recipe, "output_root": str(out / "runs")}, "lego embedded default")
    print(f"lathe: training the LEGO assistant's default model once ({cfg.method} on {cfg.model.preset or cfg.model.path},"
          f" {cfg.train.max_steps} steps); cached in {out}", flush=True)
    with ray_session():
        res = SFTJob().run(cfg, RunDir.create(cfg), show_progress=show_progress)
    model, tok = load_artifact(res["artifact"])
    tmp = out / "merged.tmp"
    export_merged(model, tok, tmp)
    (tmp / "lathe_recipe.json").write_text(json.dumps({"recipe": recipe, "results": res}, default=str))
    tmp.rename(merged)
    return merged
