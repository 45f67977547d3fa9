"""Parameter-efficient fine-tuning: LoRA (HF peft semantics), MELoRA and ASLoRA.

Importing this package registers the "peft" kinds "lora", "melora", "aslora". Each is a
`Method` with `apply(model, options) -> model`, `save(model, dir)`, `load(base, dir)`
(ASLoRA also `after_step`, which runs its B merges). See docs/peft.md.
"""

from lathe.methods.peft.aslora import ASLoRA, AsloraConfig, AsloraLayer
from lathe.methods.peft.base import Method
from lathe.methods.peft.common import (
    adapter_layers,
    disable_adapter,
    export_merged,
    get_nb_trainable_parameters,
    merge_adapters,
    merge_and_unload,
    print_trainable_parameters,
    set_active_adapters,
    trainable_report,
    unmerge_adapters,
)
from lathe.methods.peft.lora import LoRA, LoraConfig, LoraLayer, export_peft
from lathe.methods.peft.melora import MELoRA, MeloraConfig, MeloraLayer

METHODS = {"lora": LoRA, "melora": MELoRA, "aslora": ASLoRA}


def get(name: str) -> Method:
    """An instance of a registered method by name."""
    from lathe.platform.registry import lookup

    obj = lookup("peft", name)
    return obj() if isinstance(obj, type) else obj


def load_adapter(base_model, path):
    """Load any lathe (or HF peft LoRA) adapter directory onto `base_model`."""
    from lathe.methods.peft.common import read_adapter_config

    meta = read_adapter_config(path)
    method = meta.get("lathe_method") or str(meta.get("peft_type", "lora")).lower()
    return get(method).load(base_model, path)


__all__ = [
    "ASLoRA", "AsloraConfig", "AsloraLayer", "LoRA", "LoraConfig", "LoraLayer", "MELoRA", "MeloraConfig",
    "MeloraLayer", "METHODS", "Method", "adapter_layers", "disable_adapter", "export_merged", "export_peft",
    "get", "get_nb_trainable_parameters", "load_adapter", "merge_adapters", "merge_and_unload",
    "print_trainable_parameters", "set_active_adapters", "trainable_report", "unmerge_adapters",
]
