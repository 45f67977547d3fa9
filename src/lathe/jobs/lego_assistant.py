"""The LEGO assistant's embedded default model: SmolLM2-135M-Instruct fine-tuned with MELoRA on the
synthesised LEGO-MRTA data (v2 rows + agent trajectories), trained on first use through the sft job
and cached as a merged HF directory, so a newcomer never meets a random-init assistant.

The recipe is `DEFAULT_RECIPE` (configs/lego/finetune_melora.yaml is the same recipe as a YAML; a test
keeps them equal). The cache key is a hash of the recipe, so changing it retrains.
"""

from __future__ import annotations

from pathlib import Path

from lathe.jobs.cached_model import recipe_key, trained_once  # noqa: F401  (recipe_key: the cache key)

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


def assistant_dir(recipe: dict | None = None, root: str | Path | None = None, show_progress: bool = True) -> Path:
    """The merged model dir of the recipe's fine-tune; trains it (sft job, Ray Train) when not cached."""
    return trained_once(recipe or DEFAULT_RECIPE, "lego/assistant", "the LEGO assistant's default model", root,
                        show_progress)
