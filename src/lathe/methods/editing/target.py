"""The target-vector optimisation shared by ROME (v*) and MEMIT (z), with the LTI loss as a plug-in.

δ is added at the subject-last token of every prompt, either to the rewrite module's output
(ROME, `site="mlp"`) or to the residual output of a block (MEMIT, `site="resid"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lathe.data.evoke import EditRequest
from lathe.methods.editing.common import (Resolver, add_at_positions, capture_blocks, continuation_ids, kl_rows,
                                          pad, subject_last_index)
from lathe.platform.config import Strict


class LTIConfig(Strict):
    """LTI: learn to inference like the unedited model given the fact in context (spec section 7)."""

    mid_layer: int | None = Field(None, description="L_mid; default round(0.5 * n_layers)")
    lambda_nll: float = Field(0.25, ge=0)
    lambda_last: float = Field(0.0325, ge=0)
    lambda_mid: float = Field(0.0525, ge=0)
    icl_template: str = Field("Imagine that {prompt} {target}\n", description="teacher prefix; '' disables")
    teacher_alignment: Literal["end_aligned", "legacy"] = "end_aligned"
    constr_pos: Literal["subject", "last", "all"] = "subject"


@dataclass
class TargetSpec:
    site: Literal["mlp", "resid"]
    layer: int
    lr: float
    steps: int
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    padding_side: str = "right"
    lti: LTIConfig | None = None
    mid_layer: int = 2
    essence: str = "{} is a"


@dataclass
class Batch:
    ids: torch.Tensor
    mask: torch.Tensor
    subj: list[int]  # padded subject-last position per row
    tgt_rows: list[int]
    tgt_cols: list[int]  # padded target positions (rewriting rows) then essence last position
    n_rewrite: int


def build_batch(tok, req: EditRequest, templates: list[str], target_ids: list[int], prefix: str,
                essence: str, side: str) -> tuple[Batch, list[list[int]], list[int]]:
    """Rewriting prompts (with `prefix`), then the essence prompt (never prefixed)."""
    seqs, subj_unpadded = [], []
    for t in templates:
        text = prefix + t.replace("{}", req.prompt).format(req.subject)
        ids = tok(text)["input_ids"] + target_ids[:-1]
        seqs.append(ids)
        subj_unpadded.append(subject_last_index(tok, text, req.subject))
    ess = essence.format(req.subject)
    seqs.append(tok(ess)["input_ids"])
    subj_unpadded.append(subject_last_index(tok, ess, req.subject))
    enc = pad(seqs, tok.pad_token_id if tok.pad_token_id is not None else 0, side)
    offs = enc["offsets"].tolist()
    m = len(target_ids)
    rows, cols = [], []
    for i, s in enumerate(seqs[:-1]):
        for j in range(m):
            rows.append(i)
            cols.append(offs[i] + len(s) - m + j)
    rows.append(len(seqs) - 1)
    cols.append(offs[-1] + len(seqs[-1]) - 1)
    subj = [o + s for o, s in zip(offs, subj_unpadded)]
    return Batch(enc["input_ids"], enc["attention_mask"], subj, rows, cols, len(seqs) - 1), seqs, offs


def _logp(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


def mid_positions(b: Batch, constr_pos: str) -> tuple[list[int], list[int], list[bool]]:
    """(rows, cols, is_subject) where the mid-layer term applies."""
    rows, cols, kind = [], [], []
    if constr_pos in ("subject", "all"):
        rows += list(range(len(b.subj)))
        cols += b.subj
        kind += [True] * len(b.subj)
    if constr_pos in ("last", "all"):
        rows += b.tgt_rows[:-1]
        cols += b.tgt_cols[:-1]
        kind += [False] * (len(b.tgt_rows) - 1)
    return rows, cols, kind


@torch.no_grad()
def teacher_distributions(model, tok, resolver: Resolver, req: EditRequest, templates: list[str],
                          target_ids: list[int], spec: TargetSpec, student: Batch) -> dict[str, torch.Tensor]:
    lti = spec.lti
    prefix = lti.icl_template.format(prompt=req.text, target=req.target_new) if lti.icl_template else ""
    tb, _, _ = build_batch(tok, req, templates, target_ids, prefix, spec.essence, spec.padding_side)
    if lti.teacher_alignment == "legacy":
        # the reference indexes the prefixed teacher with positions computed on unprefixed prompts
        tb = Batch(tb.ids, tb.mask, student.subj, student.tgt_rows, student.tgt_cols, tb.n_rewrite)
    with capture_blocks(resolver, mid_layers(spec)) as blocks:
        out = model(input_ids=tb.ids, attention_mask=tb.mask)
    q_last = _logp(out.logits[tb.tgt_rows, tb.tgt_cols])
    q_mid = _mid(resolver, blocks, tb, spec)
    return {"q_last": q_last, "q_mid": q_mid, "teacher_subj": torch.tensor(tb.subj),
            "teacher_tgt": torch.tensor(tb.tgt_cols), "teacher_ids": tb.ids}


def mid_layers(spec: TargetSpec) -> list[int]:
    """Blocks the mid-layer term reads: L_mid (subject positions), L_mid + 1 (target positions)."""
    c = spec.lti.constr_pos
    return ([spec.mid_layer] if c in ("subject", "all") else []) + ([spec.mid_layer + 1] if c in ("last", "all") else [])


def _mid(resolver: Resolver, blocks: dict[int, torch.Tensor], b: Batch, spec: TargetSpec) -> torch.Tensor:
    """Logit lens softmax(W_U · final_norm(h) + b) of block outputs h. Block outputs come from
    hooks: transformers' `hidden_states[-1]` is already final-normed, so reading the last block
    there would apply the norm twice."""
    rows, cols, kind = mid_positions(b, spec.lti.constr_pos)
    parts = []
    for is_subj in (True, False):
        sel = [i for i, k in enumerate(kind) if k == is_subj]
        if not sel:
            continue
        layer = spec.mid_layer if is_subj else spec.mid_layer + 1
        h = blocks[layer][[rows[i] for i in sel], [cols[i] for i in sel]]
        parts.append(_logp(resolver.logit_lens(h)))
    return torch.cat(parts, 0)


def optimize_target(model, tok, resolver: Resolver, req: EditRequest, templates: list[str], spec: TargetSpec,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(delta, init, info): δ minimising the editor's loss; v* (or z) = init + δ.

    Loss (base): mean_j NLL(o*|P_j) + kl_factor * KL(p_δ || p_0)[essence] + wd * |δ| / |init|^2.
    Loss (LTI):  λ_nll NLL + λ_last KL(p_last || q_last) + λ_mid KL(p_mid || q_mid) + wd * |δ| / |init|^2.
    """
    torch.manual_seed(seed)
    target_ids = continuation_ids(tok, req.text, req.target_new)
    b, _, _ = build_batch(tok, req, templates, target_ids, "", spec.essence, spec.padding_side)
    m = len(target_ids)
    module = resolver.rewrite(spec.layer) if spec.site == "mlp" else resolver.layer(spec.layer)
    d_model = _site_width(model, tok, module, b)
    delta = torch.zeros(d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=spec.lr)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return _loop(model, tok, resolver, req, templates, spec, target_ids, b, module, delta, opt)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _loop(model, tok, resolver, req, templates, spec, target_ids, b, module, delta, opt):
    m = len(target_ids)
    teacher = None
    if spec.lti is not None:
        teacher = teacher_distributions(model, tok, resolver, req, templates, target_ids, spec, b)
    tgt = torch.tensor(target_ids)
    n_rw = b.n_rewrite
    init = kl_init = None
    losses: list[float] = []
    rows = list(range(len(b.subj)))
    for it in range(spec.steps):
        opt.zero_grad()
        cap: dict = {}
        with add_at_positions(module, delta, rows, b.subj, capture=cap), \
                capture_blocks(resolver, mid_layers(spec) if spec.lti is not None else []) as blocks:
            out = model(input_ids=b.ids, attention_mask=b.mask)
        if init is None:
            init = cap["out"][0].float()
        logp = _logp(out.logits[b.tgt_rows, b.tgt_cols])  # (n_rw * m + 1, V)
        tok_lp = logp[:-1].gather(1, tgt.repeat(n_rw).view(-1, 1)).view(n_rw, m)
        nll = -(tok_lp.mean(1)).mean()
        wd = spec.weight_decay * (delta.norm() / init.norm() ** 2)
        if spec.lti is None:
            ess = logp[-1:]
            if kl_init is None:
                kl_init = ess.detach().clone()
            kl = kl_rows(ess, kl_init)
            loss = nll + spec.kl_factor * kl
            parts = {"nll": float(nll.detach()), "kl": float(kl.detach())}
        else:
            l = spec.lti
            kl_last = kl_rows(logp, teacher["q_last"])
            p_mid = _mid(resolver, blocks, b, spec)
            kl_mid = kl_rows(p_mid, teacher["q_mid"])
            loss = l.lambda_nll * nll + l.lambda_last * kl_last + l.lambda_mid * kl_mid
            parts = {"nll": float(nll.detach()), "kl_last": float(kl_last.detach()), "kl_mid": float(kl_mid.detach())}
        loss = loss + wd
        losses.append(float(loss.detach()))
        if float(loss.detach()) < 5e-2 or it == spec.steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            max_norm = spec.clamp_norm_factor * init.norm()
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    return delta.detach().clone(), init, {"losses": losses, "last": parts, "target_ids": target_ids}


@torch.no_grad()
def _site_width(model, tok, module, b: Batch) -> int:
    from lathe.methods.editing.common import capture_io

    with capture_io(module) as got:
        model(input_ids=b.ids[:1], attention_mask=b.mask[:1])
    return got["out"].shape[-1]
