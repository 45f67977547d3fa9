"""The MEFT table actor: two Ray workers train against one copy of the tables; the result equals a
single process on the same global batch, and only selected rows travel."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from lathe.methods.meft import Meft, meft_layers

OPTS = dict(num_neurons=64, topk=4, num_experts=8, n_probe=2, engine="offload", on_gpu_size=20,
            train_keys_offload=True)
D, VOCAB = 32, 50


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(D, 64), nn.Linear(64, D)

    def forward(self, x):
        return self.down_proj(torch.relu(self.up_proj(x)))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = _MLP()

    def forward(self, x):
        return x + self.mlp(x)


class Toy(nn.Module):
    """Embedding, two residual MLP blocks, a head: enough for MEFT's `layers.N.mlp` pattern."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(D, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        for b in self.layers:
            h = b(h)
        return self.head(h)


def _loss(model, ids):
    return model(ids).square().mean()


class _Worker:
    def __init__(self, opts, rank, world):
        from lathe.jobs.meft_tables import actor_store

        torch.set_num_threads(1)
        self.model = Meft().apply(Toy(), opts, store=actor_store(opts, rank=rank, world=world))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=1e-2)

    def backward(self, ids):
        _loss(self.model, ids).backward()
        return [p.grad.clone() for p in self.params]

    def step(self, mean_grads):
        for p, g in zip(self.params, mean_grads):
            p.grad = g
        Meft().before_step(self.model, 0, self.opt)
        self.opt.step()
        self.opt.zero_grad()

    def router(self):
        return [p.detach().clone() for p in self.params]


def _batches():
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, VOCAB, (4, 6), generator=gen) for _ in range(3)]


def test_two_workers_on_one_table_equal_one_process(ray_local):
    import cloudpickle
    import ray

    from lathe.jobs.meft_tables import new_actor_name

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    opts = {**OPTS, "tables": "actor", "actor_name": new_actor_name()}
    Worker = ray.remote(num_cpus=1)(_Worker)
    workers = [Worker.remote(opts, r, 2) for r in range(2)]
    try:
        for ids in _batches():
            grads = ray.get([w.backward.remote(ids[2 * r: 2 * r + 2]) for r, w in enumerate(workers)])
            mean = [(a + b) / 2 for a, b in zip(*grads)]  # the DDP all-reduce of the device params
            ray.get([w.step.remote(mean) for w in workers])
        actor = ray.get_actor(opts["actor_name"])
        stats = ray.get(actor.stats.remote())
        # the single-process reference: local tables, the whole global batch
        ref = Meft().apply(Toy(), OPTS)
        params = [p for p in ref.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-2)
        for ids in _batches():
            _loss(ref, ids).backward()
            Meft().before_step(ref, 0, opt)
            opt.step()
            opt.zero_grad()
        store = ref.lathe_meft["store"]
        for _, layer in meft_layers(ref):
            for name in ("values", "keys", "values.exp_avg", "values.step"):
                got = ray.get(actor.table.remote(layer.layer, name))
                torch.testing.assert_close(got, store.table(layer.layer, name), atol=1e-6, rtol=1e-5)
        assert store.table(0, "values").abs().sum() > 0
        for a, b in zip(ray.get(workers[0].router.remote()), params):
            torch.testing.assert_close(a, b.detach(), atol=1e-6, rtol=1e-5)
        assert stats["version"] == 3 and stats["layers"] == 2
        # 3 steps x 2 layers x 2 workers x at most on_gpu_size rows each way; never a whole table (64 rows)
        assert 0 < stats["rows_out"] <= 3 * 2 * 2 * 20 and stats["rows_in"] == stats["rows_out"]
    finally:
        for w in workers:
            ray.kill(w)
        try:
            ray.kill(ray.get_actor(opts["actor_name"]))
        except ValueError:
            pass


@pytest.mark.slow
def test_sft_job_two_workers_share_one_table_actor(ray_local, tmp_path):
    import json

    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir

    cfg = load_config("configs/sft/meft_offload.yaml", [
        "adapter.tables=actor", "ray.num_workers=2", "data.synthetic_size=64", "train.batch_size=8",
        "train.max_steps=6", "train.checkpoint_every=3", "train.lr=3e-2", "adapter.num_neurons=128",
        "adapter.num_experts=8", "adapter.topk=8", "adapter.on_gpu_size=64", f"output_root={tmp_path}"])
    run = RunDir.create(cfg)
    res = lookup("job", "sft")().run(cfg, run, show_progress=False)
    assert res["final_loss"] < res["first_loss"] and res["workers"] == 2
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["meft_rows_sent"] <= 4 * 64 for r in rows if "meft_rows_sent" in r)
    meta = json.loads((run.artifacts / "model" / "adapter_config.json").read_text())
    assert meta["tables"] == "actor" and meta["actor_name"].startswith("lathe-meft-")
