"""The one training loop: every training method plugs in by supplying a `TrainTask`.

Runs under Ray Train's `TorchTrainer`: DDP over N workers (gloo on CPU, nccl on GPU),
gradient accumulation, bf16 where the device supports it, checkpoints through
`ray.train.report` (kept by `CheckpointConfig`), resume from the storage path after a
worker failure or a re-run, optional DeepSpeed ZeRO-2/3, live metrics to the driver.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lathe.jobs.checkpoint import load_optimizer, load_tensors, save_optimizer, save_tensors
from lathe.jobs.task import TrainTask
from lathe.platform.config import RayConfig, TrainConfig


# Rank 0 sends its per-step records to the driver's sink in batches at most this often (and at
# every checkpoint, at the end and on any exit): one Ray call per step cost tiny models a large
# share of their step time. The records themselves are the same as with one push per step.
FLUSH_EVERY_S = 0.5


@dataclass
class TrainOutcome:
    metrics: list[dict]
    final: dict
    artifact: Path | None
    checkpoint: str | None
    world_size: int | None = None  # the Ray Train workers that actually ran (reported by rank 0)


# ---------------------------------------------------------------------------------------
# Pieces of the loop that do not need Ray (also used by the plain-PyTorch benchmark).


def pick_precision(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    if train.precision == "bf16":
        return torch.bfloat16
    if train.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the task left no trainable parameters")
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def warmup_steps(train: TrainConfig, per_epoch: int) -> int:
    if train.warmup_steps:
        return train.warmup_steps
    return max(1, round(train.warmup_epochs * per_epoch)) if train.warmup_epochs > 0 else 0


def make_schedule(opt: torch.optim.Optimizer, train: TrainConfig, total_steps: int, per_epoch: int = 1):
    warm = warmup_steps(train, per_epoch)

    if train.lr_schedule == "linear":  # transformers' get_linear_schedule_with_warmup
        def factor(step: int) -> float:
            if step < warm:
                return step / max(1, warm)
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    else:
        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total_steps - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to 10%

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of item indices for an epoch: a seeded shuffle, padded so every
    rank gets the same number of batches (as DistributedSampler does)."""
    order = list(range(n_items))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_rank = math.ceil(n_items / world)
    order += order[: per_rank * world - n_items]
    mine = order[rank::world]
    return [mine[i: i + batch_size] for i in range(0, len(mine), batch_size)]


def steps_per_epoch(n_items: int, train: TrainConfig, world: int) -> int:
    batches = math.ceil(math.ceil(n_items / world) / train.batch_size)
    return math.ceil(batches / train.grad_accum)


def total_steps(n_items: int, train: TrainConfig, world: int) -> int:
    return train.max_steps or train.epochs * steps_per_epoch(n_items, train, world)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------
# The Ray Train worker.


