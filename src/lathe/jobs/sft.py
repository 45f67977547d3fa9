"""`sft` job: supervised fine-tuning of a causal LM on question/answer JSONL.

Loss on answer tokens only; full fine-tuning or any registered adapter (`method:`).
Writes the model artifact (HF directory, safetensors) that other jobs load.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from lathe.data import qa
from lathe.jobs.base import Job, Reporter
from lathe.jobs.task import Built, TrainTask
from lathe.jobs.trainer import run_training
from lathe.methods import sft as sft_lib
from lathe.methods.peft.artifact import SOURCE_FILE, load_artifact  # noqa: F401  (load_artifact re-exported)
from lathe.platform.config import JobConfig, Strict, TrainConfig
from lathe.platform.registry import lookup, register
from lathe.platform.runstore import RunDir, markdown_table, plot_curves
from lathe.platform.zoo import ModelSource, count_parameters, resolve_source


class SFTData(Strict):
    train: str | None = Field(None, description="QA JSONL; default: the seeded synthetic QA set")
    eval: str | None = None
    synthetic_size: int = Field(256, ge=4)
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(128, ge=8)
    extra_corpus: list[str] = Field(default_factory=list, description="more text for a preset's tokenizer")
    builder: str | None = Field(None, description="a registered sft_data builder (e.g. lego) instead of QA rows")
    builder_options: dict[str, Any] = Field(default_factory=dict, description="the builder's own options")


class SFTConfig(JobConfig):
    job: Literal["sft"] = "sft"
    method: str = Field("full", description="full, or an adapter: lora, melora, aslora, meft")
    adapter: dict[str, Any] = Field(default_factory=dict, description="the adapter method's own options")
    data: SFTData = SFTData()
    train: TrainConfig = TrainConfig()
    quantization: Literal["none", "nf4"] = Field(
        "none", description="nf4: QLoRA's 4-bit base (bitsandbytes, CUDA only; skipped on CPU with a message)")


def load_rows(data: SFTData, seed: int) -> tuple[list[dict], list[dict]]:
    if data.builder:
        return lookup("sft_data", data.builder)(data.builder_options, seed)
    rows = qa.load_jsonl(data.train) if data.train else qa.generate(data.synthetic_size, seed)
    if data.eval:
        return rows, qa.load_jsonl(data.eval)
    if data.eval_fraction == 0:
        return rows, []
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    k = max(1, int(len(rows) * data.eval_fraction))
    return shuffled[k:], shuffled[:k]


class SFTTask(TrainTask):
    def __init__(self, source: ModelSource, rows: list[dict], max_length: int, method: str,
                 adapter: dict[str, Any], quantization: str = "none"):
        self.source, self.rows, self.max_length = source, rows, max_length
        self.method, self.adapter, self.quantization = method, adapter, quantization
        if method == "meft" and adapter.get("tables") == "actor" and not adapter.get("actor_name"):
            from lathe.jobs.meft_tables import new_actor_name  # one table actor per run, named on the driver

            self.adapter = {**adapter, "actor_name": new_actor_name()}

    def build(self) -> Built:
        model, tok = self.source.load()
        if self.quantization == "nf4":
            model = quantize_nf4(model, tok)
        if self.method != "full":
            extra = {}
            if self.method == "meft" and self.adapter.get("tables") == "actor":
                from lathe.jobs.meft_tables import actor_store  # the node's table actor (Ray lives in jobs)

                extra["store"] = actor_store(self.adapter)
            model = lookup("peft", self.method).apply(model, self.adapter, **extra)
        encoded = [sft_lib.encode_row(tok, r, self.max_length) for r in self.rows]
        return Built(model, tok, encoded, sft_lib.pad_collate(tok.pad_token_id))

    def loss(self, model, batch):
        return sft_lib.causal_lm_loss(model, batch)

    def _hook(self, name: str):
        return None if self.method == "full" else getattr(lookup("peft", self.method), name, None)

    def on_train_start(self, model, total_steps):
        hook = self._hook("set_total_steps")
        if hook:
            hook(model, total_steps)

    def before_step(self, model, step, optimizer):
        hook = self._hook("before_step")
        return hook(model, step, optimizer) if hook else {}

    def after_step(self, model, step, optimizer):
        hook = self._hook("after_step")
        return hook(model, step, optimizer) if hook else {}

    def trainable_state(self, model):
        hook = self._hook("trainable_state")  # MEFT: + the host tables and their Adam state
        return hook(model) if hook else super().trainable_state(model)

    def load_trainable_state(self, model, state):
        hook = self._hook("load_trainable_state")
        return hook(model, state) if hook else super().load_trainable_state(model, state)

    def save_artifact(self, model, tokenizer, out_dir: Path) -> None:
        if self.method == "full":
            return super().save_artifact(model, tokenizer, out_dir)
        lookup("peft", self.method).save(model, out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / SOURCE_FILE).write_text(json.dumps(self.source.to_dict()))


def nf4_unavailable(cuda: bool) -> str | None:
    """Why 4-bit NF4 cannot be used here (None when it can)."""
    import importlib.util

    if not cuda:
        return "no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (the gpu extra)"
    return None


def quantize_nf4(model, tokenizer):
    """QLoRA's base: 4-bit NF4, double quantisation, bf16 compute (bitsandbytes on CUDA). Elsewhere the
    model is returned unchanged, and the job says so."""
    import tempfile

    why = nf4_unavailable(torch.cuda.is_available())
    if why:
        print(f"sft: quantization nf4 skipped ({why}); the adapter trains over the full-precision base", flush=True)
        return model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lathe.platform.zoo import save_pretrained

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tokenizer, tmp)
        q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, device_map={"": 0})
    for p in q.parameters():
        p.requires_grad_(False)
    return q


@torch.no_grad()
def evaluate(model, tok, rows: list[dict], max_length: int, batch_size: int = 32) -> dict:
    """Answer-token NLL, perplexity and next-token accuracy on `rows`."""
    model.eval()
    collate = sft_lib.pad_collate(tok.pad_token_id)
    enc = [sft_lib.encode_row(tok, r, max_length) for r in rows]
    nll = correct = count = 0.0
    for i in range(0, len(enc), batch_size):
        a, b, c = sft_lib.answer_accuracy(model, collate(enc[i: i + batch_size]))
        nll, correct, count = nll + a, correct + b, count + c
    mean = nll / max(count, 1)
    return {"eval_loss": mean, "eval_ppl": float(torch.tensor(mean).exp()), "eval_token_acc": correct / max(count, 1)}


@register("job", "sft")
class SFTJob(Job):
    Config = SFTConfig

    def run(self, cfg: SFTConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        train_rows, eval_rows = load_rows(cfg.data, cfg.seed)
        corpus = [sft_lib.row_text(r) for r in train_rows + eval_rows] + cfg.data.extra_corpus
        source = resolve_source(cfg.model, corpus, cfg.seed)
        if cfg.method != "full":
            lookup("peft", cfg.method)  # unknown method: clear error before Ray starts workers
        elif cfg.quantization != "none":
            from lathe.platform.errors import ConfigError

            raise ConfigError(f"quantization: {cfg.quantization} needs an adapter method (e.g. method: lora)")
        quant = cfg.quantization
        if quant == "nf4":  # said on the driver too: the workers' own message may not reach it
            import ray

            gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
            why = nf4_unavailable(bool(torch.cuda.is_available() or (gpus and cfg.ray.use_gpu is not False)))
            if why:
                print(f"sft: quantization nf4 skipped ({why}); the adapter trains over the full-precision base",
                      flush=True)
                quant = f"nf4 skipped ({why})"
        task = SFTTask(source, train_rows, cfg.data.max_length, cfg.method, cfg.adapter, cfg.quantization)
        reporter = Reporter(run, desc=f"sft[{cfg.method}]", show=show_progress, forward=forward)
        t0 = time.perf_counter()
        try:
            out = run_training(task, cfg.train, cfg.ray, run.path / "checkpoints", seed=cfg.seed,
                               on_records=reporter, artifact_dir=run.artifacts / "model")
        finally:
            reporter.close()
        wall = time.perf_counter() - t0
        # After a resume the steps since the last checkpoint are logged twice; keep the latest.
        steps = sorted({r["step"]: r for r in out.metrics if "loss" in r}.values(), key=lambda r: r["step"])
        results: dict[str, Any] = {
            "method": cfg.method, "quantization": quant, "steps": steps[-1]["step"] if steps else 0,
            "first_loss": steps[0]["loss"] if steps else None, "final_loss": steps[-1]["loss"] if steps else None,
            "tokens_per_s": steps[-1].get("tokens_per_s") if steps else None, "wall_s": wall,
            "workers": out.world_size, "artifact": str(out.artifact) if out.artifact else None,
        }
        if out.artifact and eval_rows:
            model, tok = load_artifact(out.artifact)
            results["trainable_params"] = count_parameters(model, trainable_only=True)
            results["params"] = count_parameters(model)
            results.update(evaluate(model, tok, eval_rows, cfg.data.max_length))
        write_report(run, cfg, results, steps)
        return results


def write_report(run: RunDir, cfg: SFTConfig, results: dict, steps: list[dict]) -> None:
    plots = []
    if steps:
        plots.append(plot_curves(run.path / "plots" / "loss.png",
                                 {"train loss": ([r["step"] for r in steps], [r["loss"] for r in steps])},
                                 xlabel="optimizer step", ylabel="answer-token NLL", title=f"{cfg.name}: loss"))
    table = markdown_table([{k: v for k, v in results.items() if k != "artifact"}])
    run.write_results(results)
    run.write_report(f"sft: {cfg.name}", [("Results", table), ("Artifact", f"`{results.get('artifact')}`")], plots)
