"""GradDiff-KL (TOFU "KL"): loss = γ·(−NLL(D_f)) + α·KL(π_ref ‖ π_θ) on retain inputs.

KL is taken per position over the vocabulary, Σ p_ref (log p_ref − log p_θ), and averaged
over `kl_positions`: `all` (every B×T position, as the reference code), `attended`
(attention_mask = 1, the default) or `answer` (label positions only).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lathe.methods.sft import IGNORE
from lathe.methods.unlearning.common import KIND, logits_of, mean_nll, split_batch
from lathe.platform.config import Strict
from lathe.platform.registry import register


def kl_ref_to_model(logits: torch.Tensor, ref_logits: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor, positions: str) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), -1)
    logq = F.log_softmax(ref_logits.float(), -1)
    per = F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1)  # B×T
    if positions == "all":
        return per.mean()
    if positions == "attended":
        w = attention_mask.float()
    else:  # answer: positions whose next token is a label
        w = torch.zeros_like(per)
        w[:, :-1] = (labels[:, 1:] != IGNORE).float()
    return (per * w).sum() / w.sum().clamp(min=1)


@register(KIND, "kl")
class GradDiffKL:
    class Config(Strict):
        gamma: float = Field(1.0, ge=0)
        alpha: float = Field(1.0, ge=0)
        kl_positions: Literal["all", "attended", "answer"] = "attended"

    needs_reference = True
    uses_retain = True

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, model, ref, batch):
        f, r = split_batch(batch, "forget"), split_batch(batch, "retain")
        forget_nll = mean_nll(logits_of(model, f), f["labels"])
        with torch.no_grad():
            ref_logits = logits_of(ref, r)
        kl = kl_ref_to_model(logits_of(model, r), ref_logits, r["attention_mask"], r["labels"],
                             self.cfg.kl_positions)
        loss = self.cfg.gamma * (-forget_nll) + self.cfg.alpha * kl
        return loss, {"forget_loss": float(forget_nll.detach()), "kl": float(kl.detach())}
