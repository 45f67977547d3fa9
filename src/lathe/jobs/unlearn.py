"""`unlearn` job: TOFU unlearning with a base method (GA, GradDiff, KL, NPO) and the UIPE α sweep.

Pipeline:
  1. TOFU data: the published files under `data.root`, or the seeded synthetic set.
  2. θ_ini (target: SFT on `full`) and θ_ret (the retain split), plus the real-author/world-fact
     answers only for the synthetic tiny-model default (`uses_general_knowledge`), with the sft job's machinery (`SFTTask` on `run_training`), cached under
     `models.cache_dir/<role>-<hash of data, model and recipe>` and reused.
  3. The base unlearner as a `TrainTask` on the one training loop (Ray Train): each item is
     a forget row plus a uniformly drawn retain row; the frozen reference (θ_ini) for NPO/KL
     is built on the worker. One checkpoint per epoch (UIPE and per-epoch eval need them).
  4. Evaluation as parallel Ray tasks: θ_ini, θ_ret (its forget-set truth ratios become the
     reusable retain log), θ_un after each epoch, and θ(α) = θ_un + α(θ_un − θ_ini) at every α.
  5. Table (FQ, MU, forget ROUGE-L, forget truth ratio per row), FQ-vs-MU plot with the α path,
     per-sample logs and TOFU-style log files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from lathe.data import tofu as tofu_data
from lathe.eval import tofu as tofu_eval
from lathe.jobs.base import Job, Reporter
from lathe.jobs.checkpoint import load_tensors
from lathe.jobs.sft import SFTTask, load_artifact
from lathe.jobs.task import Built, TrainTask
from lathe.jobs.trainer import run_training, steps_per_epoch
from lathe.methods import sft as sft_lib
from lathe.methods import unlearning
from lathe.platform.config import JobConfig, Strict, TrainConfig
from lathe.platform.errors import ConfigError, LatheError
from lathe.platform.registry import register
from lathe.platform.runstore import RunDir, markdown_table, plot_curves
from lathe.platform.zoo import resolve_source

DEFAULT_ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0]


class TofuDataConfig(Strict):
    root: str | None = Field(None, description="directory of published TOFU files; default: synthetic")
    split: Literal["forget01", "forget05", "forget10"] = "forget10"
    n_authors: int = Field(200, ge=2)
    qa_per_author: int = Field(20, ge=1, le=20)
    n_pert: int = Field(5, ge=1)
    n_pert_utility: int = Field(3, ge=1)
    n_real_authors: int = Field(100, ge=1)
    n_world_facts: int = Field(117, ge=1)
    max_length: int = Field(512, ge=8, description="training max length (eval uses eval.max_length)")


class ModelsConfig(Strict):
    """How θ_ini and θ_ret are made (the sft job's recipe) and where they are cached."""

    train: TrainConfig = TrainConfig(epochs=5, lr=1e-5, weight_decay=0.01, batch_size=16)
    cache_dir: str = "runs/cache"
    target_path: str | None = Field(None, description="an existing θ_ini directory (skips its fine-tune)")
    retain_path: str | None = Field(None, description="an existing θ_ret directory")
    retain_log: str | None = Field(None, description="retain log JSON (lathe's or a TOFU eval_log_forget.json)")


class UnlearnSection(Strict):
    method: str = Field("npo", description="registered unlearning_loss: ga, graddiff, kl, npo")
    loss: dict[str, Any] = Field(default_factory=dict, description="the loss's own options (beta, gamma, ...)")
    train: TrainConfig = TrainConfig(epochs=10, lr=1e-5, weight_decay=0.01, batch_size=8, grad_accum=4,
                                     checkpoint_every=10_000, warmup_epochs=1.0, lr_schedule="linear")


class UipeConfig(Strict):
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    mu_floor: float | None = Field(None, ge=0, description="absolute MU floor for choosing α*")
    mu_floor_frac: float = Field(0.95, ge=0, le=1, description="default floor: this × MU(θ_un)")
    checkpoint_rule: Literal["final", "utility_floor"] = "final"

    @field_validator("alphas")
    @classmethod
    def _nonempty(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one α")
        return sorted(set(float(a) for a in v))


class UnlearnConfig(JobConfig):
    job: Literal["unlearn"] = "unlearn"
    data: TofuDataConfig = TofuDataConfig()
    models: ModelsConfig = ModelsConfig()
    unlearn: UnlearnSection = UnlearnSection()
    uipe: UipeConfig = UipeConfig()
    eval: tofu_eval.TofuEvalConfig = tofu_eval.TofuEvalConfig()
    eval_epochs: bool = Field(True, description="evaluate θ_un after every epoch")
    eval_cpus: float = Field(1.0, gt=0, description="CPUs per evaluation task")
    eval_gpus: float = Field(0.0, ge=0, description="GPUs per evaluation task")


# ---------------------------------------------------------------------------------------
# Data and cached models


def load_dataset(d: TofuDataConfig, seed: int) -> tofu_data.TofuDataset:
    return tofu_data.load_or_generate(d.root, seed=seed, n_authors=d.n_authors, qa_per_author=d.qa_per_author,
                                      n_pert=d.n_pert, n_pert_utility=d.n_pert_utility,
                                      n_real_authors=d.n_real_authors, n_world_facts=d.n_world_facts)


def corpus_of(ds: tofu_data.TofuDataset) -> list[str]:
    texts = []
    for rows in ds.configs.values():
        for r in rows:
            texts += [r["question"], r["answer"], r.get("paraphrased_answer", "")] + list(r.get("perturbed_answer", []))
    return [t for t in texts if t]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _model_key(cfg: UnlearnConfig, ds: tofu_data.TofuDataset) -> dict:
    return {"model": cfg.model.model_dump(mode="json"), "data": digest(ds.configs), "seed": cfg.seed,
            "recipe": cfg.models.train.model_dump(mode="json"), "max_length": cfg.data.max_length,
            "encoding": {"v": 2, "qa_template": cfg.eval.qa_template,
                         "append_eos_to_labels": cfg.eval.append_eos_to_labels}}


def train_encoding(cfg: UnlearnConfig) -> dict:
    """The TOFU encoding options used for every training step (θ_ini, θ_ret, unlearning): the
    evaluation's template and EOS rule, with the training max length."""
    return cfg.eval.model_copy(update={"max_length": cfg.data.max_length}).model_dump()


def uses_general_knowledge(cfg: UnlearnConfig) -> bool:
    """θ_ini / θ_ret also learn the real-author and world-fact answers only in the synthetic
    tiny-model default (a random model otherwise has no "general knowledge" for MU to measure).
    With published data (`data.root`) or a pretrained model they see `full` / `retainXX` only."""
    from lathe.platform.zoo import PRESETS

    pretrained = cfg.model.path is not None or cfg.model.preset not in PRESETS
    return cfg.data.root is None and not pretrained


def sft_rows(cfg: UnlearnConfig, ds: tofu_data.TofuDataset, role: str) -> list[dict]:
    """Training rows of θ_ini (`role="target"`) or θ_ret (`role="retain"`)."""
    rows = ds.get("full") if role == "target" else ds.retain(cfg.data.split)
    return rows + (ds.general_knowledge() if uses_general_knowledge(cfg) else [])


def ensure_sft(role: str, rows: list[dict], cfg: UnlearnConfig, ds: tofu_data.TofuDataset, run: RunDir,
               source_cache: dict, show: bool) -> Path:
    """The artifact of an sft run on `rows`, trained once per (data, model, recipe) and cached."""
    key = digest({**_model_key(cfg, ds), "role": role, "rows": digest(rows)})
    home = Path(cfg.models.cache_dir).resolve() / f"{role}-{key}"
    model_dir = home / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    if "source" not in source_cache:  # one tokenizer for both models: the same ModelSource
        source_cache["source"] = resolve_source(cfg.model, corpus_of(ds), cfg.seed)
    tmp = home.with_name(home.name + f".tmp{time.time_ns()}")
    task = TofuSFTTask(source_cache["source"], rows, cfg.data.max_length, "full", {})
    task.encoding = train_encoding(cfg)
    reporter = Reporter(run, desc=f"sft[{role}]", show=show)
    try:
        out = run_training(task, cfg.models.train, cfg.ray, tmp / "checkpoints", seed=cfg.seed,
                           on_records=reporter, artifact_dir=tmp / "model")
    finally:
        reporter.close()
    if out.artifact is None:
        raise LatheError(f"sft[{role}] produced no artifact")
    shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
    (tmp / "meta.json").write_text(json.dumps({"role": role, "rows": len(rows), "final": out.final}, default=str))
    if home.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(home)
    return model_dir


def fingerprint(path: str | Path) -> str:
    return unlearning.checkpoint_fingerprint(path)


def unlearned_dir(run: RunDir, target: Path, epoch: int, last_epoch: int, state: Path) -> Path:
    """θ_un of `epoch` as an HF directory: the run's final artifact, or one rebuilt from the
    epoch's checkpoint tensors."""
    if epoch == last_epoch and (run.artifacts / "unlearned" / "config.json").is_file():
        return run.artifacts / "unlearned"
    from lathe.platform.zoo import save_pretrained

    out = run.artifacts / f"unlearned_epoch{epoch}"
    if not (out / "config.json").is_file():
        model, tok = build_eval_model({"model_dir": str(target), "state": str(state)})
        save_pretrained(model, tok, out)
    return out


# ---------------------------------------------------------------------------------------
# The unlearning task (runs on the Ray Train workers)


class PairDataset:
    """Item i: forget row i and a retain row drawn uniformly from D_r, afresh every epoch (the
    training loop calls `set_epoch`), as TOFU's and open-unlearning's datasets draw one per
    access. The forget set defines the epoch; every forget batch comes with a retain batch of
    the same size. Draws are seeded by (seed, epoch), so a resumed run sees the same rows."""

    def __init__(self, forget: list[dict], retain: list[dict], seed: int):
        self.forget, self.retain, self.seed = forget, retain, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + 7919 * epoch + 1)
        self.pick = [rng.randrange(len(self.retain)) for _ in self.forget]

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        return {"forget": self.forget[i], "retain": self.retain[self.pick[i]]}


class TofuSFTTask(SFTTask):
    """The sft job's task, encoding rows as the TOFU evaluator does (`train_encoding`)."""

    encoding: dict | None = None

    def build(self) -> Built:
        model, tok = self.source.load()
        enc_cfg = tofu_eval.TofuEvalConfig.model_validate(self.encoding or {"max_length": self.max_length})
        encoded = [tofu_eval.encode(tok, r["question"], r["answer"], enc_cfg) for r in self.rows]
        return Built(model, tok, encoded, sft_lib.pad_collate(tok.pad_token_id))


class UnlearnTask(TrainTask):
    def __init__(self, target: str, forget: list[dict], retain: list[dict], max_length: int, method: str,
                 options: dict[str, Any], seed: int, encoding: dict | None = None):
        self.target, self.forget, self.retain = target, forget, retain
        self.max_length, self.method, self.options, self.seed = max_length, method, options, seed
        self.encoding = encoding or {"max_length": max_length}

    def build(self) -> Built:
        model, tok = load_artifact(self.target)
        self.loss_fn = unlearning.build_loss(self.method, self.options)
        self.ref = None
        if self.loss_fn.needs_reference:
            self.ref = copy.deepcopy(model).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        enc_cfg = tofu_eval.TofuEvalConfig.model_validate(self.encoding)
        enc = lambda rows: [tofu_eval.encode(tok, r["question"], r["answer"], enc_cfg) for r in rows]  # noqa
        data = PairDataset(enc(self.forget), enc(self.retain), self.seed)
        return Built(model, tok, data, unlearning.pair_collate(tok.pad_token_id))

    def loss(self, model, batch):
        if self.ref is not None:
            dev = batch["forget_input_ids"].device
            if next(self.ref.parameters()).device != dev:
                self.ref.to(dev)
        loss, metrics = self.loss_fn(model, self.ref, batch)
        metrics["tokens"] = batch["forget_attention_mask"].sum() + batch["retain_attention_mask"].sum()
        return loss, metrics


# ---------------------------------------------------------------------------------------
# Evaluation tasks


def build_eval_model(spec: dict):
    """(model, tokenizer) for one evaluation: a directory, optionally with a trainable state
    (θ_un of an epoch) and an α (UIPE over θ_ini = the directory)."""
    model, tok = load_artifact(spec["model_dir"])
    if spec.get("state"):
        un = copy.deepcopy(model) if spec.get("alpha") is not None else model
        params = dict(un.named_parameters())
        with torch.no_grad():
            for name, t in load_tensors(Path(spec["state"])).items():
                if name not in params:
                    raise LatheError(f"{spec['state']}: unknown tensor {name!r}")
                params[name].copy_(t)
        if spec.get("alpha") is not None:
            unlearning.extrapolate_model(model, un, spec["alpha"])
        model = un
    return model.eval(), tok


def run_eval(spec: dict, sets: dict, eval_cfg: dict, split: str, threads: int = 1) -> dict:
    torch.set_num_threads(max(1, threads))
    cfg = tofu_eval.TofuEvalConfig.model_validate(eval_cfg)
    model, tok = build_eval_model(spec)
    if torch.cuda.is_available():
        model = model.cuda()
    t0 = time.perf_counter()
    res = tofu_eval.evaluate_model(model, tok, sets, cfg, split)
    res["eval_s"] = time.perf_counter() - t0
    res["spec"] = spec
    return res


def eval_all(specs: list[dict], sets: dict, cfg: UnlearnConfig, show: bool) -> list[dict]:
    """Every evaluation as its own Ray task, in parallel; results in the order of `specs`."""
    import ray

    # "DEFAULT" scheduling: inside a Tune trial the tasks are scheduled on the cluster rather
    # than squeezed into the trial's placement group (as Ray Train's workers are).
    remote = ray.remote(num_cpus=cfg.eval_cpus, num_gpus=cfg.eval_gpus)(run_eval).options(
        scheduling_strategy="DEFAULT")
    sets_ref = ray.put(sets)
    threads = max(1, int(cfg.eval_cpus))
    pending = {remote.remote(s, sets_ref, cfg.eval.model_dump(), cfg.data.split, threads): i
               for i, s in enumerate(specs)}
    out: list[dict | None] = [None] * len(specs)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc="tofu eval", unit="model", dynamic_ncols=True, file=sys.stderr)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            out[pending.pop(ref)] = ray.get(ref)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out  # type: ignore[return-value]


