"""NPO: loss = γ·L_NPO + α·NLL(D_r), with
L_NPO = −(2/β)·mean_i log σ(−β·[log π_θ(y_i|x_i) − log π_ref(y_i|x_i)]) (sums over answer tokens).
At θ = π_ref it equals (2/β)·ln 2 (13.8629 for β = 0.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from lathe.methods.unlearning.common import KIND, logits_of, mean_nll, seq_logprob, split_batch
from lathe.platform.config import Strict
from lathe.platform.registry import register


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    return -(2 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@register(KIND, "npo")
class NPO:
    class Config(Strict):
        beta: float = Field(0.1, gt=0)
        gamma: float = Field(1.0, ge=0)
        alpha: float = Field(1.0, ge=0)

    needs_reference = True
    uses_retain = True

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, model, ref, batch):
        f, r = split_batch(batch, "forget"), split_batch(batch, "retain")
        logits = logits_of(model, f)
        with torch.no_grad():
            ref_logp = seq_logprob(logits_of(ref, f), f["labels"])
        npo = npo_loss(seq_logprob(logits, f["labels"]), ref_logp, self.cfg.beta)
        forget_nll = mean_nll(logits.detach(), f["labels"])
        loss = self.cfg.gamma * npo
        metrics = {"npo": float(npo.detach()), "forget_loss": float(forget_nll)}
        if self.cfg.alpha > 0:
            retain_nll = mean_nll(logits_of(model, r), r["labels"])
            loss = loss + self.cfg.alpha * retain_nll
            metrics["retain_loss"] = float(retain_nll.detach())
        return loss, metrics
