"""LoRA reference layer, HF peft semantics exactly (spec section 1).

h = W₀x + s · B A dropout(x),  s = α/r (α/√r with use_rslora),  A ~ kaiming_uniform(a=√5), B = 0.
Saved files are in HF peft's own format (keys `base_model.model.<path>.lora_A.weight`), so
`peft.PeftModel.from_pretrained` loads a lathe LoRA directory directly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from pydantic import Field, model_validator
from torch import nn

from lathe.methods.peft import common as C
from lathe.methods.peft.base import Method, adapter_dtype_of
from lathe.platform.registry import register


class LoraConfig(C.AdapterConfig):
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="peft: module-name pattern -> r")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="peft: module-name pattern -> alpha")
    layers_to_transform: list[int] | int | None = Field(None, description="peft: adapt only these layer indices")
    layers_pattern: list[str] | str | None = Field(None, description="peft: the layer list's name, e.g. 'layers'")

    @model_validator(mode="after")
    def _peft_rules(self):
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("layers_to_transform cannot be used with a regex target_modules (as in peft)")
        return self


# HF peft LoraConfig fields that change what the adapter computes and that lathe does not
# implement: loading an adapter that sets one is an error, never a silent approximation.
UNSUPPORTED_PEFT = {
    "use_dora": (False, "DoRA (use_dora) adapters"),
    "lora_bias": (False, "lora_bias (a bias on lora_B)"),
    "layer_replication": (None, "layer_replication"),
    "exclude_modules": (None, "exclude_modules"),
    "target_parameters": (None, "target_parameters"),
    "trainable_token_indices": (None, "trainable_token_indices"),
    "use_qalora": (False, "QALoRA (use_qalora)"),
    "use_bdlora": (None, "BD-LoRA (use_bdlora)"),
}


def pattern_key(patterns: dict, name: str) -> str | None:
    """peft's rule: the first pattern p with re.match(r"(^|.*\.)p$", name)."""
    for key in patterns:
        if re.match(rf"(^|.*\.){key}$", name):
            return key
    return None


def layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    """The decoder-layer index in a module name, as peft finds it (`...layers.3.self_attn.q_proj` -> 3)."""
    pats = [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or [])
    if not pats:
        m = re.match(r".*\.[^.]*\.(\d+)\.", name)
        return int(m.group(1)) if m else None
    for p in pats:
        m = re.match(rf".*\.{p}\.(\d+)\.", name)
        if m:
            return int(m.group(1))
    return None


def lora_scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraLayer(C.AdapterLayer):
    method = "lora"

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool | None = None):
        super().__init__(base_layer, fan_in_fan_out)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.r: dict[str, int] = {}

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float, rslora: bool) -> None:
        w = self.base_layer.weight
        dt = adapter_dtype_of(self.base_layer)
        a = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=dt)
        b = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=dt)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.dropout[name] = C.make_dropout(dropout)
        self.scaling[name] = lora_scale(alpha, r, rslora)
        self.r[name] = r
        self.active_adapters.append(name)

    def adapter_dtype(self, name: str) -> torch.dtype:
        return self.lora_A[name].weight.dtype

    def adapter_out(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B[name](self.lora_A[name](self.dropout[name](x))) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):
            a, b = a.float(), b.float()
        d = (b @ a) * self.scaling[name]
        return d.T if self.fan_in_fan_out else d


