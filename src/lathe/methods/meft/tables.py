"""Host-resident MEFT tables (offload engine): K (N, d'), V stored as rows (N, d), their Adam
state and per-row step counters, pinned when CUDA is present.

`TableStore` is what a layer talks to: `plan` scores the candidate keys on the host, applies
per-token top-k and the union budget, and gathers the selected rows; `push_grad` queues sparse
row gradients; `step` runs the row Adam over the touched rows. The Ray table actor
(lathe.jobs.meft_tables) wraps the same class, so the selection and the update are one code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lathe.methods.meft import routing as R
from lathe.methods.meft.adam import RowAdam
from lathe.methods.meft.config import MeftConfig


def table_generator(seed: int, layer: int, which: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + layer * 101 + which)


def init_tables(cfg: MeftConfig, d: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (N, d'), V rows (N, d)) as the spec's default init: K ~ N(0, std), V = 0. Seeded per layer so
    every engine, and the table actor, starts from the same tables."""
    dk = cfg.low_key_dim or d
    keys = torch.randn(cfg.num_neurons, dk, generator=table_generator(cfg.seed, layer, 0)) * cfg.init_std
    return keys, torch.zeros(cfg.num_neurons, d)


@dataclass
class Plan:
    ids: torch.Tensor          # (n,) kept neuron ids, ascending
    slot: torch.Tensor | None  # (T, k) buffer slot per token pick, -1 = dropped (per_token only)
    keys: torch.Tensor         # (n, d') rows of K
    values: torch.Tensor       # (n, d) rows of V (columns of the spec's V)


def _pin(t: torch.Tensor) -> torch.Tensor:
    return t.pin_memory() if torch.cuda.is_available() else t


class TableStore:
    def __init__(self, cfg: MeftConfig):
        self.cfg = cfg
        self.tables: dict[int, dict[str, torch.Tensor]] = {}
        self.pending: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.adam = RowAdam(cfg.betas, cfg.eps, cfg.offload_weight_decay, cfg.adam_impl)
        self.trained = ["values"] + (["keys"] if cfg.train_keys_offload else [])
        self.steps_taken = 0
        self.last_touched: dict[int, int] = {}

    # --- tables -------------------------------------------------------------------------
    def add_layer(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        t = {"keys": _pin(keys.float().contiguous()), "values": _pin(values.float().contiguous())}
        for name in self.trained:
            t[f"{name}.exp_avg"] = _pin(torch.zeros_like(t[name]))
            t[f"{name}.exp_avg_sq"] = _pin(torch.zeros_like(t[name]))
            t[f"{name}.step"] = torch.zeros(t[name].shape[0], dtype=torch.int64)
        self.tables[layer] = t

    def layer_ids(self) -> list[int]:
        return sorted(self.tables)

    # --- per micro-step -----------------------------------------------------------------
    @torch.no_grad()
    def plan(self, layer: int, xk: torch.Tensor, gsel: torch.Tensor, probe: torch.Tensor) -> Plan:
        cfg = self.cfg
        t = self.tables[layer]
        ids, act = R.topk_candidates(t["keys"], xk, gsel, probe, cfg.topk, cfg.num_experts)
        kept, keep = R.apply_budget(ids, act, cfg.n_max, cfg.num_neurons)
        slot = R.slot_map(ids, kept, keep) if cfg.mask == "per_token" else None
        k_rows, v_rows = self.gather(layer, kept)
        return Plan(kept, slot, k_rows, v_rows)

    def gather(self, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tables[layer]
        return t["keys"].index_select(0, ids), t["values"].index_select(0, ids)

    def push_grad(self, layer: int, name: str, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.pending.setdefault((layer, name), []).append((ids.long().cpu(), grad.float().cpu()))

    def coalesced(self, layer: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The queued gradient of one table as (unique ids, summed rows)."""
        parts = self.pending.get((layer, name), [])
        if not parts:
            d = self.tables[layer][name].shape[1]
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, d)
        ids = torch.cat([p[0] for p in parts])
        grads = torch.cat([p[1] for p in parts])
        uniq, inv = torch.unique(ids, return_inverse=True)
        return uniq, torch.zeros(uniq.numel(), grads.shape[1]).index_add_(0, inv, grads)

    @torch.no_grad()
    def step(self, lr: float, scale: float = 1.0) -> dict[str, float]:
        """Adam over the rows touched since the last step (every row with cpu_adam: dense)."""
        touched = 0
        for layer, t in self.tables.items():
            for name in self.trained:
                ids, g = self.coalesced(layer, name)
                if scale != 1.0:
                    g.mul_(scale)
                st = (t[name], t[f"{name}.exp_avg"], t[f"{name}.exp_avg_sq"], t[f"{name}.step"])
                if self.cfg.cpu_adam == "dense":
                    full = torch.zeros_like(t[name])
                    full.index_add_(0, ids, g)
                    self.adam.step_dense(*st, full, lr)
                else:
                    self.adam.step_rows(*st, ids, g, lr)
                if name == "values":
                    self.last_touched[layer] = int(ids.numel())
                    touched += int(ids.numel())
        self.pending.clear()
        self.steps_taken += 1
        return {"meft_rows_touched": float(touched)}

    # --- checkpoints --------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{layer}.{k}": v for layer, t in self.tables.items() for k, v in t.items()}

    @torch.no_grad()
    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for layer, t in self.tables.items():
            for k, v in t.items():
                key = f"{layer}.{k}"
                if key not in state:
                    raise RuntimeError(f"meft checkpoint lacks {key}")
                v.copy_(state[key])
        self.pending.clear()

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for t in self.tables.values() for v in t.values())

    def table(self, layer: int, name: str) -> torch.Tensor:
        return self.tables[layer][name]
