"""Key-expert routing, per-token top-k and the union budget (spec 4.2-4.3), pure functions.

Shared by the masked reference (all N scores on the device), the offload engine (candidate keys
scored on the host) and the Ray table actor, so the three select the same ids.
"""

from __future__ import annotations

import torch
from torch import nn


def route(x: torch.Tensor, router: nn.Module | None, n_probe: int, softmax: bool,
          fixed_gates: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates g (T, E) and the ids of the top `n_probe` experts per token (T, n_probe).

    No router (E = 1): every gate is 1. `fixed_gates` is a test hook that sets every gate to 1
    (the probe then follows the raw router, which does not matter when n_probe = E)."""
    if router is None:
        ones = x.new_ones(x.shape[0], 1)
        return ones, torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
    g = router(x)
    if softmax:
        g = g.softmax(-1)
    probe = g.detach().topk(n_probe, dim=-1).indices
    if fixed_gates:
        g = torch.ones_like(g)
    return g, probe


def expert_of(ids: torch.Tensor, per_expert: int) -> torch.Tensor:
    return torch.div(ids, per_expert, rounding_mode="floor")


def topk_masked_scores(raw: torch.Tensor, gates: torch.Tensor, probe: torch.Tensor, k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked reference: s_j = g_{e(j)}·raw_j for keys in probed experts, −inf elsewhere; per-token
    top-k. Returns (ids (T, k), activations ReLU(s) with picked −inf set to 0), differentiable."""
    T, N = raw.shape
    E = gates.shape[1]
    per = N // E
    gate_n = gates.repeat_interleave(per, dim=1)
    probed = torch.zeros(T, E, dtype=torch.bool, device=raw.device).scatter_(1, probe, True)
    s = (raw * gate_n).masked_fill(~probed.repeat_interleave(per, dim=1), float("-inf"))
    vals, ids = s.topk(k, dim=1)
    act = torch.relu(torch.where(torch.isinf(vals), torch.zeros_like(vals), vals))
    return ids, act


@torch.no_grad()
def topk_candidates(keys: torch.Tensor, xk: torch.Tensor, gsel: torch.Tensor, probe: torch.Tensor, k: int,
                    num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Host scoring: only the n_probe·N/E candidate keys of each token, then per-token top-k.

    keys (N, d'), xk (T, d'), gsel: the probed experts' gates (T, n_probe), probe (T, n_probe).
    Returns (ids (T, k) int64, ReLU scores (T, k)). One matmul per expert that some token probed."""
    N = keys.shape[0]
    T, p = probe.shape
    per = N // num_experts
    kv = keys.view(num_experts, per, -1)
    flat = probe.reshape(-1).long()
    tok = torch.arange(T, device=probe.device).repeat_interleave(p)
    scores = torch.empty(T * p, per, dtype=keys.dtype, device=keys.device)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    start = 0
    for e, c in enumerate(counts):
        if c:
            rows = order[start: start + c]
            scores[rows] = xk[tok[rows]].to(keys.dtype) @ kv[e].T
            start += c
    scores = scores.view(T, p, per) * gsel[:, :, None].to(scores.dtype)
    cand = flat.view(T, p, 1) * per + torch.arange(per, device=probe.device)
    vals, j = scores.reshape(T, -1).topk(k, dim=1)
    return cand.reshape(T, -1).gather(1, j), torch.relu(vals)


@torch.no_grad()
def apply_budget(ids: torch.Tensor, act: torch.Tensor, n_max: int, num_neurons: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of the per-token ids, cut to `n_max` rows by the documented rule.

    Rule: when the union is larger than n_max, keep the n_max ids with the largest ReLU score summed
    over the micro-batch's tokens that picked them (ties: the lower id). Returns (kept ids sorted
    ascending (n,), keep mask (T, k)); a per-token id that was dropped contributes 0."""
    flat = ids.reshape(-1)
    union = torch.unique(flat)
    if union.numel() <= n_max:
        return union, torch.ones_like(ids, dtype=torch.bool)
    sums = torch.zeros(num_neurons, dtype=act.dtype, device=act.device).index_add_(0, flat, act.reshape(-1).detach())
    order = torch.sort(-sums[union], stable=True).indices[:n_max]
    kept = torch.sort(union[order]).values
    return kept, torch.isin(ids, kept)


def slot_map(ids: torch.Tensor, kept: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-token buffer slots (T, k): the position of each id in `kept`, −1 when it was dropped."""
    pos = torch.searchsorted(kept, ids).clamp(max=max(kept.numel() - 1, 0))
    return torch.where(keep, pos, torch.full_like(pos, -1))
