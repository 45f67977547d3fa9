"""Shared pieces of the unlearning losses: batch layout, NLL and sequence log-probabilities."""

from __future__ import annotations

from typing import Any

import torch

from lathe.methods.sft import pad_collate, token_nll
from lathe.platform.errors import ConfigError
from lathe.platform.registry import lookup

KIND = "unlearning_loss"


def pair_collate(pad_id: int):
    """Collate items `{"forget": enc, "retain": enc}` into one dict with prefixed keys."""
    inner = pad_collate(pad_id)

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        out = {}
        for part in ("forget", "retain"):
            for k, v in inner([it[part] for it in items]).items():
                out[f"{part}_{k}"] = v
        return out

    return collate


def split_batch(batch: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    p = f"{part}_"
    return {k[len(p):]: v for k, v in batch.items() if k.startswith(p)}


def logits_of(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over label tokens (what HF `model(**batch).loss` computes)."""
    nll, mask = token_nll(logits, labels)
    return nll.sum() / mask.sum().clamp(min=1)


def seq_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y|x) per row: the SUM of answer-token log-probabilities."""
    nll, _ = token_nll(logits, labels)
    return -nll.sum(-1)


def build_loss(name: str, options: dict[str, Any] | None = None, source: str = "unlearn.loss"):
    """Instantiate a registered loss with its validated options (one clear error on bad keys)."""
    from pydantic import ValidationError

    from lathe.platform.config import describe

    cls = lookup(KIND, name)
    try:
        cfg = cls.Config.model_validate(options or {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe(e, cls.Config)}") from None
    return cls(cfg)
