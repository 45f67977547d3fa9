"""ASLoRA: A shared across layers, B slots merged adaptively during training (spec section 3).

h_l = W₀x + s · B_{slot(l)} A_g dropout(x).

Storage keeps the set of trainable tensors fixed for the whole run (the training loop's
checkpoint holds exactly the trainable tensors): per group one A (or one global A) and one
stacked B of shape (L, d_out, r), plus a persistent layer→slot map buffer. Layer l reads
row slot_map[l], whose value is the slot's representative (lowest layer index), so a merged
slot is a single tensor row used by every member: its gradient is the sum over members
(true weight sharing).

Step-time cost: the forward pass makes no copies. B is split into per-row views once per
group and parameter version (`AsloraGroup.row_views`, one `unbind`, so the backward pass
builds the (L, d_out, r) gradient once per group rather than once per layer), and each layer
picks its representative's view through the map; the global A is sliced once per width the
same way. After each optimizer step only the merged-away rows (none before the first merge)
are refreshed from their representatives with one `index_copy_`, so every checkpoint holds
the merged values in every row and the map can be rebuilt from equal rows on resume.
Merged-away rows get their Adam moments zeroed.

A loaded adapter is compact: B holds only the K distinct slots and the map indexes them.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lathe.methods.peft import common as C
from lathe.methods.peft.base import PREFIX, Method, adapter_dtype_of
from lathe.platform.errors import ConfigError
from lathe.platform.registry import register

log = logging.getLogger("lathe.peft.aslora")


class AsloraConfig(C.AdapterConfig):
    share_scope: Literal["per_module_type", "global"] = "per_module_type"
    target_slots: int | None = Field(None, ge=1, description="final B slots per group; default ceil(L/4)")
    total_steps: int | None = Field(None, ge=1, description="optimizer steps of the run; default: set by the "
                                                             "training loop (a different value is an error)")
    global_a_fan_in: Literal["narrowest_reader", "max_in"] = Field(
        "narrowest_reader", description="global scope: A's kaiming fan-in per column block (see docs/peft.md)")
    merge_start: float = Field(0.1, gt=0, lt=1, description="no merge before this fraction of steps")
    merge_end: float = Field(0.6, gt=0, le=1)
    merge_every: int | None = Field(None, ge=1, description="default: evenly spaced, exactly L-K merges")
    pairs_per_event: int = Field(1, ge=1)
    similarity: Literal["cosine_B", "cosine_delta", "neg_frobenius"] = "cosine_B"
    adjacent_only: bool = False
    tau: float | None = Field(None, description="merge only pairs at least this similar")
    optimizer_on_merge: Literal["average", "reset"] = "average"

    @model_validator(mode="after")
    def _window(self):
        if self.merge_end < self.merge_start:
            raise ValueError(f"merge_end ({self.merge_end}) must be >= merge_start ({self.merge_start})")
        return self


class AsloraGroup(nn.Module):
    """One B-sharing group: layers with the same target suffix and shape."""

    def __init__(self, L: int, d_in: int, d_out: int, r: int, target: int, dtype, device, own_a: bool):
        super().__init__()
        self.L, self.d_in, self.d_out, self.r, self.target = L, d_in, d_out, r, target
        self.A = nn.Parameter(C.kaiming_(torch.empty(r, d_in, dtype=dtype, device=device), d_in)) if own_a else None
        self.B = nn.Parameter(torch.zeros(L, d_out, r, dtype=dtype, device=device))
        self.register_buffer("slot_map", torch.arange(L, device=device), persistent=True)
        self.rows: list[int] = list(range(L))
        self.compact = False
        self.synced = False
        self.layer_names: list[str] = []
        self._views: tuple = ((), None)  # (row views, cache key)
        self._tie: tuple[torch.Tensor, torch.Tensor] | None = None  # (merged-away rows, their representatives)

    def set_map(self, m: list[int]) -> None:
        self.rows = list(m)
        self.slot_map.copy_(torch.tensor(m, device=self.slot_map.device))
        dst = [l for l, r in enumerate(self.rows) if r != l]
        self._tie = None if self.compact or not dst else (
            torch.tensor(dst, dtype=torch.long, device=self.B.device),
            torch.tensor([self.rows[l] for l in dst], dtype=torch.long, device=self.B.device))

    def __getstate__(self):  # deepcopy/pickle: drop the cached views (non-leaf tensors)
        state = super().__getstate__()
        state["_views"] = ((), None)
        return state

    def row_views(self) -> tuple[torch.Tensor, ...]:
        """B's rows as views, made once per (B tensor, version, grad mode).

        One `unbind` serves every member layer in a forward pass, so the backward pass builds
        B's gradient once per group (not a zero-filled (L, d_out, r) tensor per layer, as
        `B[i]` would). The optimizer's in-place update bumps B's version, so the next
        forward pass unbinds again.
        """
        B = self.B
        key = (id(B), B.data_ptr(), B._version, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        views, k = self._views
        if k != key:
            if not self.synced:
                self.sync_from_values()
            views = B.unbind(0)
            self._views = (views, key)
        return views

    def slots(self) -> dict[int, list[int]]:
        """row -> member layers."""
        out: dict[int, list[int]] = {}
        for l, r in enumerate(self.rows):
            out.setdefault(r, []).append(l)
        return out

    def n_slots(self) -> int:
        return len(set(self.rows))

    @torch.no_grad()
    def sync_from_values(self) -> None:
        """Rebuild the map from equal non-zero rows (after a checkpoint restore)."""
        self.synced = True
        if self.compact:
            return
        B, m = self.B.detach(), list(range(self.L))
        for l in range(self.L):
            if not bool(B[l].any()):
                continue
            for k in range(l):
                if m[k] == k and torch.equal(B[l], B[k]):
                    m[l] = k
                    break
        if m != self.rows:
            self.set_map(m)

    @torch.no_grad()
    def tie_rows(self) -> None:
        """Copy each representative into its merged-away rows (nothing before the first merge)."""
        if self._tie is not None:
            dst, src = self._tie
            if dst.device != self.B.device:
                self._tie = dst, src = dst.to(self.B.device), src.to(self.B.device)
            self.B.data.index_copy_(0, dst, self.B.data.index_select(0, src))

    def effective_param_savings(self) -> int:
        return 0 if self.compact else (self.L - self.n_slots()) * self.d_out * self.r


class AsloraContainer(nn.Module):
    """Owns the shared tensors; attached to the model as `model.lathe_aslora`."""

    def __init__(self):
        super().__init__()
        self.groups = nn.ModuleDict()
        self.A_global: nn.Parameter | None = None
        self.events: list[dict] = []
        self.cfg: dict = {}
        self._slices: tuple[dict, object] = ({}, None)

    def __getstate__(self):  # deepcopy/pickle: drop the cached slices (non-leaf tensors)
        state = super().__getstate__()
        state["_slices"] = ({}, None)
        return state

    def a_slice(self, d_in: int) -> torch.Tensor:
        """A_global[:, :d_in], one view per width per (A tensor, version, grad mode)."""
        A = self.A_global
        key = (id(A), A.data_ptr(), A._version, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        cache, k = self._slices
        if k != key:
            cache = {}
            self._slices = (cache, key)
        v = cache.get(d_in)
        if v is None:
            v = cache[d_in] = A if d_in == A.shape[1] else A[:, :d_in]
        return v


class AsloraLayer(C.AdapterLayer):
    method = "aslora"

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool | None = None):
        super().__init__(base_layer, fan_in_fan_out)
        self.idx = 0

    def bind(self, name: str, container: AsloraContainer, group: AsloraGroup, idx: int, scale: float,
             dropout: float) -> None:
        # plain attributes, not submodules: the container owns the parameters
        object.__setattr__(self, "_container", container)
        object.__setattr__(self, "_group", group)
        self.idx = idx
        self.scaling[name] = scale
        self.dropout[name] = C.make_dropout(dropout)
        self.active_adapters.append(name)

    def A(self) -> torch.Tensor:
        g = self._group
        return g.A if g.A is not None else self._container.a_slice(self.in_features)

    def Bmat(self) -> torch.Tensor:
        g = self._group
        return g.row_views()[g.rows[self.idx]]

    def adapter_dtype(self, name: str) -> torch.dtype:
        return self._group.B.dtype

    def adapter_out(self, name: str, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(self.dropout[name](x), self.A()) * self.scaling[name]  # scale the rank-r activation
        return F.linear(z, self.Bmat())

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.A(), self.Bmat()
        if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):
            a, b = a.float(), b.float()
        d = (b @ a) * self.scaling[name]
        return d.T if self.fan_in_fan_out else d


def global_a_init(r: int, widths: list[int], rule: str, dtype, device) -> torch.Tensor:
    """The global A (r x max_in), kaiming_uniform(a=sqrt 5).

    `max_in` draws every column with fan-in max_in (VeRA's init): a layer reading A[:, :d_in] then
    starts with bound sqrt(1/max_in), smaller than its own LoRA A's sqrt(1/d_in) (by 1.6x for 4096-wide
    projections next to an 11008-wide down_proj). `narrowest_reader` (default) draws the column block
    [d_(j-1), d_j) with fan-in d_j, the narrowest width that reads it, so layers of the narrowest width
    start exactly as their own LoRA A would and wider layers read their own block at their own fan-in.
    """
    A = torch.empty(r, widths[-1], dtype=dtype, device=device)
    if rule == "max_in":
        return C.kaiming_(A, widths[-1])
    lo = 0
    for w in widths:
        C.kaiming_(A[:, lo:w], w)
        lo = w
    return A


def group_key(name: str, d_in: int, d_out: int) -> str:
    return f"{name.rsplit('.', 1)[-1]}_{d_in}x{d_out}"


class ASLoRA(Method):
    name = "aslora"
    Config = AsloraConfig
    Layer = AsloraLayer

    def apply(self, model: nn.Module, options: dict | None = None) -> nn.Module:
        if getattr(model, "lathe_peft", None):
            raise ConfigError("adapter (aslora): the model already holds an adapter; ASLoRA takes one per model")
        return super().apply(model, options)

    def new_layer(self, base: nn.Module, cfg: AsloraConfig) -> AsloraLayer:
        return AsloraLayer(base, cfg.fan_in_fan_out)

    def after_inject(self, model: nn.Module, cfg: AsloraConfig, names: list[str]) -> None:
        mods = dict(model.named_modules())
        groups: dict[str, list[str]] = {}
        for n in names:
            layer = mods[n]
            groups.setdefault(group_key(n, layer.in_features, layer.out_features), []).append(n)
        first = mods[names[0]].base_layer
        dt, dev = adapter_dtype_of(first), first.weight.device
        cont = AsloraContainer()
        if cfg.share_scope == "global":
            widths = sorted({mods[n].in_features for n in names})
            cont.A_global = nn.Parameter(global_a_init(cfg.r, widths, cfg.global_a_fan_in, dt, dev))
        scale = cfg.lora_alpha / math.sqrt(cfg.r) if cfg.use_rslora else cfg.lora_alpha / cfg.r
        need_schedule = False
        for key, members in groups.items():
            L = len(members)
            target = min(cfg.target_slots or math.ceil(L / 4), L)
            need_schedule |= target < L
            layer0 = mods[members[0]]
            g = AsloraGroup(L, layer0.in_features, layer0.out_features, cfg.r, target, dt, dev,
                            own_a=cfg.share_scope == "per_module_type")
            g.layer_names = members
            cont.groups[key] = g
            for i, n in enumerate(members):
                mods[n].bind(cfg.adapter_name, cont, g, i, scale, cfg.lora_dropout)
        cont.cfg = {**cfg.model_dump(), "need_schedule": need_schedule}
        model.lathe_aslora = cont

    @staticmethod
    def set_total_steps(model: nn.Module, total: int) -> None:
        """The training loop's step count schedules the merges; a hand-set different value is an error."""
        cont: AsloraContainer | None = getattr(model, "lathe_aslora", None)
        if cont is None:
            return
        given = cont.cfg.get("total_steps")
        if given is not None and given != total:
            raise ConfigError(f"adapter.total_steps={given} (aslora) but the training loop runs {total} optimizer "
                              f"steps; leave adapter.total_steps unset (it is taken from the loop)")
        cont.cfg["total_steps"] = total
        for meta in getattr(model, "lathe_peft", {}).values():
            meta["config"]["total_steps"] = total  # the saved adapter_config records the schedule's horizon

    # --- schedule ------------------------------------------------------------------------
    @staticmethod
    def event_steps(cfg: dict, n_merges: int) -> list[int]:
        """Steps at which merge events fire (each event: pairs_per_event merges per group)."""
        T = cfg["total_steps"]
        if not n_merges or not T:
            return []
        s0 = max(1, math.ceil(cfg["merge_start"] * T))
        s1 = max(s0, math.floor(cfg["merge_end"] * T))
        p = cfg["pairs_per_event"]
        if cfg["merge_every"]:
            return list(range(s0, s1 + 1, cfg["merge_every"]))
        n = math.ceil(n_merges / p)
        if n == 1:
            return [s0]
        return [s0 + (k * (s1 - s0)) // (n - 1) for k in range(n)]

    @classmethod
    def planned_merges(cls, cfg: dict, n_merges: int, step: int) -> int:
        ev = cls.event_steps(cfg, n_merges)
        if not ev:
            return 0
        if step >= ev[-1]:
            return n_merges  # the last event merges whatever is left
        return min(n_merges, cfg["pairs_per_event"] * sum(1 for s in ev if s <= step))

    # --- training hook -----------------------------------------------------------------------
    def after_step(self, model: nn.Module, step: int, optimizer=None) -> dict:
        cont: AsloraContainer | None = getattr(model, "lathe_aslora", None)
        if cont is None:
            return {}
        if cont.cfg.get("need_schedule") and not cont.cfg.get("total_steps"):
            raise ConfigError("adapter.total_steps (aslora): unknown, so B merges cannot be scheduled; train through "
                              "the training loop (it sets it), call ASLoRA.set_total_steps, or set target_slots to "
                              "the layer count (ShareLoRA)")
        merged = 0
        last_sim = None
        for key, g in cont.groups.items():
            if not g.synced:
                g.sync_from_values()
            g.tie_rows()
            if g.compact:
                continue
            want = g.L - self.planned_merges(cont.cfg, g.L - g.target, step)
            while g.n_slots() > max(want, g.target):
                ev = self.merge_once(cont, key, g, optimizer, step)
                if ev is None:
                    break
                merged += 1
                last_sim = ev["similarity"]
        out = {"aslora_slots": float(sum(g.n_slots() for g in cont.groups.values())),
               "aslora_merges": float(merged)}
        if last_sim is not None:
            out["aslora_similarity"] = float(last_sim)
        return out

    @torch.no_grad()
    def similarity(self, cont: AsloraContainer, g: AsloraGroup, reps: list[int]) -> torch.Tensor:
        how = cont.cfg["similarity"]
        B = g.B.detach()[reps].float()  # (K, d_out, r)
        if how == "cosine_delta":
            A = (g.A if g.A is not None else cont.A_global[:, : g.d_in]).detach().float()
            v = torch.einsum("kor,ri->koi", B, A).flatten(1)
        else:
            v = B.flatten(1)
        if how == "neg_frobenius":
            return -torch.cdist(v, v)
        v = F.normalize(v, dim=1)
        return v @ v.T

    @torch.no_grad()
    def merge_once(self, cont: AsloraContainer, key: str, g: AsloraGroup, optimizer, step: int) -> dict | None:
        slots = g.slots()
        reps = sorted(slots)
        if len(reps) < 2:
            return None
        sim = self.similarity(cont, g, reps)
        K = len(reps)
        mask = ~torch.eye(K, dtype=torch.bool, device=sim.device)
        if cont.cfg["adjacent_only"]:
            adj = torch.zeros(K, K, dtype=torch.bool, device=sim.device)
            for a in range(K):
                for b in range(K):
                    adj[a, b] = any(abs(x - y) == 1 for x in slots[reps[a]] for y in slots[reps[b]])
            mask &= adj
        sim = sim.masked_fill(~mask, float("-inf"))
        flat = int(torch.argmax(sim))
        pair = torch.tensor([flat // K, flat % K], dtype=torch.long, device=g.B.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.broadcast(pair, src=0)  # every rank merges the same pair
        a, b = sorted(int(v) for v in pair)
        s = float(sim[a, b])
        if s == float("-inf") or (cont.cfg["tau"] is not None and s < cont.cfg["tau"]):
            return None
        ra, rb = reps[a], reps[b]
        ca, cb = len(slots[ra]), len(slots[rb])
        g.B.data[ra] = (ca * g.B.data[ra] + cb * g.B.data[rb]) / (ca + cb)
        rows = [ra if r == rb else r for r in g.rows]
        g.set_map(rows)
        g.tie_rows()
        if optimizer is not None:
            state = optimizer.state.get(g.B, {})
            for k in ("exp_avg", "exp_avg_sq"):
                t = state.get(k)
                if t is None:
                    continue
                if cont.cfg["optimizer_on_merge"] == "average":
                    t[ra] = (ca * t[ra] + cb * t[rb]) / (ca + cb)
                else:
                    t[ra] = 0
                nonrep = torch.tensor([l for l in range(g.L) if g.rows[l] != l], dtype=torch.long, device=t.device)
                if len(nonrep):
                    t[nonrep] = 0
        members = sorted(slots[ra] + slots[rb])
        ev = {"step": step, "group": key, "merged": [ra, rb], "members": members, "similarity": s,
              "slots": g.n_slots()}
        cont.events.append(ev)
        log.info("aslora merge at step %d in %s: slots %d+%d (layers %s), similarity %.4f -> %d slots",
                 step, key, ra, rb, members, s, g.n_slots())
        return ev

    # --- counts -----------------------------------------------------------------------------
    @staticmethod
    def formula_params(model: nn.Module) -> int:
        """Σ_groups r·d_in + K·r·d_out (global scope: r·max_in once)."""
        cont: AsloraContainer = model.lathe_aslora
        total = 0
        if cont.A_global is not None:
            total += cont.A_global.numel()
        for g in cont.groups.values():
            total += (g.r * g.d_in if g.A is not None else 0) + g.n_slots() * g.r * g.d_out
        return total

    # --- save / load --------------------------------------------------------------------------
    def state_tensors(self, model: nn.Module, adapter: str | None = None) -> dict[str, torch.Tensor]:
        adapter, meta = self._meta(model, adapter)
        cont: AsloraContainer = model.lathe_aslora
        out = {}
        if cont.A_global is not None:
            out[PREFIX + "lathe_aslora.A_global"] = cont.A_global
        for key, g in cont.groups.items():
            reps = sorted(set(g.rows))
            index = {r: i for i, r in enumerate(reps)}
            if g.A is not None:
                out[f"{PREFIX}lathe_aslora.{key}.A"] = g.A
            out[f"{PREFIX}lathe_aslora.{key}.B_slots"] = g.B[reps]
            out[f"{PREFIX}lathe_aslora.{key}.slot_map"] = torch.tensor([index[r] for r in g.rows])
        for k, t in C.extra_trainable_state(model, meta["config"]).items():
            out[PREFIX + k] = t
        return out

    def adapter_config(self, model: nn.Module, adapter: str | None = None) -> dict:
        cfg = super().adapter_config(model, adapter)
        cont: AsloraContainer = model.lathe_aslora
        cfg["lathe_groups"] = {k: g.layer_names for k, g in cont.groups.items()}
        cfg["lathe_slot_maps"] = {k: [sorted(set(g.rows)).index(r) for r in g.rows] for k, g in cont.groups.items()}
        cfg["lathe_merge_events"] = cont.events
        return cfg

    def load_state(self, base_model: nn.Module, cfg_dict: dict, tensors: dict, where: str = "adapter") -> nn.Module:
        opts = self.options_from_saved(cfg_dict)
        model = self.apply(base_model, opts)
        cont: AsloraContainer = model.lathe_aslora
        t = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in tensors.items()}
        with torch.no_grad():
            if cont.A_global is not None:
                cont.A_global.copy_(self._need(t, "lathe_aslora.A_global", where))
            for key, g in cont.groups.items():
                if g.A is not None:
                    g.A.copy_(self._need(t, f"lathe_aslora.{key}.A", where))
                slots = self._need(t, f"lathe_aslora.{key}.B_slots", where)
                smap = self._need(t, f"lathe_aslora.{key}.slot_map", where).long()
                if slots.shape[1:] != g.B.shape[1:] or smap.numel() != g.L:
                    raise ConfigError(f"{where}: ASLoRA group {key} has B_slots {tuple(slots.shape)} / map of "
                                      f"{smap.numel()} layers; model expects (*, {g.d_out}, {g.r}) / {g.L}")
                g.B = nn.Parameter(slots.to(g.B.dtype).to(g.B.device).clone(), requires_grad=True)
                g.slot_map = smap.to(g.slot_map.device)
                g.rows = smap.tolist()
                g.compact = g.synced = True
            C.load_extra_state(model, {k: v for k, v in t.items() if not k.startswith("lathe_aslora.")})
        cont.events = list(cfg_dict.get("lathe_merge_events", []))
        return model

    @staticmethod
    def _need(t: dict, key: str, where: str) -> torch.Tensor:
        if key not in t:
            raise ConfigError(f"{where}: adapter file lacks {key}")
        return t[key]


register("peft", "aslora")(ASLoRA())
