"""The MEFT table actor: two Ray workers train against one copy of the tables; the result equals a
single process on the same global batch, and only selected rows travel."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from lathe.methods.meft import Meft, meft_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# No buffer cap: the budget applies per micro-batch, so a cap would make a worker's half-batch
# select differently from the global batch; per_token without a cap is batch-independent.
OPTS = dict(num_neurons=64, topk=2, num_experts=8, n_probe=1, engine="offload", train_keys_offload=True)
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


@pytest.mark.slow  # starts 2 Ray workers; the protocol itself is covered by the fast thread test below
def test_two_workers_on_one_table_equal_one_process(ray_local):
    from ray import cloudpickle  # Ray pickles with its own copy: register the test module there
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
        # read after the tables: a worker's last push may still be applying when its step() returns
        stats = ray.get(actor.stats.remote())
        assert stats["version"] == 3 and stats["layers"] == 2
        # 3 steps x 2 layers x 2 workers: at most 12 tokens x k=2 rows per plan, never a whole table (64)
        assert 0 < stats["rows_out"] <= 3 * 2 * 2 * 24 and stats["rows_in"] == stats["rows_out"]
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


class _Handle:
    """A TableServer behind `.method.remote(...)` futures on one event loop: the actor protocol
    without a Ray cluster (the Ray test above runs the same code in a real actor)."""

    def __init__(self, server):
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = server

    def __getattr__(self, name):
        import asyncio

        fn = getattr(self.server, name)
        return type("M", (), {"remote": lambda _s, *a: asyncio.run_coroutine_threadsafe(fn(*a), self.loop)})()


def test_table_protocol_two_threads_equal_one_process(monkeypatch):
    """Two workers (threads) against one TableServer: selection, sparse pushes, the step barrier and
    the averaged row Adam give the single-process tables on the same global batch."""
    import threading
    import types

    from lathe.jobs import meft_tables as MT
    from lathe.methods.meft import MeftConfig

    monkeypatch.setattr(MT, "ray", types.SimpleNamespace(get=lambda f: f.result(timeout=60)))
    opts = {**OPTS, "tables": "actor"}
    server = MT.TableServer(MeftConfig(**opts).model_dump(mode="json"), 2)
    handle = _Handle(server)
    workers = [_Worker.__new__(_Worker) for _ in range(2)]
    for r, w in enumerate(workers):
        w.model = Meft().apply(Toy(), opts, store=MT.ActorStore(handle, MeftConfig(**opts), rank=r))
        w.params = [p for p in w.model.parameters() if p.requires_grad]
        w.opt = torch.optim.Adam(w.params, lr=1e-2)
    for ids in _batches():
        grads = [None, None]

        def back(r):
            grads[r] = workers[r].backward(ids[2 * r: 2 * r + 2])

        threads = [threading.Thread(target=back, args=(r,)) for r in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        mean = [(a + b) / 2 for a, b in zip(*grads)]
        for w in workers:
            w.step(mean)
    ref = Meft().apply(Toy(), OPTS)
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    for ids in _batches():
        _loss(ref, ids).backward()
        Meft().before_step(ref, 0, opt)
        opt.step()
        opt.zero_grad()
    store = ref.lathe_meft["store"]
    state = workers[0].model.lathe_meft["store"].state_tensors()  # waits for the 3rd step
    assert int(state[MT.VERSION]) == 3
    for layer in store.layer_ids():
        for name in ("values", "keys", "values.exp_avg", "keys.exp_avg_sq", "values.step"):
            torch.testing.assert_close(state[f"{layer}.{name}"], store.table(layer, name), atol=1e-6, rtol=1e-5)
    assert store.table(0, "values").abs().sum() > 0
    assert 0 < server.rows_out <= 3 * 2 * 2 * 24 and server.rows_in == server.rows_out
    handle.loop.call_soon_threadsafe(handle.loop.stop)
