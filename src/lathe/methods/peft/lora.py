"""LoRA reference layer, HF peft semantics exactly (spec section 1).

h = W₀x + s · B A dropout(x),  s = α/r (α/√r with use_rslora),  A ~ kaiming_uniform(a=√5), B = 0.
Saved files are in HF peft's own format (keys `base_model.model.<path>.lora_A.weight`), so
`peft.PeftModel.from_pretrained` loads a lathe LoRA directory directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from lathe.methods.peft import common as C
from lathe.methods.peft.base import Method, adapter_dtype_of
from lathe.platform.registry import register


class LoraConfig(C.AdapterConfig):
    pass


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

    def layer_tensors(self, layer: LoraLayer, adapter: str) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": layer.lora_A[adapter].weight, "lora_B.weight": layer.lora_B[adapter].weight}

    def load_layer_tensors(self, layer: LoraLayer, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
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
            "inference_mode": True, "use_dora": False,
        }

    def options_from_saved(self, cfg_dict: dict) -> dict:
        opts = super().options_from_saved(cfg_dict)
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
