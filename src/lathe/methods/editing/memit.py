"""MEMIT: multi-layer, batched edits (spec section 6.3)."""

from __future__ import annotations

import torch
from pydantic import Field

from lathe.data.evoke import EditRequest
from lathe.methods.editing.common import (EditResult, ModuleTemplates, Resolver, add_delta, context_templates,
                                          finish, io_at_subject, num_layers, preset_layers, snapshot, with_ridge)
from lathe.methods.editing.target import LTIConfig, TargetSpec, optimize_target
from lathe.platform.config import Strict


class MemitConfig(Strict):
    layers: list[int] | None = Field(None, description="edited layers; default round(.12 N)..round(.28 N)")
    v_lr: float = Field(0.5, gt=0)
    v_num_grad_steps: int = Field(25, ge=1)
    v_weight_decay: float = Field(0.5, ge=0)
    clamp_norm_factor: float = Field(0.75, gt=0)
    kl_factor: float = Field(0.0625, ge=0)
    mom2_update_weight: float = Field(15000.0, ge=0)
    cov_ridge: float = Field(0.0, ge=0)
    context_template_length_params: list[list[int]] = Field(default_factory=lambda: [[10, 5]])
    template_seed: int = 0
    padding_side: str = Field("right", pattern="^(left|right)$")
    modules: ModuleTemplates = ModuleTemplates()
    lti: LTIConfig | None = None


def layers_for(model, cfg: MemitConfig) -> list[int]:
    return list(cfg.layers) if cfg.layers else preset_layers(num_layers(model))["memit_layers"]


def apply(model, tok, requests: list[EditRequest], cfg: MemitConfig,
          stats: dict[int, torch.Tensor] | None = None, templates: list[str] | None = None) -> EditResult:
    res = Resolver.of(model, cfg.modules)
    layers = layers_for(model, cfg)
    if stats is None or any(l not in stats for l in layers):
        raise ValueError(f"MEMIT needs covariance stats for layers {layers}")
    names = [res.rewrite_name(l) + ".weight" for l in layers]
    originals = snapshot(model, names)
    if templates is None:
        templates = context_templates(model, tok, cfg.context_template_length_params, cfg.template_seed)
    mid = cfg.lti.mid_layer if cfg.lti and cfg.lti.mid_layer is not None else preset_layers(num_layers(model))["mid_layer"]
    z_layer = layers[-1]
    spec = TargetSpec(site="resid", layer=z_layer, lr=cfg.v_lr, steps=cfg.v_num_grad_steps,
                      weight_decay=cfg.v_weight_decay, clamp_norm_factor=cfg.clamp_norm_factor,
                      kl_factor=cfg.kl_factor, padding_side=cfg.padding_side, lti=cfg.lti, mid_layer=mid)
    zs, infos = [], []
    for req in requests:
        delta, init, info = optimize_target(model, tok, res, req, templates, spec)
        zs.append(init + delta)
        infos.append(info)
    Z = torch.stack(zs, 1).double()  # d_model x n
    plain = [r.text for r in requests]
    subjects = [r.subject for r in requests]
    checks = []
    for i, layer in enumerate(layers):
        module = res.rewrite(layer)
        ks = [io_at_subject(model, tok, module, [t.replace("{}", r.prompt).format(r.subject) for t in templates],
                            [r.subject] * len(templates))[0].mean(0) for r in requests]
        K = torch.stack(ks, 1).double()  # d_in x n
        _, H = io_at_subject(model, tok, res.layer(z_layer), plain, subjects)
        T = Z - H.T.double()
        resid = T / (len(layers) - i)
        C = with_ridge(stats[layer].double(), cfg.cov_ridge)
        A = cfg.mom2_update_weight * C + K @ K.T
        upd = torch.linalg.solve(A, K @ resid.T).T  # = resid K^T A^-1 (A symmetric)
        add_delta(module, upd.float())
        checks.append({"layer": layer, "A": A, "K": K, "resid": resid, "upd": upd})
    return finish(model, originals, {"requests": infos, "layers": layers, "solve": checks, "zs": Z})
