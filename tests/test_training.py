"""The one training loop on real Ray: DDP on 2 CPU workers, resume after an injected failure."""

from __future__ import annotations

import json

import pytest

from lathe.jobs.sft import SFTJob
from lathe.platform.config import validate
from lathe.platform.runstore import RunDir

pytestmark = pytest.mark.ray


def _cfg(tmp_path, **train):
    data = {"job": "sft", "name": "t", "output_root": str(tmp_path),
            "model": {"preset": "tiny-1m", "tokenizer_vocab": 512},
            "data": {"synthetic_size": 128, "max_length": 48, "eval_fraction": 0.1},
            "train": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 2, **train},
            "ray": {"num_workers": 2}}
    return validate(data, "test")


def _ddp_replica(cfg, steps: int) -> list[float]:
    """Rank 0's logged losses, recomputed in this process: each rank's own batches (the loop's
    sharding), gradients averaged over both ranks as DDP's all-reduce does, then one AdamW step."""
    import torch

    from lathe.jobs import trainer as T
    from lathe.jobs.sft import SFTTask, load_rows
    from lathe.platform.zoo import resolve_source

    train_rows, eval_rows = load_rows(cfg.data, cfg.seed)
    corpus = [r["question"] + " " + r["answer"] for r in train_rows + eval_rows]
    task = SFTTask(resolve_source(cfg.model, corpus, cfg.seed), train_rows, cfg.data.max_length, "full", {})
    torch.manual_seed(cfg.seed)
    built = task.build()
    model, n = built.model.train(), len(built.dataset)
    opt = T.make_optimizer(model, cfg.train)
    sched = T.make_schedule(opt, cfg.train, T.total_steps(n, cfg.train, 2))
    shards = [T.epoch_batches(n, cfg.train.batch_size, 0, cfg.seed, rank, 2) for rank in (0, 1)]
    logged = []
    for step in range(steps):
        grads = []
        for rank in (0, 1):
            loss, _ = task.loss(model, built.collate([built.dataset[j] for j in shards[rank][step]]))
            loss.backward()
            if rank == 0:
                logged.append(float(loss))
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.zero_grad(set_to_none=True)
        for p, g0, g1 in zip(model.parameters(), *grads):
            p.grad = (g0 + g1) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return logged


def test_sft_loss_decreases_on_two_workers(ray_local, tmp_path):
    cfg = _cfg(tmp_path, max_steps=24, checkpoint_every=24)
    run = RunDir.create(cfg)
    res = SFTJob().run(cfg, run, show_progress=False)
    steps = [r for r in run.metrics() if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 25))
    # two DDP ranks ran: the loop's world size, rank 0's own shard at step 1, and at steps 2-3 the
    # update made from both ranks' averaged gradients (a lone rank, or unsynced ranks, log other losses)
    assert res["workers"] == 2 and {"event": "workers", "world_size": 2} in run.metrics()
    replica = _ddp_replica(cfg, 3)
    assert [r["loss"] for r in steps[:3]] == pytest.approx(replica, rel=1e-4)
    first, last = sum(r["loss"] for r in steps[:3]) / 3, sum(r["loss"] for r in steps[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert res["steps"] == 24 and res["eval_loss"] < first
    # the run store has everything a newcomer looks for
    for f in ("config.yaml", "metrics.jsonl", "results.json", "report.md", "plots/loss.png",
              "artifacts/model/model.safetensors", "artifacts/model/tokenizer.json"):
        assert (run.path / f).is_file(), f
    assert "![loss](plots/loss.png)" in (run.path / "report.md").read_text()


@pytest.mark.slow  # ~70 s on 2 cores; the checkpoint contract is fast in test_meft_sft, node loss in test_node_failure
def test_injected_failure_resumes_from_last_checkpoint(ray_local, tmp_path):
    cfg = _cfg(tmp_path, max_steps=20, checkpoint_every=6, num_to_keep=2, fail_at_step=10, max_failures=1)
    run = RunDir.create(cfg)
    res = SFTJob().run(cfg, run, show_progress=False)
    records = run.metrics()
    assert {"event": "resumed", "step": 6} in records
    assert res["steps"] == 20
    ckpts = sorted(p.name for p in (run.path / "checkpoints" / "train").glob("step_*"))
    assert ckpts == ["step_00000018", "step_00000020"]  # num_to_keep=2, none lost
    state = json.loads((run.path / "checkpoints" / "train" / "step_00000020" / "state.json").read_text())
    assert state["step"] == 20

    # the same run without a failure ends at the same loss: resume restored the exact state
    clean = _cfg(tmp_path, max_steps=20, checkpoint_every=6, num_to_keep=2)
    res2 = SFTJob().run(clean, RunDir.create(clean), show_progress=False)
    assert res2["final_loss"] == pytest.approx(res["final_loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu_workers(ray_local, tmp_path, stage):
    """ZeRO on 2 CPU ranks (DS_ACCELERATOR=cpu, gloo); the first run JIT-compiles DeepSpeed ops."""
    cfg = _cfg(tmp_path, max_steps=12, checkpoint_every=6)
    cfg.train.deepspeed = {"stage": stage}
    run = RunDir.create(cfg)
    res = SFTJob().run(cfg, run, show_progress=False)
    steps = [r for r in run.metrics() if "loss" in r]
    assert res["steps"] == 12 and steps[-1]["loss"] < steps[0]["loss"]
    assert (run.path / "artifacts" / "model" / "model.safetensors").is_file()


def test_rerun_on_same_storage_resumes(ray_local, tmp_path):
    """A job that died (no retries left) continues from its last checkpoint when re-run on its run dir."""
    dying = _cfg(tmp_path, max_steps=12, checkpoint_every=5, fail_at_step=8, max_failures=0)
    run = RunDir.create(dying)
    with pytest.raises(Exception, match="injected failure"):
        SFTJob().run(dying, run, show_progress=False)
    assert not (run.path / "artifacts" / "model").exists()
    again = _cfg(tmp_path, max_steps=12, checkpoint_every=5)
    res = SFTJob().run(again, RunDir.open(run.path), show_progress=False)
    assert {"event": "resumed", "step": 5} in run.metrics()
    assert res["steps"] == 12 and (run.path / "artifacts" / "model" / "model.safetensors").is_file()
