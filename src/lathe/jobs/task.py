"""The contract between a training method and the one training loop.

A method supplies a `TrainTask`: it builds its model and data on the worker and computes
a loss on a batch. Everything else (DDP, accumulation, precision, checkpoints, resume,
progress) is the loop's job. Tasks are pickled to the Ray workers, so keep them small:
hold configs and a `ModelSource`, not models or datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class Built:
    model: nn.Module
    tokenizer: Any
    dataset: Any  # a map-style dataset: __len__ and __getitem__
    collate: Callable[[list], dict[str, torch.Tensor]]


class TrainTask:
    """Subclass and implement `build` and `loss`; the rest has sensible defaults."""

    def build(self) -> Built:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """(loss, metrics). A metric may be a float or a 0-dim tensor; return device tensors as they
        are (e.g. `mask.sum()`, not `float(mask.sum())`): the loop reads them only when it logs, so the
        device is not waited on every micro-batch. "tokens" counts the batch's tokens (throughput)."""
        raise NotImplementedError

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        """Hook once the loop knows its optimizer-step count (e.g. ASLoRA schedules merges from it)."""

    def before_step(self, model: nn.Module, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Hook after the step's backward passes, before the optimizer step `step` (e.g. MEFT's host
        Adam, which must see this step's lr). Returns extra metrics to log."""
        return {}

    def after_step(self, model: nn.Module, step: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Hook after each optimizer step (e.g. ASLoRA merges). Returns extra metrics to log."""
        return {}

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the trainable tensors (all weights for full fine-tuning)."""
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.trainable_state(model)) - set(state)
        if missing:
            raise RuntimeError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in state.items():
                params[name].copy_(t)

    def save_artifact(self, model: nn.Module, tokenizer: Any, out_dir: Path) -> None:
        from lathe.platform.zoo import save_pretrained

        save_pretrained(model, tokenizer, out_dir)