def epoch_states(storage: Path, per_epoch: int, dest: Path) -> dict[int, Path]:
    """Copy each epoch-end checkpoint's trainable tensors out of Ray Train's storage."""
    found: dict[int, Path] = {}
    dest.mkdir(parents=True, exist_ok=True)
    for f in storage.rglob("trainable.safetensors"):
        m = re.search(r"step_(\d+)", str(f.parent))
        if not m:
            continue
        step = int(m.group(1))
        if step % per_epoch == 0:
            epoch = step // per_epoch
            target = dest / f"epoch_{epoch:03d}.safetensors"
            shutil.copyfile(f, target)
            found[epoch] = target
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------
# The job


def pick_alpha(rows: list[dict], floor: float | None) -> dict | None:
    """α* = argmax FQ subject to MU ≥ floor; ties to the smaller α."""
    ok = [r for r in rows if r.get("forget_quality") is not None
          and (floor is None or (r.get("model_utility") or 0) >= floor)]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["forget_quality"], -r["alpha"]))


def row_of(label: str, res: dict, **extra) -> dict:
    s = res["summary"]
    return {"model": label, **extra, "forget_quality": s["forget_quality"], "model_utility": s["model_utility"],
            "forget_rougeL": s["forget_rougeL"], "forget_truth_ratio": s["forget_truth_ratio"],
            "forget_prob": s["forget_prob"],
            **{k: s.get(k) for k in ("retain_prob", "retain_rougeL", "retain_truth_ratio", "real_authors_prob",
                                     "real_authors_rougeL", "real_authors_truth_ratio", "world_facts_prob",
                                     "world_facts_rougeL", "world_facts_truth_ratio")}}



