"""Response-only log-probabilities and perplexity under a model, batched.

PPL(y|x) = exp(−(1/n) Σ_m log π(y_m | x, y_<m)) over the n response tokens (eos included).
Prompt tokens and padding never count.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lathe.methods.alignment.dpo import policy_logps
from lathe.methods.alignment.encoding import encode
from lathe.methods.sft import pad_collate


@torch.no_grad()
def response_logps(model: torch.nn.Module, tok: Any, prompts: list[str], responses: list[str],
                   max_prompt: int = 512, max_response: int = 256, batch_size: int = 16) -> list[tuple[float, int]]:
    """[(Σ log π(y|x) over response tokens, n response tokens)] per (prompt, response)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = pad_collate(tok.pad_token_id)
    enc = [encode(tok, p, r, max_prompt, max_response) for p, r in zip(prompts, responses)]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]["input_ids"]))  # less padding per batch
    out: list[tuple[float, int] | None] = [None] * len(enc)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        batch = {k: v.to(device) for k, v in collate([enc[i] for i in idx]).items()}
        logp, n = policy_logps(model, batch)
        for j, i in enumerate(idx):
            out[i] = (float(logp[j]), int(n[j]))
    model.train(was_training)
    return out  # type: ignore[return-value]


def perplexity(logp_sum: float, n_tokens: int) -> float:
    return math.exp(-logp_sum / max(n_tokens, 1))


def response_ppl(model: torch.nn.Module, tok: Any, prompts: list[str], responses: list[str], **kw) -> list[float]:
    return [perplexity(s, n) for s, n in response_logps(model, tok, prompts, responses, **kw)]
