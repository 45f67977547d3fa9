"""FT-L: constrained fine-tuning of the rewrite-module weights within an L-inf ball (spec 6.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from lathe.data.evoke import EditRequest
from lathe.methods.editing.common import (EditResult, ModuleTemplates, Resolver, continuation_ids, finish, pad,
                                          snapshot)
from lathe.platform.config import Strict


class FTConfig(Strict):
    layers: list[int] = Field(default_factory=lambda: [0])
    num_steps: int = Field(25, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    norm_constraint: float | None = Field(5e-4, gt=0, description="L-inf radius; null = unconstrained FT")
    legacy_last_position_loss: bool = False
    modules: ModuleTemplates = ModuleTemplates()


def layers_for(model, cfg: FTConfig) -> list[int]:
    return list(cfg.layers)


def nll_loss(model, tok, requests: list[EditRequest], legacy: bool = False) -> torch.Tensor:
    """Mean over requests of the mean NLL of o*'s tokens (teacher-forced, or all at the last prompt position)."""
    seqs, spans = [], []
    for r in requests:
        p = tok(r.text)["input_ids"]
        t = continuation_ids(tok, r.text, r.target_new)
        seqs.append(p if legacy else p + t[:-1])
        spans.append((len(p), t))
    enc = pad(seqs, tok.pad_token_id or 0)
    logp = F.log_softmax(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float(), -1)
    losses = []
    for i, (n_p, t) in enumerate(spans):
        if legacy:
            losses.append(-logp[i, n_p - 1, t].mean())
        else:
            pos = torch.arange(n_p - 1, n_p - 1 + len(t))
            losses.append(-logp[i, pos, torch.tensor(t)].mean())
    return torch.stack(losses).mean()


def apply(model, tok, requests: list[EditRequest], cfg: FTConfig, stats=None, templates=None) -> EditResult:
    res = Resolver.of(model, cfg.modules)
    names = [res.rewrite_name(l) + ".weight" for l in cfg.layers]
    originals = snapshot(model, names)
    params = dict(model.named_parameters())
    train = [params[n] for n in names]
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in train:
        p.requires_grad_(True)
    opt = torch.optim.Adam(train, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    try:
        for _ in range(cfg.num_steps):
            opt.zero_grad()
            loss = nll_loss(model, tok, requests, cfg.legacy_last_position_loss)
            losses.append(float(loss.detach()))
            if loss.item() < 1e-2:
                break
            loss.backward()
            opt.step()
            if cfg.norm_constraint is not None:
                with torch.no_grad():
                    for n, p in zip(names, train):
                        w0 = originals[n]
                        p.copy_(torch.clamp(p, w0 - cfg.norm_constraint, w0 + cfg.norm_constraint))
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return finish(model, originals, {"losses": losses, "layers": list(cfg.layers)})
