"""`Method`: the apply/save/load contract the sft job uses, shared by every adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lathe.methods.peft import common as C
from lathe.platform.errors import ConfigError

PREFIX = "base_model.model."


class Method:
    """Subclasses set `name`, `Config`, `Layer` and implement `layer_tensors`/`new_layer`."""

    name = "adapter"
    Config: type[C.AdapterConfig] = C.AdapterConfig
    Layer: type[C.AdapterLayer] = C.AdapterLayer

    # --- injection ---------------------------------------------------------------------
    def config(self, options: dict | None) -> C.AdapterConfig:
        return C.parse_config(self.Config, options, self.name)

    def check(self, cfg, targets: list[tuple[str, nn.Module]]) -> None:
        """Raise ConfigError for shapes the method cannot adapt."""

    def new_layer(self, base: nn.Module, cfg) -> C.AdapterLayer:
        raise NotImplementedError

    def add_to_layer(self, layer: C.AdapterLayer, cfg) -> None:
        raise NotImplementedError

    def apply(self, model: nn.Module, options: dict | None = None) -> nn.Module:
        cfg = self.config(options)
        targets = C.find_targets(model, cfg.target_modules, self.name)
        for n, m in targets:
            if isinstance(m, C.AdapterLayer):
                raise ConfigError(f"adapter.target_modules ({self.name}): {n} is itself an adapter wrapper")
        # targets may be the base_layer of an existing wrapper: adapt the wrapper instead
        names = [n[: -len(".base_layer")] if n.endswith(".base_layer") else n for n, _ in targets]
        names = self.select_targets(cfg, names)
        mods = dict(model.named_modules())
        self.check(cfg, [(n, mods[n].base_layer if isinstance(mods[n], C.AdapterLayer) else mods[n]) for n in names])
        existing = getattr(model, "lathe_peft", {})
        if cfg.adapter_name in existing:
            raise ConfigError(f"adapter.adapter_name: {cfg.adapter_name!r} is already injected into this model")
        if existing and any(v["method"] != self.name for v in existing.values()):
            raise ConfigError(f"adapter: this model already holds a "
                              f"{next(iter(existing.values()))['method']} adapter; mix methods on separate copies")
        C.freeze_base(model, cfg, names)
        for n in names:
            m = mods[n]
            if isinstance(m, self.Layer):
                self.add_to_layer(m, self.layer_config(cfg, n))
            else:
                C.set_submodule(model, n, self.new_layer(m, self.layer_config(cfg, n)))
        resolved = cfg.target_modules if cfg.target_modules is not None else sorted({n.rsplit(".", 1)[-1] for n in names})
        existing = dict(existing)
        existing[cfg.adapter_name] = {"method": self.name, "config": {**cfg.model_dump(), "target_modules": resolved},
                                      "layers": names}
        model.lathe_peft = existing
        self.after_inject(model, cfg, names)
        return model

    def after_inject(self, model: nn.Module, cfg, names: list[str]) -> None:
        pass

    def select_targets(self, cfg, names: list[str]) -> list[str]:
        """Narrow the matched module names (LoRA: `layers_to_transform`)."""
        return names

    def layer_config(self, cfg, name: str):
        """The options one module gets (LoRA: `rank_pattern` / `alpha_pattern`)."""
        return cfg

    # --- saving ------------------------------------------------------------------------
    def layer_tensors(self, layer: C.AdapterLayer, adapter: str) -> dict[str, torch.Tensor]:
        """{suffix: tensor} for one layer, e.g. {"lora_A.weight": ...}."""
        raise NotImplementedError

    def load_layer_tensors(self, layer: C.AdapterLayer, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _meta(self, model: nn.Module, adapter: str | None) -> tuple[str, dict]:
        meta = getattr(model, "lathe_peft", None)
        if not meta:
            raise ConfigError(f"{self.name}.save: the model has no lathe adapter")
        adapter = adapter or next(iter(meta))
        if adapter not in meta:
            raise ConfigError(f"{self.name}.save: no adapter named {adapter!r} (have {sorted(meta)})")
        return adapter, meta[adapter]

    def state_tensors(self, model: nn.Module, adapter: str | None = None) -> dict[str, torch.Tensor]:
        adapter, meta = self._meta(model, adapter)
        out = {}
        for lname, layer in C.adapter_layers(model):
            if adapter in layer.adapter_names():
                for suffix, t in self.layer_tensors(layer, adapter).items():
                    out[f"{PREFIX}{lname}.{suffix}"] = t
        for k, t in C.extra_trainable_state(model, meta["config"]).items():
            out[PREFIX + k] = t
        return out

    def adapter_config(self, model: nn.Module, adapter: str | None = None) -> dict:
        adapter, meta = self._meta(model, adapter)
        base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        return {"lathe_method": self.name, "peft_type": self.name.upper(), "base_model_name_or_path": base,
                "lathe_layers": meta["layers"], **meta["config"]}

    def save(self, model: nn.Module, out_dir: str | Path, adapter: str | None = None) -> Path:
        return C.write_adapter(out_dir, self.adapter_config(model, adapter), self.state_tensors(model, adapter))

    def load(self, base_model: nn.Module, path: str | Path) -> nn.Module:
        cfg_dict = C.read_adapter_config(path)
        tensors = C.read_adapter_tensors(path)
        return self.load_state(base_model, cfg_dict, tensors, where=str(path))

    def options_from_saved(self, cfg_dict: dict) -> dict:
        fields = set(self.Config.model_fields)
        return {k: v for k, v in cfg_dict.items() if k in fields}

    def load_state(self, base_model: nn.Module, cfg_dict: dict, tensors: dict, where: str = "adapter") -> nn.Module:
        opts = self.options_from_saved(cfg_dict)
        model = self.apply(base_model, opts)
        adapter = opts.get("adapter_name", "default")
        by_layer: dict[str, dict[str, torch.Tensor]] = {}
        extra = {}
        layer_names = {n for n, _ in C.adapter_layers(model)}
        for k, t in tensors.items():
            key = k[len(PREFIX):] if k.startswith(PREFIX) else k
            owner = self._owner(key, layer_names)
            if owner is None:
                extra[key] = t
            else:
                by_layer.setdefault(owner, {})[key[len(owner) + 1:]] = t
        missing = [n for n in layer_names if n not in by_layer and self._layer_needs_tensors()]
        if missing:
            raise ConfigError(f"{where}: no adapter tensors for layer {missing[0]}")
        mods = dict(model.named_modules())
        for lname, ts in by_layer.items():
            self.load_layer_tensors(mods[lname], adapter, ts)
        self.load_extra(model, extra, where)
        return model

    def _layer_needs_tensors(self) -> bool:
        return True

    def load_extra(self, model: nn.Module, extra: dict, where: str) -> None:
        C.load_extra_state(model, extra)

    @staticmethod
    def _owner(key: str, layer_names: set[str]) -> str | None:
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            cand = ".".join(parts[:i])
            if cand in layer_names:
                return cand
        return None

    # --- conveniences ------------------------------------------------------------------
    merge = staticmethod(C.merge_adapters)
    unmerge = staticmethod(C.unmerge_adapters)
    merge_and_unload = staticmethod(C.merge_and_unload)
    disable_adapter = staticmethod(C.disable_adapter)
    trainable_report = staticmethod(C.trainable_report)
    export_merged = staticmethod(C.export_merged)


def param_like(base: nn.Module, shape: tuple[int, ...]) -> nn.Parameter:
    w = base.weight
    dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
    return nn.Parameter(torch.zeros(shape, dtype=dtype, device=w.device))


def adapter_dtype_of(base: nn.Module) -> torch.dtype:
    w = base.weight
    return torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype

