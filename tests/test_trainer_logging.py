"""The loop's per-step bookkeeping moved off the step (records sent to the driver in batches, the
loss read only when logged or checkpointed) leaves the metrics and checkpoints as they were: every
logged record and a checkpoint's tensors equal those of a plain in-process loop doing the same steps."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_torch_thread")]

STEPS, ACCUM, LOG_EVERY, CKPT_EVERY = 12, 2, 2, 5


def _task():
    from lathe.data import qa
    from lathe.jobs.sft import SFTTask
    from lathe.platform.config import ModelConfig
    from lathe.platform.zoo import resolve_source

    rows = qa.generate(96, seed=0)
    source = resolve_source(ModelConfig(preset="tiny-1m", tokenizer_vocab=512),
                            [r["question"] + " " + r["answer"] for r in rows], seed=0)
    return SFTTask(source, rows, max_length=48, method="full", adapter={})


def _reference(task, train):
    """The same optimizer steps as a plain loop: (logged records by step, trainable tensors by step)."""
    import torch

    from lathe.jobs import trainer as T

    torch.manual_seed(0)
    built = task.build()
    model, n = built.model.train(), len(built.dataset)
    opt = T.make_optimizer(model, train)
    total, per_epoch = T.total_steps(n, train, 1), T.steps_per_epoch(n, train, 1)
    sched = T.make_schedule(opt, train, total, per_epoch)
    groups = []
    for epoch in range(total // per_epoch + 1):
        b = T.epoch_batches(n, train.batch_size, epoch, 0, 0, 1)
        groups += [b[i: i + train.grad_accum] for i in range(0, len(b), train.grad_accum)]
    records, states, tokens = {}, {}, 0.0
    for step in range(1, total + 1):
        loss_sum = 0.0
        for idx in groups[step - 1]:
            loss, metrics = task.loss(model, built.collate([built.dataset[j] for j in idx]))
            (loss / len(groups[step - 1])).backward()
            loss_sum += float(loss.detach()) / len(groups[step - 1])
            tokens += float(metrics["tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        records[step] = {"loss": loss_sum, "tokens_seen": tokens, "grad_norm": float(grad_norm),
                         "lr": opt.param_groups[0]["lr"]}
        states[step] = {k: v.detach().clone() for k, v in task.trainable_state(model).items()}
    return records, states


def test_records_and_checkpoints_equal_a_plain_loop(ray_local, tmp_path):
    import torch

    from lathe.jobs.checkpoint import load_tensors
    from lathe.jobs.trainer import run_training
    from lathe.platform.config import RayConfig, TrainConfig

    task = _task()
    train = TrainConfig(max_steps=STEPS, batch_size=4, grad_accum=ACCUM, lr=3e-3, warmup_steps=2,
                        log_every=LOG_EVERY, checkpoint_every=CKPT_EVERY, num_to_keep=10, precision="fp32")
    out = run_training(task, train, RayConfig(num_workers=1, cpus_per_worker=1, use_gpu=False), tmp_path / "s")
    ref, states = _reference(task, train)

    steps = [r for r in out.metrics if "loss" in r]
    # every logged step arrives exactly once and in order, the last one included (the final flush)
    assert [r["step"] for r in steps] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    for r in steps:
        want = ref[r["step"]]
        assert r["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-7), r["step"]
        assert r["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), r["step"]
        assert r["tokens_seen"] == want["tokens_seen"] and r["lr"] == pytest.approx(want["lr"], rel=1e-9)
    assert out.final["step"] == STEPS and out.world_size == 1

    ckpts = sorted(p.name for p in (tmp_path / "s" / "train").glob("step_*"))
    assert ckpts == ["step_00000005", "step_00000010", "step_00000012"]
    for step in (5, 12):
        saved = load_tensors(tmp_path / "s" / "train" / f"step_{step:08d}" / "trainable.safetensors")
        assert set(saved) == set(states[step])
        for k, v in states[step].items():
            torch.testing.assert_close(saved[k], v, rtol=1e-5, atol=1e-6, msg=f"step {step}: {k}")
    # the reference moved: equal tensors at step 12 are not the untouched initial weights
    assert any(not torch.equal(states[5][k], states[12][k]) for k in states[12])
