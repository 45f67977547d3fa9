"""The agents' embedded default model: SmolLM2-135M-Instruct with a LoRA adapter distilled (SPAN,
spec 3.7) from the gold-path oracle's ConAgents trajectories on seeded sandbox world 1, trained
on first use through the sft job and cached as a merged HF directory. The sandbox serves world 0, so
the default model meets only held-out tasks. It runs with `distill.student_config()` (compact prompts).

The recipe is `DEFAULT_RECIPE`; the cache key is its hash, so changing it retrains. It is about one
pass over world 1's 382 SPAN rows (96 steps x 4, lr 1e-3) rather than the spec's 3 epochs at 2e-4
(configs/agents/distill_smollm2_lora.yaml), so that first use costs ~10 minutes on 2 CPU cores; 30
steps (a third of a pass) did not learn which second tool a relation needs. docs/agents.md says so.
`model_backends` turns a model name (oracle | distilled | base | a model dir | an endpoint URL) into
per-item LLM factories and the agent configs that model runs with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from lathe.jobs.cached_model import recipe_key, trained_once  # noqa: F401  (recipe_key: the cache key)

DEFAULT_RECIPE: dict = {
    "job": "sft", "name": "agents-student", "seed": 0, "method": "lora",
    "adapter": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "model": {"preset": "smollm2-135m-instruct"},
    "data": {"builder": "agents_span", "max_length": 320,
             "builder_options": {"domain": "tmdb", "train_worlds": [1], "eval_world": 0, "eval_limit": 6}},
    "train": {"max_steps": 96, "batch_size": 4, "lr": 1.0e-3, "warmup_steps": 5, "checkpoint_every": 1000},
    "ray": {"num_workers": 1},
}


def student_dir(recipe: dict | None = None, root: str | Path | None = None, show_progress: bool = True) -> Path:
    """The merged model dir of the recipe's distillation; trains it (sft job, Ray Train) when not cached."""
    return trained_once(recipe or DEFAULT_RECIPE, "agents/student",
                        "the agents' default model (distilled from oracle trajectories)", root, show_progress)


def model_backends(name: str, send: Callable | None = None, passages_by_id: dict | None = None,
                   max_context: int = 2048):
    """(task_llm(task), question_llm(row), conagents config, genground config) for a model name:
    `oracle` (the gold-path teacher), `distilled` (the embedded default above), `base` (SmolLM2-135M-
    Instruct, full prompts), an `http(s)://` OpenAI-compatible base URL (LATHE_AGENT_MODEL and
    LATHE_AGENT_KEY_ENV optional), or a local dir (an HF model, or an sft artifact: a student, compact
    prompts)."""
    from lathe.methods.agents.conagents import ConAgentsConfig
    from lathe.methods.agents.distill import student_config
    from lathe.methods.agents.genground import GenGroundConfig
    from lathe.methods.agents.llm import OpenAIChat, TransformersChat
    from lathe.platform.errors import LatheError

    gg = GenGroundConfig(max_tokens=64, max_iters=4, n_docs=6)
    if name == "oracle":
        from lathe.methods.agents.oracle import OracleConAgents, OracleGenGround

        return (lambda t: OracleConAgents(t, send)), (lambda r: OracleGenGround(r, passages_by_id or {})), \
            ConAgentsConfig(), GenGroundConfig(n_docs=6)
    if name.startswith(("http://", "https://")):
        llm = OpenAIChat(name, os.environ.get("LATHE_AGENT_MODEL"), os.environ.get("LATHE_AGENT_KEY_ENV"),
                         allow_remote=True)
        return (lambda _: llm.clone()), (lambda _: llm.clone()), ConAgentsConfig(max_tokens=256), \
            GenGroundConfig(max_tokens=128, n_docs=6)
    if name == "base":
        from lathe.platform.pretrained import pretrained_dir

        llm = TransformersChat.from_dir(str(pretrained_dir("smollm2-135m-instruct")), max_context=max_context)
        cfg = ConAgentsConfig(max_tokens=96, max_steps=3, exec_retries=2, grounding_retries=2, review_llm=False)
        return (lambda _: llm.clone()), (lambda _: llm.clone()), cfg, gg
    if name == "distilled":
        path = student_dir()
    else:
        path = Path(name)
        if not path.is_dir():
            raise LatheError(f"--model: {name!r} is not oracle, distilled, base, an http(s) URL or a model directory")
    # an sft artifact (full model dir or adapter over its recorded base); the default is a merged dir
    llm = TransformersChat.from_artifact(str(path), max_context=max_context, prompt_style="sft", json_retries=0)
    return (lambda _: llm.clone()), (lambda _: llm.clone()), student_config(), gg
