"""ROME: rank-one model editing of one MLP output projection (spec section 6.2)."""

from __future__ import annotations

import torch
from pydantic import Field

from lathe.data.evoke import EditRequest
from lathe.methods.editing.common import (EditResult, ModuleTemplates, Resolver, add_delta, context_templates,
                                          finish, io_at_subject, num_layers, preset_layers, snapshot, weight_of,
                                          with_ridge)
from lathe.methods.editing.target import LTIConfig, TargetSpec, optimize_target
from lathe.platform.config import Strict


class RomeConfig(Strict):
    layer: int | None = Field(None, description="edited layer; default round(0.17 * n_layers)")
    v_lr: float = Field(0.5, gt=0)
    v_num_grad_steps: int = Field(20, ge=1)
    v_weight_decay: float = Field(0.5, ge=0)
    clamp_norm_factor: float = Field(4.0, gt=0)
    kl_factor: float = Field(0.0625, ge=0)
    mom2_adjustment: bool = True
    cov_ridge: float = Field(0.0, ge=0)
    context_template_length_params: list[list[int]] = Field(default_factory=lambda: [[5, 10], [10, 10]])
    template_seed: int = 0
    padding_side: str = Field("right", pattern="^(left|right)$")
    modules: ModuleTemplates = ModuleTemplates()
    lti: LTIConfig | None = None


def layers_for(model, cfg: RomeConfig) -> list[int]:
    return [cfg.layer if cfg.layer is not None else preset_layers(num_layers(model))["rome_layer"]]


def apply(model, tok, requests: list[EditRequest], cfg: RomeConfig, stats: dict[int, torch.Tensor] | None = None,
          templates: list[str] | None = None) -> EditResult:
    """Rank-one updates, one request after another. `stats[layer]` = E[k k^T] of the rewrite input."""
    res = Resolver.of(model, cfg.modules)
    layer = layers_for(model, cfg)[0]
    module = res.rewrite(layer)
    name = res.rewrite_name(layer) + ".weight"
    originals = snapshot(model, [name])
    if templates is None:
        templates = context_templates(model, tok, cfg.context_template_length_params, cfg.template_seed)
    mid = cfg.lti.mid_layer if cfg.lti and cfg.lti.mid_layer is not None else preset_layers(num_layers(model))["mid_layer"]
    infos = []
    for req in requests:
        # u = C^-1 k*, k* averaged over context templates
        texts = [t.replace("{}", req.prompt).format(req.subject) for t in templates]
        k_all, _ = io_at_subject(model, tok, module, texts, [req.subject] * len(texts))
        k_star = k_all.mean(0)
        if cfg.mom2_adjustment:
            if stats is None or layer not in stats:
                raise ValueError(f"ROME with mom2_adjustment needs covariance stats for layer {layer}")
            c = with_ridge(stats[layer].double(), cfg.cov_ridge)
            u = torch.linalg.solve(c, k_star.double()).float()
        else:
            u = k_star.clone()
        u = u / u.norm()
        spec = TargetSpec(site="mlp", layer=layer, lr=cfg.v_lr, steps=cfg.v_num_grad_steps,
                          weight_decay=cfg.v_weight_decay, clamp_norm_factor=cfg.clamp_norm_factor,
                          kl_factor=cfg.kl_factor, padding_side=cfg.padding_side, lti=cfg.lti, mid_layer=mid)
        delta, init, info = optimize_target(model, tok, res, req, templates, spec)
        v_star = init + delta
        k, out = io_at_subject(model, tok, module, [req.text], [req.subject])
        k, out = k[0], out[0]
        w = (v_star - out) / torch.dot(k, u)
        upd = torch.outer(w, u)
        add_delta(module, upd)
        info.update({"v_star": v_star, "k": k, "layer": layer})
        infos.append(info)
    return finish(model, originals, {"requests": infos, "layers": [layer]})
