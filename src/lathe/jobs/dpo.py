"""`dpo` job: Direct Preference Optimisation of a causal LM on preference pairs, on the one
training loop (Ray Train), full fine-tuning or any lathe adapter (lora, melora, aslora).

The reference is the policy at the start of training (an sft artifact via `init_from`, a
model dir or a preset). With `dpo.precompute_ref_logps` (default) its log-probs are computed
once on the worker before the first step and the reference leaves memory.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from lathe.data import preference as P
from lathe.jobs.base import Job, Reporter
from lathe.jobs.preference_data import PreferenceDataConfig, load_splits
from lathe.jobs.sft import SFTTask, load_artifact
from lathe.jobs.task import Built
from lathe.jobs.trainer import run_training
from lathe.methods.alignment import dpo as D
from lathe.methods.alignment.encoding import encode_pair, pair_collate
from lathe.methods.alignment.generation import generate
from lathe.methods.alignment.scoring import response_logps
from lathe.platform.config import JobConfig, Strict, TrainConfig
from lathe.platform.errors import LatheError
from lathe.platform.registry import lookup, register
from lathe.platform.runstore import RunDir, markdown_table, plot_curves
from lathe.platform.zoo import ModelSource, resolve_source


class DPOSection(Strict):
    beta: float = Field(0.1, gt=0, description="DPO β (spec default 0.1)")
    precompute_ref_logps: bool = Field(True, description="reference log-probs once, then drop the reference")
    objective: Literal["dpo", "sft_chosen"] = Field("dpo", description="sft_chosen: SFT on y⁺ (MACPO −HN)")


class DPOEval(Strict):
    n_prompts: int = Field(64, ge=0, description="test prompts answered greedily and scored (0: skip)")
    max_new_tokens: int = Field(64, ge=1)
    reward_model: str | None = Field(None, description="a learned reward-model dir (else the rule reward "
                                                       "for synthetic data)")


class DPOConfig(JobConfig):
    job: Literal["dpo"] = "dpo"
    method: str = Field("full", description="full, or an adapter: lora, melora, aslora")
    adapter: dict[str, Any] = Field(default_factory=dict, description="the adapter method's own options")
    init_from: str | None = Field(None, description="an sft/dpo artifact to start from (policy and reference)")
    data: PreferenceDataConfig = PreferenceDataConfig()
    dpo: DPOSection = DPOSection()
    eval: DPOEval = DPOEval()
    # spec defaults: lr 5e-7 full fine-tuning (5e-6 for LoRA: set train.lr), 1 epoch, batch 64
    train: TrainConfig = TrainConfig(epochs=1, lr=5e-7, batch_size=64, checkpoint_every=1000)


def artifact_source(path: str | Path) -> ModelSource:
    """The ModelSource an artifact is built on: its base (adapter dir) or the dir itself."""
    path = Path(path)
    src = path / "lathe_source.json"
    if src.is_file():
        return ModelSource(**json.loads(src.read_text()))
    if not (path / "config.json").is_file():
        raise LatheError(f"init_from: {path} is not a model or adapter artifact (no config.json)")
    return ModelSource(path=str(path.resolve()))


class DPOTask(SFTTask):
    """Pairs {"prompt", "chosen", "rejected"} -> the DPO (or SFT-on-chosen) loss.

    `init` (an artifact dir) wins over `source`; an adapter artifact keeps training its adapter.
    """

    def __init__(self, source: ModelSource | None, rows: list[dict], max_prompt: int, max_response: int,
                 method: str, adapter: dict[str, Any], beta: float = 0.1, precompute: bool = True,
                 init: str | None = None, objective: str = "dpo", ref_batch_size: int = 16):
        self.source = artifact_source(init) if init else source
        self.rows, self.max_prompt, self.max_response = rows, max_prompt, max_response
        self.method, self.adapter, self.beta, self.precompute = method, adapter, beta, precompute
        self.init, self.objective, self.ref_batch_size = init, objective, ref_batch_size

    def build(self) -> Built:
        if self.init:
            model, tok = load_artifact(self.init)
        else:
            model, tok = self.source.load()
        if self.method != "full" and not getattr(model, "lathe_peft", None):
            model = lookup("peft", self.method).apply(model, self.adapter)
        elif self.method == "full" and getattr(model, "lathe_peft", None):
            from lathe.methods.peft import merge_and_unload

            model = merge_and_unload(model)
            for p in model.parameters():
                p.requires_grad_(True)
        self.pad_id = tok.pad_token_id
        from lathe.methods.alignment.fingerprint import state_fingerprint

        self.reference_fingerprint = state_fingerprint(model)  # θ at build time is π_ref
        items = [encode_pair(tok, r["prompt"], r["chosen"], r["rejected"], self.max_prompt, self.max_response)
                 for r in self.rows]
        self.ref = None
        if self.objective == "dpo":
            if self.precompute:
                self.reference_logps(model, items)
            else:
                self.ref = copy.deepcopy(model).eval()
                for p in self.ref.parameters():
                    p.requires_grad_(False)
        return Built(model, tok, items, pair_collate(tok.pad_token_id))

    @torch.no_grad()
    def reference_logps(self, model, items: list[dict]) -> None:
        """θ at build time IS the reference: its log-probs go into the items."""
        collate = pair_collate(self.pad_id)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        was = next(model.parameters()).device
        model.to(device).eval()
        for s in range(0, len(items), self.ref_batch_size):
            chunk = items[s: s + self.ref_batch_size]
            b = {k: v.to(device) for k, v in collate(chunk).items()}
            c, r = D.pair_logps(model, b, self.pad_id)
            for it, vc, vr in zip(chunk, c.tolist(), r.tolist()):
                it["ref_chosen"], it["ref_rejected"] = vc, vr
        model.to(was).train()

    def save_artifact(self, model, tokenizer, out_dir: Path) -> None:
        super().save_artifact(model, tokenizer, out_dir)
        (out_dir / "reference.json").write_text(json.dumps({"fingerprint": self.reference_fingerprint,
                                                            "init": self.init, "objective": self.objective}))

    def loss(self, model, batch):
        tokens = batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        if self.objective == "sft_chosen":
            loss, m = D.sft_loss_on_chosen(model, batch)
            return loss, {**m, "tokens": tokens}
        pc, pr = D.pair_logps(model, batch, self.pad_id)
        if self.ref is not None:
            if next(self.ref.parameters()).device != pc.device:
                self.ref.to(pc.device)
            with torch.no_grad():
                rc, rr = D.pair_logps(self.ref, batch, self.pad_id)
        else:
            rc, rr = batch["ref_chosen"].to(pc.device), batch["ref_rejected"].to(pc.device)
        loss, m = D.dpo_loss(pc, pr, rc, rr, self.beta)
        return loss, {**m, "tokens": tokens}


def pref_metrics(policy, ref, tok, rows: list[dict], beta: float, max_prompt: int, max_response: int) -> dict:
    """Held-out implicit-reward accuracy and margin of `policy` against `ref`."""
    prompts = [r["prompt"] for r in rows]
    lp = {k: response_logps(policy, tok, prompts, [r[k] for r in rows], max_prompt, max_response)
          for k in ("chosen", "rejected")}
    lr = {k: response_logps(ref, tok, prompts, [r[k] for r in rows], max_prompt, max_response)
          for k in ("chosen", "rejected")}
    margins = [beta * ((a[0] - b[0]) - (c[0] - d[0])) for a, b, c, d in
               zip(lp["chosen"], lr["chosen"], lp["rejected"], lr["rejected"])]
    return {"eval_pref_accuracy": sum(m > 0 for m in margins) / max(len(margins), 1),
            "eval_reward_margin": sum(margins) / max(len(margins), 1)}


def reward_fn(reward_model: str | None, synthetic: bool):
    if reward_model:
        from lathe.methods.alignment.reward import RewardModel

        return RewardModel(reward_model)
    if synthetic:
        return lambda ps, ys: [P.rule_reward(p, y) for p, y in zip(ps, ys)]
    return None


@register("job", "dpo")
class DPOJob(Job):
    Config = DPOConfig

    def run(self, cfg: DPOConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        t0 = time.perf_counter()
        if cfg.method != "full":
            lookup("peft", cfg.method)  # unknown adapter: a clear error before Ray starts workers
        parts, manifest = load_splits(cfg.data, cfg.seed, run.path)
        train_rows = parts["d_init"] + parts["q_w2s"]  # plain DPO uses every labelled training row
        source = None
        if not cfg.init_from:
            corpus = [r["prompt"] + r["chosen"] + " " + r["rejected"] for r in train_rows + parts["test"]]
            source = resolve_source(cfg.model, corpus, cfg.seed)
        task = DPOTask(source, train_rows, cfg.data.max_prompt, cfg.data.max_response, cfg.method, cfg.adapter,
                       cfg.dpo.beta, cfg.dpo.precompute_ref_logps, cfg.init_from, cfg.dpo.objective)
        reporter = Reporter(run, desc=f"dpo[{cfg.method}]", show=show_progress, forward=forward)
        try:
            out = run_training(task, cfg.train, cfg.ray, run.path / "checkpoints", seed=cfg.seed,
                               on_records=reporter, artifact_dir=run.artifacts / "model")
        finally:
            reporter.close()
        steps = sorted({r["step"]: r for r in out.metrics if "loss" in r}.values(), key=lambda r: r["step"])
        results: dict[str, Any] = {
            "method": cfg.method, "beta": cfg.dpo.beta, "lr": cfg.train.lr, "steps": steps[-1]["step"] if steps else 0,
            "pairs": len(train_rows), "first_loss": steps[0]["loss"] if steps else None,
            "final_loss": steps[-1]["loss"] if steps else None,
            "final_reward_margin": steps[-1].get("reward_margin") if steps else None,
            "tokens_per_s": steps[-1].get("tokens_per_s") if steps else None,
            "artifact": str(out.artifact) if out.artifact else None, "splits_digest": manifest["digest"],
        }
        if out.artifact:
            results.update(self.evaluate(cfg, task, out.artifact, parts["test"]))
        results["wall_s"] = time.perf_counter() - t0
        write_report(run, cfg, results, steps)
        return results

    def evaluate(self, cfg: DPOConfig, task: DPOTask, artifact: Path, test: list[dict]) -> dict:
        policy, tok = load_artifact(artifact)
        ref, _ = load_artifact(cfg.init_from) if cfg.init_from else task.source.load()
        rows = test[: max(cfg.eval.n_prompts, 16)]
        res = pref_metrics(policy, ref, tok, rows, cfg.dpo.beta, cfg.data.max_prompt, cfg.data.max_response)
        score = reward_fn(cfg.eval.reward_model, cfg.data.source == "synthetic")
        if score is not None and cfg.eval.n_prompts:
            prompts = [r["prompt"] for r in test[: cfg.eval.n_prompts]]
            for label, model in (("policy", policy), ("reference", ref)):
                ys, _ = generate(model, tok, prompts, cfg.eval.max_new_tokens, temperature=0.0,
                                 max_prompt=cfg.data.max_prompt)
                r = score(prompts, ys)
                res[f"eval_reward_{label}"] = sum(r) / len(r)
        return res


def write_report(run: RunDir, cfg: DPOConfig, results: dict, steps: list[dict]) -> None:
    plots = []
    if steps:
        xs = [r["step"] for r in steps]
        plots.append(plot_curves(run.path / "plots" / "dpo.png",
                                 {"loss": (xs, [r["loss"] for r in steps]),
                                  "reward margin": (xs, [r.get("reward_margin", 0.0) for r in steps]),
                                  "preference accuracy": (xs, [r.get("reward_accuracy", 0.0) for r in steps])},
                                 xlabel="optimizer step", ylabel="value", title=f"{cfg.name}: DPO"))
    run.write_results(results)
    run.write_report(f"dpo: {cfg.name}", [("Results", markdown_table([{k: v for k, v in results.items()
                                                                       if k != "artifact"}])),
                                          ("Artifact", f"`{results.get('artifact')}`")], plots)
