"""`Meft`: inject MEFT into a causal LM, save/load its full tables, and the hooks the sft task
calls around the optimizer step (the host Adam) and at checkpoints (tables + their Adam state).

Registered as peft method "meft" (it wraps MLP blocks, not linear layers, so it does not
derive from the linear-adapter `Method`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from lathe.methods.meft.config import MeftConfig, select_layers
from lathe.methods.meft.layer import MeftMLP, TransferMeter
from lathe.methods.meft.tables import TableStore, init_tables, table_generator
from lathe.methods.peft import common as C
from lathe.platform.errors import ConfigError
from lathe.platform.registry import register

PREFIX = "base_model.model."
TABLES = "meft_tables."


def meft_layers(model: nn.Module) -> list[tuple[str, MeftMLP]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MeftMLP)]


def _hidden_size(mlp: nn.Module, name: str) -> int:
    for attr in ("hidden_size",):
        if isinstance(getattr(mlp, attr, None), int):
            return getattr(mlp, attr)
    for lin in mlp.modules():
        if isinstance(lin, nn.Linear):
            return lin.in_features
    raise ConfigError(f"adapter.mlp_pattern (meft): {name} has no linear layer to read the hidden size from")


def _from_model_keys(cfg: MeftConfig, mlps: dict[int, nn.Module], layer: int, d: int):
    """K rows from the previous layer's frozen down_proj.weightᵀ (layer 0: up_proj), without replacement."""
    src = mlps.get(layer - 1) if layer > 0 else None
    w = src.down_proj.weight.T if src is not None else mlps[layer].up_proj.weight
    d_ff = w.shape[0]
    if cfg.num_neurons > d_ff:
        raise ConfigError(f"adapter.num_neurons={cfg.num_neurons} (meft): key_init from_model samples rows "
                          f"without replacement and layer {layer} has only d_ff={d_ff}")
    rows = torch.randperm(d_ff, generator=table_generator(cfg.seed, layer, 3))[: cfg.num_neurons]
    keys = w.detach().float().cpu()[rows].clone()
    router = None
    if cfg.num_experts > 1:
        router = 50.0 * keys.view(cfg.num_experts, -1, d).mean(1)  # the centroid router
    return keys, router


