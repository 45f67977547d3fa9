"""The MEFT layer: a parallel key-value FFN adapter wrapped around one MLP block (spec 4.1-4.4).

    out = MLP(x) + V · ReLU(TopK_k(g ⊙ K x'))        x' = P x (low_key_dim) or x

`engine: gpu` keeps K and V as device parameters and masks all N scores (the reference).
`engine: offload` keeps them in a `TableStore` on the host: each forward sends x' and the
probed experts to the host, which picks the rows; those rows are copied into fixed device
buffers (n_max rows, the rest zero) and a gradient hook on the buffers sends the row
gradients back. On a CPU-only machine host and "device" are both the CPU: same code, no pinning.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lathe import kernels
from lathe.methods.meft import routing as R
from lathe.methods.meft.config import MeftConfig
from lathe.methods.meft.tables import Plan, table_generator


@dataclass
class TransferMeter:
    """Counts the bytes that cross host<->device (on CPU: the bytes that would)."""

    up: int = 0     # device -> host
    down: int = 0   # host -> device
    unions: list[int] = field(default_factory=list)

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        self.up += t.numel() * t.element_size()
        return t.detach().to("cpu", copy=True)

    def count_down(self, t: torch.Tensor) -> None:
        self.down += t.numel() * t.element_size()

    def reset(self) -> dict[str, float]:
        out = {"meft_bytes_up": float(self.up), "meft_bytes_down": float(self.down)}
        if self.unions:
            out["meft_union_mean"] = sum(self.unions) / len(self.unions)
        self.up = self.down = 0
        self.unions = []
        return out


def _linear(d_in: int, d_out: int, std: float, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=gen) * std)
    return lin


class MeftMLP(nn.Module):
    def __init__(self, base_mlp: nn.Module, cfg: MeftConfig, d: int, layer: int, keys: torch.Tensor,
                 values: torch.Tensor, store=None, meter: TransferMeter | None = None,
                 router_init: torch.Tensor | None = None):
        super().__init__()
        self.base_mlp = base_mlp
        self.cfg, self.d, self.layer = cfg, d, layer
        self.dk = cfg.low_key_dim or d
        self.per_expert = cfg.num_neurons // cfg.num_experts
        self.router = None
        if cfg.num_experts > 1:
            self.router = _linear(d, cfg.num_experts, cfg.init_std, table_generator(cfg.seed, layer, 1))
            if router_init is not None:
                with torch.no_grad():
                    self.router.weight.copy_(router_init)
        self.proj = _linear(d, self.dk, cfg.init_std, table_generator(cfg.seed, layer, 2)) if cfg.low_key_dim else None
        dev = next(base_mlp.parameters()).device
        if cfg.engine == "gpu":
            self.keys = nn.Parameter(keys.float().to(dev), requires_grad=cfg.keys_trained)
            self.values = nn.Parameter(values.float().to(dev))
            self.store = None
        else:
            self.store = store
            store.add_layer(layer, keys, values)
        self.meter = meter or TransferMeter()
        self.disabled = False
        self.fixed_gates = False  # test hook: every gate = 1
        self.act_fn = getattr(base_mlp, "act_fn", None) or F.silu
        self.stats: dict[str, float] = {}
        self.prelook_targets: list[MeftMLP] = []
        self.pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._kbuf = self._vbuf = None
        self._prev_n = 0
        self._live_ids: torch.Tensor | None = None
        self._stream = self._staging = None

    # --- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_mlp(x, *args, **kwargs)
        if self.disabled:
            return out
        h = x.reshape(-1, self.d).float()
        for tgt in self.prelook_targets:
            tgt.prefetch(h)
        delta = self.adapter_out(h)
        return out + delta.view(*x.shape[:-1], -1).to(out.dtype)

    def _keyspace(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h) if self.proj is not None else h

    def _route(self, h: torch.Tensor):
        g, probe = R.route(h, self.router, self.cfg.n_probe, self.cfg.router_softmax, self.fixed_gates)
        if self.router is not None:
            self.stats["neg_gate_frac"] = float((g.detach().gather(1, probe) < 0).float().mean())
        return g, probe

    def adapter_out(self, h: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        xk = self._keyspace(h)
        if cfg.dense:
            return self.act_fn(xk @ self.keys.T) @ self.values
        gates, probe = self._route(h)
        if cfg.engine == "gpu":
            return self._masked_reference(xk, gates, probe)
        return self._offloaded(xk, gates, probe)

    def _masked_reference(self, xk, gates, probe):
        cfg = self.cfg
        raw = xk @ self.keys.T
        ids, act = R.topk_masked_scores(raw, gates, probe, cfg.topk)
        kept, keep = R.apply_budget(ids, act, cfg.n_max, cfg.num_neurons)
        self.stats["union"] = float(kept.numel())
        if cfg.mask == "per_token":
            dense = torch.zeros_like(raw).scatter_add(1, ids, act * keep)
            return dense @ self.values
        gate_u = gates[:, R.expert_of(kept, self.per_expert)]
        act_u = torch.relu(raw[:, kept] * gate_u)
        return act_u @ kernels.gather_rows_autograd(self.values, kept, cfg.kernels)

    # --- offload engine -----------------------------------------------------------------
    def _ship(self, xk: torch.Tensor, gates: torch.Tensor, probe: torch.Tensor):
        """Device -> host: x', the probed experts' gates and their ids (int32)."""
        m = self.meter
        gsel = gates.detach().gather(1, probe)
        return m.to_host(xk.detach()), m.to_host(gsel), m.to_host(probe.to(torch.int32)).long()

    @torch.no_grad()
    def prefetch(self, h_early: torch.Tensor) -> None:
        """pre_look_layers: select this layer's rows from an earlier layer's MLP input, in a worker
        thread, while the layers in between run."""
        if self.cfg.engine != "offload" or self.disabled:
            return
        xk = self._keyspace(h_early)
        gates, probe = R.route(h_early, self.router, self.cfg.n_probe, self.cfg.router_softmax, self.fixed_gates)
        shipped = self._ship(xk, gates, probe)
        ready = None
        if xk.is_cuda:
            ready = torch.cuda.Event()
            ready.record()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.cfg.cpu_threads, thread_name_prefix=f"meft-l{self.layer}")
        self._future = self.pool.submit(self._plan_and_copy, shipped, xk.device, ready)

    def _plan_and_copy(self, shipped, device: torch.device, ready=None):
        plan: Plan = self.store.plan(self.layer, *shipped)
        return plan, self._copy_down(plan, device, ready)

    def _offloaded(self, xk, gates, probe):
        cfg = self.cfg
        if self._future is not None:
            plan, moved = self._future.result()
            self._future = None
        else:
            plan, moved = self._plan_and_copy(self._ship(xk, gates, probe), xk.device)
        kbuf, vbuf, ids_dev, slot_dev, done = moved
        if done is not None:
            main = torch.cuda.current_stream(xk.device)
            main.wait_event(done)
            for t in (ids_dev, slot_dev):  # made on the side stream, used (and freed) on this one
                if t is not None:
                    t.record_stream(main)
        self._live_ids = plan.ids
        kbuf.grad = vbuf.grad = None
        self.stats["union"] = float(plan.ids.numel())
        self.meter.unions.append(plan.ids.numel())
        if cfg.mask == "per_token":
            eid = R.expert_of(ids_dev[slot_dev.clamp(min=0)], self.per_expert)
            gate = gates.gather(1, eid)
            return kernels.masked_adapter(xk, kbuf, vbuf, slot_dev, gate, cfg.kernels)
        eid_rows = torch.zeros(cfg.n_max, dtype=torch.long, device=xk.device)
        eid_rows[: ids_dev.numel()] = R.expert_of(ids_dev, self.per_expert)
        return torch.relu((xk @ kbuf.T) * gates[:, eid_rows]) @ vbuf

    def _device_buffers(self, device: torch.device):
        if self._kbuf is None or self._kbuf.device != device:
            n = self.cfg.n_max
            self._kbuf = torch.zeros(n, self.dk, device=device).requires_grad_(self.cfg.train_keys_offload)
            self._vbuf = torch.zeros(n, self.d, device=device).requires_grad_(True)
            self._vbuf.register_post_accumulate_grad_hook(self._grad_hook("values"))
            if self.cfg.train_keys_offload:
                self._kbuf.register_post_accumulate_grad_hook(self._grad_hook("keys"))
            self._prev_n = n  # zero everything on first fill
            if device.type == "cuda":
                self._stream = torch.cuda.Stream(device)
                self._staging = (torch.empty(n, self.dk).pin_memory(), torch.empty(n, self.d).pin_memory())
        return self._kbuf, self._vbuf

    @torch.no_grad()
    def _copy_down(self, plan: Plan, device: torch.device, ready=None):
        """Host -> device: the selected K and V rows into the fixed buffers (tail rows zeroed), the
        ids and, for per_token, the per-token slot map. On CUDA: pinned staging, a side stream."""
        kbuf, vbuf = self._device_buffers(device)
        n = plan.ids.numel()
        m = self.meter
        for t in (plan.keys, plan.values, plan.ids.to(torch.int32)):
            m.count_down(t)
        slot32 = plan.slot.to(torch.int32) if plan.slot is not None else None
        if slot32 is not None:
            m.count_down(slot32)
        prev, self._prev_n = self._prev_n, n
        if device.type != "cuda":
            kbuf[:n].copy_(plan.keys)
            vbuf[:n].copy_(plan.values)
            if prev > n:
                kbuf[n:prev].zero_()
                vbuf[n:prev].zero_()
            return kbuf, vbuf, plan.ids.to(device), slot32.long() if slot32 is not None else None, None
        stream = self._stream
        ks, vs = self._staging
        stream.wait_event(ready) if ready is not None else stream.wait_stream(torch.cuda.current_stream(device))
        stream.synchronize()  # the staging buffers are free again only after the last copy finished
        ks[:n].copy_(plan.keys)
        vs[:n].copy_(plan.values)
        with torch.cuda.stream(stream):
            kbuf[:n].copy_(ks[:n], non_blocking=True)
            vbuf[:n].copy_(vs[:n], non_blocking=True)
            if prev > n:
                kbuf[n:prev].zero_()
                vbuf[n:prev].zero_()
            ids_dev = plan.ids.pin_memory().to(device, non_blocking=True)
            slot_dev = slot32.pin_memory().to(device, non_blocking=True).long() if slot32 is not None else None
            done = torch.cuda.Event()
            done.record(stream)
        return kbuf, vbuf, ids_dev, slot_dev, done

    def _grad_hook(self, name: str):
        def hook(buf: torch.Tensor) -> None:
            ids = self._live_ids
            g = self.meter.to_host(buf.grad[: ids.numel()])
            self.store.push_grad(self.layer, name, ids, g)
            buf.grad = None
        return hook

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"layer={self.layer}, N={c.num_neurons}, k={c.topk}, E={c.num_experts}, engine={c.engine}, "
                f"mask={c.mask}")
