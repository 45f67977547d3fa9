"""Multi-positive InfoNCE for bi-encoder training (ToolRet spec, section 6).

L = -(1/|T|) sum_{t in T} log( e^{s(q,t)/tau} / (e^{s(q,t)/tau} + sum_{n in N} e^{s(q,n)/tau}) )
with N the query's hard negatives plus, when `in_batch`, every other passage in the batch that is
not one of its positives. s is the cosine similarity of normalised embeddings.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch


def info_nce(q: torch.Tensor, p: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """q [B, D], p [N, D] (normalised), pos_mask / neg_mask [B, N] bool. Mean over queries of the
    mean over each query's positives."""
    s = q @ p.T / temperature
    neg = s.masked_fill(~neg_mask, float("-inf"))
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)  # -inf when a query has no negatives
    per_pos = torch.logaddexp(s, neg_lse.expand_as(s)) - s
    per_pos = per_pos.masked_fill(~pos_mask, 0.0)
    return (per_pos.sum(1) / pos_mask.sum(1).clamp(min=1)).mean()


def make_groups(row: dict, group_size: int, max_positives: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """(positives, negatives) for one training row: up to max_positives, and group_size - 1 negatives
    (sampled with replacement when the row has fewer)."""
    pos = row["pos"][:max_positives]
    negs = row["neg"]
    want = group_size - 1
    if not negs or want <= 0:
        return pos, []
    picked = rng.sample(negs, want) if len(negs) >= want else [rng.choice(negs) for _ in range(want)]
    return pos, picked


def batch_masks(batch_pos: Sequence[Sequence[str]], batch_neg: Sequence[Sequence[str]],
                in_batch: bool) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Unique passage texts of a batch and the [B, N] positive / negative masks."""
    texts: list[str] = []
    where: dict[str, int] = {}
    for group in list(batch_pos) + list(batch_neg):
        for t in group:
            if t not in where:
                where[t] = len(texts)
                texts.append(t)
    B, N = len(batch_pos), len(texts)
    pos_mask = torch.zeros(B, N, dtype=torch.bool)
    own_neg = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        for t in batch_pos[b]:
            pos_mask[b, where[t]] = True
        for t in batch_neg[b]:
            own_neg[b, where[t]] = True
    neg_mask = ~pos_mask if in_batch else (own_neg & ~pos_mask)
    return texts, pos_mask, neg_mask
