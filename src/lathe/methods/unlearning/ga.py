"""GA (gradient ascent): loss = −NLL(D_f)."""

from __future__ import annotations

from lathe.methods.unlearning.common import KIND, logits_of, mean_nll, split_batch
from lathe.platform.config import Strict
from lathe.platform.registry import register


@register(KIND, "ga")
class GradAscent:
    class Config(Strict):
        pass

    needs_reference = False
    uses_retain = False

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, model, ref, batch):
        f = split_batch(batch, "forget")
        forget_nll = mean_nll(logits_of(model, f), f["labels"])
        return -forget_nll, {"forget_loss": float(forget_nll.detach())}
