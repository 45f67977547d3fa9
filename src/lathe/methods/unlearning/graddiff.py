"""GradDiff: loss = γ·(−NLL(D_f)) + α·NLL(D_r)."""

from __future__ import annotations

from pydantic import Field

from lathe.methods.unlearning.common import KIND, logits_of, mean_nll, split_batch
from lathe.platform.config import Strict
from lathe.platform.registry import register


@register(KIND, "graddiff")
class GradDiff:
    class Config(Strict):
        gamma: float = Field(1.0, ge=0, description="weight of the forget term")
        alpha: float = Field(1.0, ge=0, description="weight of the retain NLL")

    needs_reference = False
    uses_retain = True

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, model, ref, batch):
        f, r = split_batch(batch, "forget"), split_batch(batch, "retain")
        forget_nll = mean_nll(logits_of(model, f), f["labels"])
        retain_nll = mean_nll(logits_of(model, r), r["labels"])
        loss = self.cfg.gamma * (-forget_nll) + self.cfg.alpha * retain_nll
        return loss, {"forget_loss": float(forget_nll.detach()), "retain_loss": float(retain_nll.detach())}