@register("job", "unlearn")
class UnlearnJob(Job):
    Config = UnlearnConfig

    def run(self, cfg: UnlearnConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        t_start = time.perf_counter()
        split = cfg.data.split
        unlearning.build_loss(cfg.unlearn.method, cfg.unlearn.loss, "unlearn.loss")  # clear error before Ray
        ds = load_dataset(cfg.data, cfg.seed)
        forget_rows, retain_rows = ds.forget(split), ds.retain(split)
        sets = {f"{split}_perturbed": ds.get(f"{split}_perturbed"), **{k: ds.get(k) for k in tofu_eval.UTILITY_SETS}}

        # θ_ini and θ_ret: the sft machinery, cached.
        t0 = time.perf_counter()
        src: dict = {}
        target = Path(cfg.models.target_path) if cfg.models.target_path else \
            ensure_sft("target", sft_rows(cfg, ds, "target"), cfg, ds, run, src, show_progress)
        retain_dir = Path(cfg.models.retain_path) if cfg.models.retain_path else \
            ensure_sft(f"retain-{split}", sft_rows(cfg, ds, "retain"), cfg, ds, run, src, show_progress)
        models_s = time.perf_counter() - t0

        # The base unlearner on the Ray Train loop, one checkpoint per epoch.
        world = cfg.ray.num_workers
        per_epoch = steps_per_epoch(len(forget_rows), cfg.unlearn.train, world)
        utrain = cfg.unlearn.train.model_copy(update={
            "checkpoint_every": per_epoch, "num_to_keep": max(cfg.unlearn.train.num_to_keep, cfg.unlearn.train.epochs + 1)})
        task = UnlearnTask(str(target), forget_rows, retain_rows, cfg.data.max_length, cfg.unlearn.method,
                           cfg.unlearn.loss, cfg.seed, train_encoding(cfg))
        reporter = Reporter(run, desc=f"unlearn[{cfg.unlearn.method}]", show=show_progress, forward=forward)
        t0 = time.perf_counter()
        try:
            out = run_training(task, utrain, cfg.ray, run.path / "checkpoints", seed=cfg.seed,
                               on_records=reporter, artifact_dir=run.artifacts / "unlearned")
        finally:
            reporter.close()
        train_s = time.perf_counter() - t0
        epochs = epoch_states(run.path / "checkpoints", per_epoch, run.artifacts / "epochs")
        if not epochs:
            raise LatheError(f"{run.path / 'checkpoints'}: no per-epoch checkpoints found after unlearning")
        last_epoch = max(epochs)

        # Evaluation: cached θ_ini / θ_ret results, parallel Ray tasks for the rest.
        eval_key = digest({"eval": cfg.eval.model_dump(mode="json"), "split": split, "sets": digest(sets),
                           "encoding": 2})  # 2: TOFU joint tokenisation (issue 17)
        ini_cache = target.parent / f"eval-{eval_key}.json"
        ret_cache = retain_dir.parent / f"eval-{eval_key}.json"
        specs: list[dict] = []
        if not ini_cache.is_file():
            specs.append({"label": "target", "model_dir": str(target)})
        if not ret_cache.is_file():
            specs.append({"label": "retain", "model_dir": str(retain_dir)})
        rule = cfg.uipe.checkpoint_rule
        if cfg.eval_epochs or rule == "utility_floor":
            specs += [{"label": f"epoch{e}", "model_dir": str(target), "state": str(p), "epoch": e}
                      for e, p in epochs.items() if e != last_epoch or rule == "utility_floor"]

        def alpha_specs(epoch: int) -> list[dict]:
            out_specs = [{"label": f"uipe a={a:g}", "model_dir": str(target), "state": str(epochs[epoch]),
                          "alpha": a, "epoch": epoch} for a in cfg.uipe.alphas]
            if 0.0 not in cfg.uipe.alphas and rule == "final":
                out_specs.append({"label": f"epoch{epoch}", "model_dir": str(target), "state": str(epochs[epoch]),
                                  "epoch": epoch})
            return out_specs

        t0 = time.perf_counter()
        base_epoch = last_epoch
        if rule == "final":
            specs += alpha_specs(last_epoch)
            evals = eval_all(specs, sets, cfg, show_progress)
        else:  # utility_floor: evaluate the epochs first, then extrapolate from the chosen one
            evals = eval_all(specs, sets, cfg, show_progress)
            ep = {e["spec"]["epoch"]: e["summary"] for e in evals if e["spec"]["label"].startswith("epoch")}
            mu_last = ep[last_epoch]["model_utility"]
            floor0 = cfg.uipe.mu_floor if cfg.uipe.mu_floor is not None else \
                (cfg.uipe.mu_floor_frac * mu_last if mu_last is not None else None)
            ok = [e for e, sm in ep.items() if floor0 is None or (sm["model_utility"] or 0) >= floor0] or [last_epoch]
            base_epoch = min(ok, key=lambda e: (ep[e]["forget_prob"], e))
            more = alpha_specs(base_epoch)
            evals += eval_all(more, sets, cfg, show_progress)
            specs += more
        eval_s = time.perf_counter() - t0
        by_label = {e["spec"]["label"]: e for e in evals}
        if "target" in by_label:
            ini_cache.write_text(json.dumps(by_label["target"]))
        if "retain" in by_label:
            ret_cache.write_text(json.dumps(by_label["retain"]))
        by_label["target"] = json.loads(ini_cache.read_text())
        by_label["retain"] = json.loads(ret_cache.read_text())

        # The retain log (reference for FQ): given, or written from θ_ret's evaluation.
        h = tofu_eval.eval_config_hash(cfg.eval)
        if cfg.models.retain_log:
            rl_path = Path(cfg.models.retain_log)
            try:
                ref_log = json.loads(rl_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"models.retain_log: cannot read {rl_path} ({e})") from None
            if "truth_ratio" not in ref_log:
                ref_log = tofu_eval.import_tofu_log(rl_path, split)
        else:
            ref_log = tofu_eval.retain_log(by_label["retain"], split, fingerprint(retain_dir), cfg.eval)
            rl_path = retain_dir.parent / f"retain_log-{split}-{h}.json"
            rl_path.write_text(json.dumps(ref_log, indent=1))
        (run.artifacts / "retain_log.json").write_text(json.dumps(ref_log, indent=1))

        rows: list[dict] = []
        for label, res in by_label.items():
            ratios = {lg["id"]: lg["truth_ratio"] for lg in res["sets"]["forget"]["rows"]}
            res["summary"]["forget_quality"] = tofu_eval.forget_quality(ratios, ref_log, h)
            d = run.artifacts / "eval" / re.sub(r"[^A-Za-z0-9_.=-]", "_", label)
            d.mkdir(parents=True, exist_ok=True)
            (d / "per_sample.json").write_text(json.dumps(res["sets"], indent=1))
            (d / "summary.json").write_text(json.dumps(res["summary"], indent=1))
            tofu_eval.write_tofu_logs(res, d)
        base_rows = [row_of("target (θ_ini)", by_label["target"], epoch=None, alpha=None),
                     row_of("retain (θ_ret)", by_label["retain"], epoch=None, alpha=None)]
        epoch_rows = [row_of(f"{cfg.unlearn.method} epoch {s['epoch']}", by_label[s["label"]], epoch=s["epoch"],
                             alpha=None) for s in specs if s["label"].startswith("epoch")]
        alpha_rows = [row_of(f"{cfg.unlearn.method}+UIPE", by_label[s["label"]], epoch=s["epoch"], alpha=s["alpha"])
                      for s in specs if "alpha" in s]
        rows = base_rows + sorted(epoch_rows, key=lambda r: r["epoch"]) + alpha_rows
        un_row = next((r for r in alpha_rows if r["alpha"] == 0.0), None) or \
            next(r for r in epoch_rows if r["epoch"] == base_epoch)
        mu_un = un_row["model_utility"]
        floor = cfg.uipe.mu_floor if cfg.uipe.mu_floor is not None else \
            (cfg.uipe.mu_floor_frac * mu_un if mu_un is not None else None)
        best = pick_alpha(alpha_rows, floor)

        # θ(α*) as a normal HF checkpoint with α and the fingerprints of θ_ini and θ_un.
        uipe_meta = None
        if best is not None:
            un_dir = unlearned_dir(run, target, base_epoch, last_epoch, epochs[base_epoch])
            uipe_meta = unlearning.write_checkpoint(target, un_dir, best["alpha"], run.artifacts / "uipe",
                                                    cfg.unlearn.method)
        steps = [r for r in out.metrics if "loss" in r]
        results: dict[str, Any] = {
            "method": cfg.unlearn.method, "split": split, "epochs": last_epoch, "uipe_epoch": base_epoch,
            "steps": steps[-1]["step"] if steps else 0,
            "fq_target": base_rows[0]["forget_quality"], "mu_target": base_rows[0]["model_utility"],
            "forget_rougeL_target": base_rows[0]["forget_rougeL"],
            "fq_retain": base_rows[1]["forget_quality"], "mu_retain": base_rows[1]["model_utility"],
            "fq_unlearned": un_row["forget_quality"], "mu_unlearned": mu_un,
            "forget_rougeL_unlearned": un_row["forget_rougeL"],
            "mu_floor": floor, "best_alpha": best["alpha"] if best else None,
            "best_fq": best["forget_quality"] if best else None, "best_mu": best["model_utility"] if best else None,
            "log10_best_fq": math.log10(max(best["forget_quality"], 1e-300)) if best and
            best["forget_quality"] is not None else None,
            # what `lathe tune` maximises: FQ of α* under the MU floor, 0 when no α qualifies
            "score": best["forget_quality"] if best and best["forget_quality"] is not None else 0.0,
            "models_s": models_s, "train_s": train_s, "eval_s": eval_s, "wall_s": time.perf_counter() - t_start,
            "target": str(target), "retain": str(retain_dir), "retain_log": str(rl_path), "rows": rows,
            "uipe_checkpoint": str(run.artifacts / "uipe") if uipe_meta else None, "uipe_meta": uipe_meta,
        }
        write_report(run, cfg, results, rows, steps)
        return results


def _log10(x):
    return math.log10(max(x, 1e-300)) if x is not None else None


def write_report(run: RunDir, cfg: UnlearnConfig, results: dict, rows: list[dict], steps: list[dict]) -> None:
    plots = []
    alpha_rows = [r for r in rows if r["alpha"] is not None and r["forget_quality"] is not None]
    if alpha_rows:
        series = {f"{cfg.unlearn.method} α path ({alpha_rows[0]['alpha']:g}→{alpha_rows[-1]['alpha']:g})":
                  ([r["model_utility"] or 0 for r in alpha_rows], [_log10(r["forget_quality"]) for r in alpha_rows])}
        for r in rows[:2]:
            if r["forget_quality"] is not None:
                series[r["model"]] = ([r["model_utility"] or 0], [_log10(r["forget_quality"])])
        plots.append(plot_curves(run.path / "plots" / "fq_vs_mu.png", series, xlabel="model utility",
                                 ylabel="log10 forget quality", title=f"{cfg.name}: FQ vs MU"))
        plots.append(plot_curves(run.path / "plots" / "alpha.png",
                                 {"log10 FQ": ([r["alpha"] for r in alpha_rows],
                                               [_log10(r["forget_quality"]) for r in alpha_rows]),
                                  "MU": ([r["alpha"] for r in alpha_rows],
                                         [r["model_utility"] or 0 for r in alpha_rows])},
                                 xlabel="α", ylabel="value", title=f"{cfg.name}: UIPE sweep"))
    if steps:
        series = {"loss": ([r["step"] for r in steps], [r["loss"] for r in steps])}
        if "forget_loss" in steps[0]:
            series["forget NLL"] = ([r["step"] for r in steps], [r["forget_loss"] for r in steps])
        plots.append(plot_curves(run.path / "plots" / "loss.png", series, xlabel="optimizer step",
                                 ylabel="loss", title=f"{cfg.name}: unlearning loss"))
    cols = ["model", "epoch", "alpha", "forget_quality", "model_utility", "forget_rougeL", "forget_truth_ratio",
            "forget_prob"]
    summary = {k: v for k, v in results.items() if k != "rows" and not isinstance(v, (list, dict))}
    run.write_results(results)
    run.write_report(f"unlearn: {cfg.name}", [
        ("Summary", markdown_table([{k: v for k, v in summary.items() if k not in ("target", "retain", "retain_log")}])),
        ("FQ, MU and forget metrics per model", markdown_table(rows, cols)),
        ("MU components", markdown_table(rows, ["model", "alpha"] + [k for k in rows[0] if k not in cols])),
        ("Models", f"θ_ini `{results['target']}`, θ_ret `{results['retain']}`, retain log `{results['retain_log']}`, "
                   f"θ(α*) `{results['uipe_checkpoint']}`"),
    ], plots)
