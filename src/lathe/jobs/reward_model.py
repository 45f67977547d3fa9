"""`reward_model` job: a Bradley-Terry reward model (one-logit sequence-classification head on
a causal-LM body) trained on preference pairs with the one training loop.

The artifact is an HF `*ForSequenceClassification` directory; `lathe.methods.alignment.reward
.RewardModel(path)` scores (x, y) with it, and the macpo/dpo evaluations accept it as
`reward_model`, beside the programmatic rule reward of the synthetic set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from lathe.jobs.base import Job, Reporter
from lathe.jobs.preference_data import PreferenceDataConfig, load_splits
from lathe.jobs.task import Built, TrainTask
from lathe.jobs.trainer import run_training
from lathe.methods.alignment import reward as R
from lathe.methods.alignment.encoding import encode_pair, pair_collate
from lathe.platform.config import JobConfig, TrainConfig
from lathe.platform.registry import register
from lathe.platform.runstore import RunDir, markdown_table, plot_curves
from lathe.platform.zoo import ModelSource, resolve_source


def build_classifier(source: ModelSource):
    """(one-logit sequence classifier, tokenizer) with the body of `source`'s causal LM."""
    from transformers import AutoModelForSequenceClassification

    from lathe.platform.zoo import preset_config, tokenizer_from_json

    if source.path is not None:
        from transformers import AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(
            source.path, num_labels=1, local_files_only=True, use_safetensors=True,
            trust_remote_code=source.trust_remote_code)
        tok = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        tok = tokenizer_from_json(source.tokenizer_json)
        cfg = preset_config(source.preset, len(tok), source.architecture, **(source.config_overrides or {}))
        cfg.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)
            model = AutoModelForSequenceClassification.from_config(cfg)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


class RewardTask(TrainTask):
    def __init__(self, source: ModelSource, rows: list[dict], max_prompt: int, max_response: int):
        self.source, self.rows, self.max_prompt, self.max_response = source, rows, max_prompt, max_response

    def build(self) -> Built:
        model, tok = build_classifier(self.source)
        items = [encode_pair(tok, r["prompt"], r["chosen"], r["rejected"], self.max_prompt, self.max_response)
                 for r in self.rows]
        return Built(model, tok, items, pair_collate(tok.pad_token_id))

    def loss(self, model, batch):
        rc = R.scores(model, batch["chosen_input_ids"], batch["chosen_attention_mask"])
        rr = R.scores(model, batch["rejected_input_ids"], batch["rejected_attention_mask"])
        loss, m = R.bt_loss(rc, rr)
        m["tokens"] = batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        return loss, m


class RewardModelConfig(JobConfig):
    job: Literal["reward_model"] = "reward_model"
    data: PreferenceDataConfig = PreferenceDataConfig()
    train: TrainConfig = TrainConfig(epochs=1, lr=1e-5, batch_size=16, checkpoint_every=1000)
    eval_pairs: int = Field(256, ge=1, description="test pairs for the held-out accuracy")


@register("job", "reward_model")
class RewardModelJob(Job):
    Config = RewardModelConfig

    def run(self, cfg: RewardModelConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        t0 = time.perf_counter()
        parts, manifest = load_splits(cfg.data, cfg.seed, run.path)
        rows = parts["d_init"] + parts["q_w2s"]
        corpus = [r["prompt"] + r["chosen"] + " " + r["rejected"] for r in rows + parts["test"]]
        source = resolve_source(cfg.model, corpus, cfg.seed)
        task = RewardTask(source, rows, cfg.data.max_prompt, cfg.data.max_response)
        reporter = Reporter(run, desc="reward_model", show=show_progress, forward=forward)
        try:
            out = run_training(task, cfg.train, cfg.ray, run.path / "checkpoints", seed=cfg.seed,
                               on_records=reporter, artifact_dir=run.artifacts / "reward_model")
        finally:
            reporter.close()
        steps = sorted({r["step"]: r for r in out.metrics if "loss" in r}.values(), key=lambda r: r["step"])
        results: dict[str, Any] = {"steps": steps[-1]["step"] if steps else 0, "pairs": len(rows),
                                   "first_loss": steps[0]["loss"] if steps else None,
                                   "final_loss": steps[-1]["loss"] if steps else None,
                                   "artifact": str(out.artifact) if out.artifact else None,
                                   "splits_digest": manifest["digest"]}
        if out.artifact:
            results.update(held_out(out.artifact, parts["test"][: cfg.eval_pairs], cfg))
        results["wall_s"] = time.perf_counter() - t0
        plots = []
        if steps:
            plots.append(plot_curves(run.path / "plots" / "loss.png",
                                     {"BT loss": ([r["step"] for r in steps], [r["loss"] for r in steps])},
                                     xlabel="optimizer step", ylabel="loss", title=f"{cfg.name}: reward model"))
        run.write_results(results)
        run.write_report(f"reward_model: {cfg.name}",
                         [("Results", markdown_table([{k: v for k, v in results.items() if k != "artifact"}])),
                          ("Artifact", f"`{results.get('artifact')}`")], plots)
        return results


def held_out(artifact: Path, rows: list[dict], cfg: RewardModelConfig) -> dict:
    rm = R.RewardModel(str(artifact), cfg.data.max_prompt, cfg.data.max_response)
    prompts = [r["prompt"] for r in rows]
    c, r = rm(prompts, [x["chosen"] for x in rows]), rm(prompts, [x["rejected"] for x in rows])
    return {"eval_accuracy": sum(a > b for a, b in zip(c, r)) / len(rows),
            "eval_margin": sum(a - b for a, b in zip(c, r)) / len(rows)}