class Meft:
    name = "meft"
    Config = MeftConfig

    def config(self, options) -> MeftConfig:
        if isinstance(options, MeftConfig):
            return options
        try:
            return MeftConfig.model_validate(dict(options or {}))
        except ValidationError as e:
            err = e.errors()[0]
            if err["loc"]:  # a field: name it (and show the bad value) like the other adapters
                return C.parse_config(MeftConfig, options, self.name)
            raise ConfigError(f"adapter (meft): {err['msg'].removeprefix('Value error, ')}") from None

    # --- injection ----------------------------------------------------------------------
    def apply(self, model: nn.Module, options: dict | MeftConfig | None = None, store=None) -> nn.Module:
        cfg = self.config(options)
        if meft_layers(model):
            raise ConfigError("adapter (meft): this model already holds MEFT layers")
        pattern = re.compile(cfg.mlp_pattern)
        found = {}
        for n, m in model.named_modules():
            hit = pattern.fullmatch(n)
            if hit and n:
                found[int(hit.group(1))] = (n, m)
        if not found:
            sample = [n for n, _ in model.named_modules() if n.endswith("mlp")][:3]
            raise ConfigError(f"adapter.mlp_pattern={cfg.mlp_pattern!r} (meft) matches no module"
                              f" (MLP-like modules here: {sample or 'none'})")
        if cfg.key_init == "from_model" and cfg.low_key_dim:
            raise ConfigError("adapter.key_init=from_model (meft) needs keys in the model's width; unset low_key_dim")
        chosen = select_layers(cfg, max(found) + 1)
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.engine == "offload" and store is None:
            if cfg.tables == "actor":
                raise ConfigError("adapter.tables=actor (meft): the job creates the table actor "
                                  "(lathe.jobs.meft_tables.actor_store); pass store=")
            store = TableStore(cfg)
        meter = TransferMeter()
        mlps = {i: m for i, (_, m) in found.items()}
        wrapped: dict[int, MeftMLP] = {}
        for i in chosen:
            if i not in found:
                continue
            name, mlp = found[i]
            d = _hidden_size(mlp, name)
            router = None
            if cfg.key_init == "from_model":
                keys, router = _from_model_keys(cfg, mlps, i, d)
                values = torch.zeros(cfg.num_neurons, d)
            else:
                keys, values = init_tables(cfg, d, i)
            layer = MeftMLP(mlp, cfg, d, i, keys, values, store=store, meter=meter, router_init=router)
            C.set_submodule(model, name, layer)
            wrapped[i] = layer
        if cfg.pre_look_layers and cfg.engine == "offload":
            for i, layer in wrapped.items():
                src = wrapped.get(i - cfg.pre_look_layers)
                if src is not None:
                    src.prelook_targets.append(layer)
        model.lathe_meft = {"config": cfg.model_dump(mode="json"), "layers": [found[i][0] for i in wrapped],
                            "store": store, "meter": meter}
        return model

    # --- the training loop's hooks ------------------------------------------------------
    @staticmethod
    def _state(model):
        meta = getattr(model, "lathe_meft", None)
        if meta is None:
            raise ConfigError("meft: the model has no MEFT adapter")
        return meta

    def before_step(self, model: nn.Module, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The host Adam over the rows touched since the last step, at the loop's current lr."""
        meta = self._state(model)
        if meta["store"] is None:
            return {}
        cfg = MeftConfig.model_validate(meta["config"])
        lr = cfg.offload_lr or optimizer.param_groups[0]["lr"]
        return meta["store"].step(lr)

    def after_step(self, model: nn.Module, step: int, optimizer) -> dict[str, float]:
        meta = self._state(model)
        out = meta["meter"].reset()
        layers = [m for _, m in meft_layers(model)]
        neg = [m.stats["neg_gate_frac"] for m in layers if "neg_gate_frac" in m.stats]
        if neg:
            out["meft_neg_gate_frac"] = sum(neg) / len(neg)
        if meta["store"] is None and layers:
            out["meft_union_mean"] = sum(m.stats.get("union", 0.0) for m in layers) / len(layers)
        return out

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Checkpoint contents: device-trained tensors, plus (offload) the full host tables, their
        Adam moments and per-row step counters."""
        out = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        store = self._state(model)["store"]
        if store is not None:
            out.update({TABLES + k: v.contiguous() for k, v in store.state_tensors().items()})
        return out

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        want = {n for n, p in params.items() if p.requires_grad}
        missing = want - set(state)
        if missing:
            raise RuntimeError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for n in want:
                params[n].copy_(state[n])
        store = self._state(model)["store"]
        if store is not None:
            store.load_state_tensors({k[len(TABLES):]: v for k, v in state.items() if k.startswith(TABLES)})

    # --- artifacts ----------------------------------------------------------------------
    def state_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full tables (K (N, d'), V as rows (N, d)) and the router/P of every adapted layer."""
        meta = self._state(model)
        store = meta["store"]
        out = {}
        for name, layer in meft_layers(model):
            if store is None:
                keys, values = layer.keys, layer.values
            else:
                keys, values = store.table(layer.layer, "keys"), store.table(layer.layer, "values")
            out[f"{PREFIX}{name}.keys"] = keys.detach().cpu()
            out[f"{PREFIX}{name}.values"] = values.detach().cpu()
            for sub in ("router", "proj"):
                mod = getattr(layer, sub)
                if mod is not None:
                    out[f"{PREFIX}{name}.{sub}.weight"] = mod.weight.detach().cpu()
        return out

    def save(self, model: nn.Module, out_dir: str | Path) -> Path:
        meta = self._state(model)
        cfg = {"lathe_method": self.name, "peft_type": "MEFT", "lathe_layers": meta["layers"], **meta["config"]}
        base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        cfg["base_model_name_or_path"] = base
        return C.write_adapter(out_dir, cfg, self.state_tensors(model))

    def load(self, base_model: nn.Module, path: str | Path, **overrides) -> nn.Module:
        """Rebuild the adapter from a saved directory; `overrides` (e.g. engine="gpu") change options.
        An artifact trained against the table actor loads with local tables."""
        saved = C.read_adapter_config(path)
        opts = {k: v for k, v in saved.items() if k in MeftConfig.model_fields}
        opts.update(overrides)
        if opts.get("tables") == "actor":
            opts["tables"] = "local"
        model = self.apply(base_model, opts)
        tensors = C.read_adapter_tensors(path)
        store = model.lathe_meft["store"]
        with torch.no_grad():
            for name, layer in meft_layers(model):
                key = f"{PREFIX}{name}"
                if f"{key}.keys" not in tensors:
                    raise ConfigError(f"{path}: no MEFT tensors for layer {name}")
                k, v = tensors[f"{key}.keys"], tensors[f"{key}.values"]
                if store is None:
                    layer.keys.copy_(k)
                    layer.values.copy_(v)
                else:
                    store.table(layer.layer, "keys").copy_(k)
                    store.table(layer.layer, "values").copy_(v)
                for sub in ("router", "proj"):
                    mod = getattr(layer, sub)
                    if mod is not None:
                        mod.weight.copy_(tensors[f"{key}.{sub}.weight"])
        return model

    def trainable_report(self, model: nn.Module) -> dict[str, int]:
        """Adapter parameter counts: on the device, and in the host tables."""
        device = sum(p.numel() for p in model.parameters() if p.requires_grad)
        store = self._state(model)["store"]
        host = 0
        if store is not None:
            host = sum(store.table(i, n).numel() for i in store.layer_ids() for n in ("keys", "values"))
        return {"device_trainable": device, "host_table_params": host}


register("peft", "meft")(Meft())