def _worker(loop_cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    task: TrainTask = loop_cfg["task"]
    train = TrainConfig.model_validate(loop_cfg["train"])
    sink = loop_cfg["sink"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Ray sets OMP_NUM_THREADS from the worker's CPU share; torch must follow it.
    torch.set_num_threads(max(1, int(loop_cfg["cpus_per_worker"])))
    torch.manual_seed(loop_cfg["seed"])

    built = task.build()
    model = built.model.to(device)
    n_items = len(built.dataset)
    if n_items == 0:
        raise RuntimeError("the training set is empty")
    total = total_steps(n_items, train, world)
    per_epoch = steps_per_epoch(n_items, train, world)
    task.on_train_start(model, total)
    amp_dtype = pick_precision(train, device)

    opt = make_optimizer(model, train)
    sched = make_schedule(opt, train, total, per_epoch)
    step, resumed_from = 0, None
    ckpt = ray.train.get_checkpoint()
    engine = None
    if train.deepspeed is not None:
        engine = _deepspeed_engine(model, opt, sched, train, amp_dtype)
        model = engine
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            state = json.loads((d / "state.json").read_text())
            if engine is not None:
                engine.load_checkpoint(str(d / "deepspeed"), tag="ds")
            else:
                task.load_trainable_state(model, load_tensors(d / "trainable.safetensors"))
                load_optimizer(opt, d)
                sched.load_state_dict(state["scheduler"])
            step = resumed_from = state["step"]
    if engine is None and world > 1:
        model = ray.train.torch.prepare_model(model)
    if rank == 0:
        sink.set_total.remote(total)
        sink.push.remote({"event": "workers", "world_size": world})
        if resumed_from:
            sink.push.remote({"event": "resumed", "step": resumed_from})

    core = model.module if hasattr(model, "module") else model
    model.train()
    t0, tokens = time.perf_counter(), 0.0
    fail_marker = Path(loop_cfg["storage"]) / ".fail_injected"
    epoch = step // per_epoch
    pending: list[dict] = []  # rank 0's records not yet sent to the sink
    flushed = t0

    def flush() -> None:
        nonlocal flushed
        if pending:
            sink.push_many.remote(list(pending))
            pending.clear()
        flushed = time.perf_counter()

    # autocast only where it casts: entering a disabled autocast per micro-batch is pure overhead
    autocast = ((lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else _nullcontext)
    try:
        while step < total:
            if hasattr(built.dataset, "set_epoch"):  # datasets that redraw per epoch (unlearning's retain rows)
                built.dataset.set_epoch(epoch)
            batches = epoch_batches(n_items, train.batch_size, epoch, loop_cfg["seed"], rank, world)
            groups = [batches[i: i + train.grad_accum] for i in range(0, len(batches), train.grad_accum)]
            for group in groups[step - epoch * per_epoch:]:
                if train.fail_at_step is not None and step + 1 == train.fail_at_step and not fail_marker.exists():
                    fail_marker.touch()
                    raise RuntimeError(f"injected failure at step {step + 1} (train.fail_at_step)")
                logs: dict[str, float] = {}
                loss_sum = 0.0
                for i, idx in enumerate(group):
                    batch = to_device(built.collate([built.dataset[j] for j in idx]), device)
                    sync = i == len(group) - 1 or engine is not None
                    ctx_sync = model.no_sync() if (not sync and hasattr(model, "no_sync")) else _nullcontext()
                    with ctx_sync, autocast():
                        loss, metrics = task.loss(model, batch)
                    if engine is not None:
                        engine.backward(loss)
                        engine.step()
                    else:
                        (loss / len(group)).backward()
                    # float64 tensors (the same sums as Python floats gave), read only when logged or
                    # checkpointed: a float() per micro-batch would wait for the device every step
                    loss_sum = loss_sum + loss.detach().double() / len(group)
                    for k, v in metrics.items():
                        v = v.detach().double() if torch.is_tensor(v) else v
                        logs[k] = logs.get(k, 0.0) + v / (1 if k == "tokens" else len(group))
                if engine is None:
                    logs.update(task.before_step(core, step + 1, opt))
                    grad_norm = (torch.nn.utils.clip_grad_norm_(core.parameters(), train.max_grad_norm)
                                 if train.max_grad_norm else None)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                else:
                    grad_norm = None
                step += 1
                logs.update(task.after_step(core, step, opt))
                tokens += logs.pop("tokens", 0.0) * world
                logged = rank == 0 and (step % train.log_every == 0 or step == total)
                checkpoint = step % train.checkpoint_every == 0 or step == total
                if logged or checkpoint:
                    loss_sum = float(loss_sum)
                if logged:
                    tokens = float(tokens)
                    elapsed = time.perf_counter() - t0
                    rec = {"step": step, "epoch": epoch, "loss": loss_sum, "lr": opt.param_groups[0]["lr"],
                           "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0, "elapsed_s": elapsed,
                           "tokens_seen": tokens, **{k: float(v) for k, v in logs.items()}}
                    if grad_norm is not None:
                        rec["grad_norm"] = float(grad_norm)
                    pending.append(rec)
                    if time.perf_counter() - flushed >= FLUSH_EVERY_S:
                        flush()
                if checkpoint:
                    flush()  # the driver has every record up to a checkpoint before it is reported
                    _report(task, core, opt, sched, engine, step, loss_sum, rank, final=step == total,
                            tokenizer=built.tokenizer)
                if step >= total:
                    break
            epoch += 1
    finally:
        flush()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _report(task, model, opt, sched, engine, step, loss, rank, final, tokenizer) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        has_files = False
        if engine is not None:
            engine.save_checkpoint(str(d / "deepspeed"), tag="ds")
            has_files = True
        if rank == 0:
            if engine is None:
                save_tensors(task.trainable_state(model), d / "trainable.safetensors")
                save_optimizer(opt, d)
            (d / "state.json").write_text(json.dumps({"step": step, "scheduler": sched.state_dict()}))
            has_files = True
        if final:
            with _gathered(model, engine):  # ZeRO-3 partitions weights; every rank joins the gather
                if rank == 0:
                    task.save_artifact(model, tokenizer, d / "artifact")
        ckpt = ray.train.Checkpoint.from_directory(tmp) if has_files else None
        ray.train.report({"step": step, "loss": loss}, checkpoint=ckpt, checkpoint_dir_name=f"step_{step:08d}")


def _gathered(model, engine):
    import contextlib

    if engine is None or engine.zero_optimization_stage() < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def _deepspeed_engine(model, opt, sched, train: TrainConfig, amp_dtype):
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    import deepspeed

    zero: dict[str, Any] = {"stage": train.deepspeed.stage}
    if train.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": amp_dtype == torch.bfloat16},
        "steps_per_print": 10**9,
    }
    if train.max_grad_norm:
        config["gradient_clipping"] = train.max_grad_norm
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config)
    return engine


# ---------------------------------------------------------------------------------------
# The driver side.


def run_training(task: TrainTask, train: TrainConfig, ray_cfg: RayConfig, storage: Path, *, seed: int = 0,
                 on_records: Callable[[list[dict], int], None] | None = None,
                 artifact_dir: Path | None = None) -> TrainOutcome:
    """Train `task` on Ray workers; return the metrics and the saved artifact's directory.

    `storage` holds Ray Train's checkpoints; running again with the same storage resumes.
    `on_records(new_records, total_steps)` is called as metrics arrive (progress bars, Tune).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from lathe.jobs.progress import MetricsSink, Poller

    use_gpu = torch.cuda.is_available() if ray_cfg.use_gpu == "auto" else ray_cfg.use_gpu
    if ray_cfg.use_gpu == "auto" and ray.is_initialized():
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    storage = Path(ray_cfg.storage_path or storage)
    if "://" not in str(storage):
        storage = storage.resolve()
        storage.mkdir(parents=True, exist_ok=True)
    # pinned to the driver's node, so the metrics survive the loss of any worker node (a soft
    # affinity let Ray place it elsewhere when the driver's node had no free CPU)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    sink = MetricsSink.options(scheduling_strategy=here).remote()
    records: list[dict] = []

    def collect(new: list[dict], total: int) -> None:
        records.extend(new)
        if on_records is not None:
            on_records(new, total)

    resources = {"CPU": ray_cfg.cpus_per_worker}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"task": task, "train": train.model_dump(), "sink": sink, "seed": seed,
                           "storage": str(storage), "cpus_per_worker": ray_cfg.cpus_per_worker},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name="train", storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures)),
    )
    with Poller(sink, collect):
        result = trainer.fit()
    ray.kill(sink)
    artifact = None
    if result.checkpoint is not None and artifact_dir is not None:
        with result.checkpoint.as_directory() as d:
            if (Path(d) / "artifact").is_dir():
                if artifact_dir.exists():
                    shutil.rmtree(artifact_dir)
                shutil.copytree(Path(d) / "artifact", artifact_dir)
                artifact = artifact_dir
    steps = [r for r in records if "loss" in r]
    final = dict(steps[-1]) if steps else dict(result.metrics or {})
    world = next((r["world_size"] for r in reversed(records) if r.get("event") == "workers"), None)
    return TrainOutcome(metrics=records, final=final, artifact=artifact,
                        checkpoint=result.checkpoint.path if result.checkpoint else None, world_size=world)