class LoRA(Method):
    name = "lora"
    Config = LoraConfig
    Layer = LoraLayer

    def new_layer(self, base: nn.Module, cfg: LoraConfig) -> LoraLayer:
        layer = LoraLayer(base, cfg.fan_in_fan_out)
        self.add_to_layer(layer, cfg)
        return layer

    def add_to_layer(self, layer: LoraLayer, cfg: LoraConfig) -> None:
        layer.add_adapter(cfg.adapter_name, cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora)

    def select_targets(self, cfg: LoraConfig, names: list[str]) -> list[str]:
        if cfg.layers_to_transform is None:
            return names
        keep = {cfg.layers_to_transform} if isinstance(cfg.layers_to_transform, int) else set(cfg.layers_to_transform)
        out = [n for n in names if layer_index(n, cfg.layers_pattern) in keep]
        if not out:
            raise C.ConfigError(f"adapter.layers_to_transform={cfg.layers_to_transform!r} (lora): no target module "
                                f"sits in those layers (layers_pattern={cfg.layers_pattern!r}; e.g. {names[0]})")
        return out

    def layer_config(self, cfg: LoraConfig, name: str) -> LoraConfig:
        r_key, a_key = pattern_key(cfg.rank_pattern, name), pattern_key(cfg.alpha_pattern, name)
        if r_key is None and a_key is None:
            return cfg
        return cfg.model_copy(update={"r": cfg.rank_pattern[r_key] if r_key is not None else cfg.r,
                                      "lora_alpha": cfg.alpha_pattern[a_key] if a_key is not None else cfg.lora_alpha})

    def layer_tensors(self, layer: LoraLayer, adapter: str) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": layer.lora_A[adapter].weight, "lora_B.weight": layer.lora_B[adapter].weight}

    def load_layer_tensors(self, layer: LoraLayer, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        known = {f"{p}.weight" for p in ("lora_A", "lora_B")} | {f"{p}.{adapter}.weight" for p in ("lora_A", "lora_B")}
        extra = sorted(set(tensors) - known)
        if extra:
            what = "DoRA magnitudes (lora_magnitude_vector)" if any("lora_magnitude_vector" in k for k in extra) \
                else f"tensor {extra[0]!r}"
            raise C.ConfigError(f"adapter file holds {what}, which lathe's LoRA does not implement; merge the "
                                f"adapter into the base model with peft (merge_and_unload) and load that instead")
        with torch.no_grad():
            for part, mod in (("lora_A", layer.lora_A[adapter]), ("lora_B", layer.lora_B[adapter])):
                key = f"{part}.weight" if f"{part}.weight" in tensors else f"{part}.{adapter}.weight"
                if key not in tensors:
                    raise C.ConfigError(f"adapter file lacks {part} for a layer (keys: {sorted(tensors)})")
                t = tensors[key]
                if t.shape != mod.weight.shape:
                    raise C.ConfigError(f"adapter {part} has shape {tuple(t.shape)}, layer expects "
                                        f"{tuple(mod.weight.shape)}")
                mod.weight.copy_(t)

    def adapter_config(self, model: nn.Module, adapter: str | None = None) -> dict:
        """HF peft LoraConfig fields (+ lathe_method), so peft can read the directory."""
        adapter, meta = self._meta(model, adapter)
        cfg = meta["config"]
        base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        return {
            "lathe_method": "lora", "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base,
            "r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
            "target_modules": cfg["target_modules"], "bias": cfg["bias"],
            "fan_in_fan_out": bool(cfg["fan_in_fan_out"]), "use_rslora": cfg["use_rslora"],
            "modules_to_save": cfg["modules_to_save"] or None, "init_lora_weights": True,
            "inference_mode": True, "use_dora": False, "rank_pattern": cfg["rank_pattern"],
            "alpha_pattern": cfg["alpha_pattern"], "layers_to_transform": cfg["layers_to_transform"],
            "layers_pattern": cfg["layers_pattern"],
        }

    def options_from_saved(self, cfg_dict: dict) -> dict:
        for key, (default, what) in UNSUPPORTED_PEFT.items():
            v = cfg_dict.get(key, default)
            if v not in (default, None, False, [], {}):
                raise C.ConfigError(f"adapter_config.json: {what}: not supported by lathe's LoRA ({key}={v!r}); "
                                    f"merge the adapter into the base model with peft (merge_and_unload) instead")
        opts = super().options_from_saved(cfg_dict)
        for key in ("rank_pattern", "alpha_pattern"):
            if not opts.get(key):
                opts.pop(key, None)
        if opts.get("modules_to_save") is None:
            opts.pop("modules_to_save", None)
        opts.setdefault("fan_in_fan_out", None)
        if not opts["fan_in_fan_out"]:
            opts["fan_in_fan_out"] = None  # auto-detect (peft writes False for Linear)
        return opts


def export_peft(model: nn.Module, out_dir: str | Path, adapter: str | None = None) -> Path:
    """A LoRA adapter as a clean HF peft directory (no lathe-only keys)."""
    method = LoRA()
    out = method.save(model, out_dir, adapter)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg.pop("lathe_method", None)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


register("peft", "lora")(LoRA())
