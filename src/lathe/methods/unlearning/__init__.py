"""Unlearning methods, pure PyTorch: one small loss module per base method, registered under
kind "unlearning_loss" (ga, graddiff, kl, npo), and the UIPE parameter-extrapolation operator.

A loss module is a class with a strict `Config`, `needs_reference` (a frozen copy of θ_ini),
and `__call__(model, ref, batch) -> (loss, metrics)`, where the batch holds a forget batch
(`forget_input_ids`, `forget_attention_mask`, `forget_labels`) and a retain batch of the same
size (`retain_*`). New methods (SimNPO, RMU, ...) plug in by registering another class.
"""

from lathe.methods.unlearning import ga, graddiff, kl, npo  # noqa: F401  (registers the losses)
from lathe.methods.unlearning.common import build_loss, pair_collate, split_batch  # noqa: F401
from lathe.methods.unlearning.uipe import (  # noqa: F401
    extrapolate_model,
    extrapolate_state,
    checkpoint_fingerprint,
    scale_adapter_state,
    write_checkpoint,
)
