"""The MEFT table actor: one copy of the offloaded tables per node, shared by its workers.

Each worker's layers talk to an `ActorStore` (the same interface as the local `TableStore`):
- `plan` sends x' (T·d'), the probed gates and expert ids to the actor, which scores the
  candidate keys, applies top-k and the budget, and returns only the selected rows;
- row gradients are queued locally and sent as one sparse message per optimizer step;
- the actor applies the row Adam once every worker of the step has reported, averaging
  their gradients (the DDP mean), and a worker's next `plan` waits for that step.
Whole tables cross the object store only at checkpoints and on resume. See docs/peft.md.
"""

from __future__ import annotations

import asyncio
import uuid

import ray
import torch

from lathe.methods.meft.config import MeftConfig
from lathe.methods.meft.tables import Plan, TableStore, init_tables

VERSION = "_version"


class TableServer:
    """The actor's body (plain async Python, so its protocol is testable without a cluster)."""

    def __init__(self, cfg: dict, world: int):
        self.cfg = MeftConfig.model_validate(cfg)
        self.store = TableStore(self.cfg)
        self.world = world
        self.version = 0
        self.arrived: set[int] = set()
        self.cond = asyncio.Condition()
        self.rows_in = self.rows_out = 0

    async def ensure_layer(self, layer: int, d: int) -> None:
        if layer not in self.store.tables:  # every worker asks; the first one creates it
            self.store.add_layer(layer, *init_tables(self.cfg, d, layer))

    async def _wait(self, version: int) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.version >= version)

    async def plan(self, version: int, layer: int, xk, gsel, probe) -> Plan:
        await self._wait(version)
        p = self.store.plan(layer, xk, gsel, probe)
        self.rows_out += p.ids.numel()
        return p

    async def push(self, version: int, rank: int, grads: list, lr: float) -> int:
        """One worker's sparse row gradients for step `version`; the last arrival applies the step."""
        await self._wait(version)
        for layer, name, ids, g in grads:
            self.store.push_grad(layer, name, ids, g)
            self.rows_in += ids.numel() if name == "values" else 0
        async with self.cond:
            self.arrived.add(rank)
            if len(self.arrived) == self.world:
                self.store.step(lr, scale=1.0 / self.world)
                self.arrived.clear()
                self.version += 1
                self.cond.notify_all()
        return self.version

    async def state(self, version: int) -> dict[str, torch.Tensor]:
        await self._wait(version)
        return {**self.store.state_tensors(), VERSION: torch.tensor(self.version)}

    async def load_state(self, state: dict[str, torch.Tensor]) -> int:
        async with self.cond:
            self.store.load_state_tensors({k: v for k, v in state.items() if k != VERSION})
            self.version = int(state.get(VERSION, torch.tensor(0)))
            self.arrived.clear()
            self.cond.notify_all()
        return self.version

    async def stats(self) -> dict[str, int]:
        return {"version": self.version, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "table_bytes": self.store.nbytes(), "layers": len(self.store.tables)}

    async def table(self, layer: int, name: str, version: int = 0) -> torch.Tensor:
        await self._wait(version)
        return self.store.table(layer, name)


MeftTableActor = ray.remote(num_cpus=0, max_concurrency=64)(TableServer)


class ActorStore:
    """A worker's handle on the node's table actor, with the `TableStore` interface."""

    def __init__(self, actor, cfg: MeftConfig, rank: int = 0):
        self.actor, self.cfg, self.rank = actor, cfg, rank
        self.version = 0
        self.pending: list = []
        self._layers: list[int] = []
        self._last_push = None

    def add_layer(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        ray.get(self.actor.ensure_layer.remote(layer, values.shape[1]))  # shapes only: the actor inits
        self._layers.append(layer)

    def layer_ids(self) -> list[int]:
        return sorted(self._layers)

    def plan(self, layer: int, xk, gsel, probe) -> Plan:
        return ray.get(self.actor.plan.remote(self.version, layer, xk, gsel, probe))

    def push_grad(self, layer: int, name: str, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.pending.append((layer, name, ids.long().cpu(), grad.float().cpu()))

    def step(self, lr: float, scale: float = 1.0) -> dict[str, float]:
        if self._last_push is not None:
            ray.get(self._last_push)  # surface a failed step here, not later
        rows = float(sum(p[2].numel() for p in self.pending if p[1] == "values"))
        self._last_push = self.actor.push.remote(self.version, self.rank, self.pending, lr)
        self.pending = []
        self.version += 1
        return {"meft_rows_sent": rows}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return ray.get(self.actor.state.remote(self.version))

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.version = ray.get(self.actor.load_state.remote(state))
        self.pending = []

    def table(self, layer: int, name: str) -> torch.Tensor:
        return ray.get(self.actor.table.remote(layer, name, self.version))

    def nbytes(self) -> int:
        return ray.get(self.actor.stats.remote())["table_bytes"]


def actor_store(options: dict, rank: int | None = None, world: int | None = None) -> ActorStore:
    """The store for this worker: gets (or creates, on this node) the run's table actor."""
    import ray

    cfg = MeftConfig.model_validate(options)
    if rank is None or world is None:
        try:
            import ray.train

            ctx = ray.train.get_context()
            rank, world = ctx.get_world_rank(), ctx.get_world_size()
        except Exception:  # noqa: BLE001 - outside Ray Train: a single process
            rank, world = 0, 1
    name = cfg.actor_name or "lathe-meft-tables"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = MeftTableActor.options(
        name=name, get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
    ).remote(cfg.model_dump(mode="json"), world)
    return ActorStore(actor, cfg, rank)


def new_actor_name() -> str:
    return f"lathe-meft-{uuid.uuid4().hex[:10]}"
