"""`method: meft` in the sft job: the one training loop, checkpoints with the full host tables and
their Adam state, and resume with the same next-step losses."""

from __future__ import annotations

import json

import pytest
import torch

from lathe.platform.config import TrainConfig, load_config
from lathe.platform.runstore import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADAPTER = {"engine": "offload", "num_neurons": 64, "topk": 4, "num_experts": 8, "n_probe": 2,
           "on_gpu_size": 24, "train_keys_offload": True}


def _task(tiny_tokenizer):
    from lathe.data import qa
    from lathe.jobs.sft import SFTTask
    from lathe.platform.zoo import ModelSource

    src = ModelSource(preset="tiny-1m", tokenizer_json=tiny_tokenizer.backend_tokenizer.to_str())
    return SFTTask(src, qa.generate(16, seed=0), 32, "meft", ADAPTER)


def _steps(task, built, opt, sched, first, last):
    """The loop's step body (trainer._worker), on fixed batches; returns the losses."""
    losses = []
    for step in range(first, last + 1):
        rows = [built.dataset[(4 * step + i) % len(built.dataset)] for i in range(4)]
        loss, _ = task.loss(built.model, built.collate(rows))
        loss.backward()
        losses.append(float(loss.detach()))
        task.before_step(built.model, step, opt)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        task.after_step(built.model, step, opt)
    return losses


def test_resume_gives_same_next_step_losses(tiny_tokenizer, tmp_path):
    from lathe.jobs.checkpoint import load_optimizer, load_tensors, save_optimizer, save_tensors
    from lathe.jobs.trainer import make_optimizer, make_schedule

    train = TrainConfig(lr=3e-2, warmup_steps=1)
    task = _task(tiny_tokenizer)

    def fresh():
        torch.manual_seed(0)
        built = task.build()
        opt = make_optimizer(built.model, train)
        return built, opt, make_schedule(opt, train, 10)

    built, opt, sched = fresh()
    straight = _steps(task, built, opt, sched, 1, 4)
    assert straight[-1] < straight[0]

    built, opt, sched = fresh()
    _steps(task, built, opt, sched, 1, 2)
    state = task.trainable_state(built.model)
    assert {"meft_tables.1.values.exp_avg", "meft_tables.1.values.step", "meft_tables.1.keys.exp_avg_sq"} <= set(state)
    save_tensors(state, tmp_path / "trainable.safetensors")
    save_optimizer(opt, tmp_path)
    sched_state = sched.state_dict()

    built, opt, sched = fresh()
    task.load_trainable_state(built.model, load_tensors(tmp_path / "trainable.safetensors"))
    load_optimizer(opt, tmp_path)
    sched.load_state_dict(sched_state)
    resumed = _steps(task, built, opt, sched, 3, 4)
    assert resumed == straight[2:]  # step 4 also needs the restored moments and per-row counters


def test_sft_job_meft_offload_through_the_loop(ray_local, tmp_path):
    from lathe.platform.registry import lookup

    cfg = load_config("configs/sft/meft_offload.yaml", [
        "ray.num_workers=1", "data.synthetic_size=64", "train.batch_size=8", "train.max_steps=6",
        "train.checkpoint_every=3", "train.fail_at_step=5", "train.max_failures=1", "train.lr=3e-2",
        "adapter.num_neurons=128", "adapter.num_experts=8", "adapter.topk=8", "adapter.on_gpu_size=64",
        f"output_root={tmp_path}"])
    run = RunDir.create(cfg)
    res = lookup("job", "sft")().run(cfg, run, show_progress=False)
    assert res["final_loss"] < res["first_loss"]
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resumed", "step": 3} in rows
    step4 = [r["loss"] for r in rows if r.get("step") == 4 and "loss" in r]
    assert len(step4) == 2 and step4[0] == step4[1]  # before the failure, and after resuming at 3
    assert all(r["meft_bytes_down"] > 0 and r["meft_union_mean"] <= 64 for r in rows if "meft_bytes_down" in r)
    from safetensors.torch import load_file

    art = run.artifacts / "model"
    meta = json.loads((art / "adapter_config.json").read_text())
    assert meta["lathe_method"] == "meft" and meta["engine"] == "offload"
    tensors = load_file(str(art / "adapter_model.safetensors"))
    values = [k for k in tensors if k.endswith(".values")]
    assert len(values) == 4 and all(tensors[k].shape == (128, 128) for k in values)
    assert any(tensors[k].abs().sum() > 0 for k in values)  # trained (V starts at zero)
    ckpt = sorted(run.path.glob("checkpoints/**/trainable.safetensors"))[-1]
    assert "meft_tables.0.values.exp_avg" in load_file(str(ckpt))
    assert "eval_loss" in res
