"""Batched response generation with transformers `generate` (left-padded prompts).

The engine actors of the macpo job use this when vLLM is not the engine; evaluation uses it
for greedy responses. Sampling is seeded per call, so a (model, prompts, seed) triple always
gives the same responses.
"""

from __future__ import annotations

from typing import Any

import torch

from lathe.methods.alignment.encoding import prompt_ids


@torch.no_grad()
def generate(model: torch.nn.Module, tok: Any, prompts: list[str], max_new_tokens: int = 256,
             temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, batch_size: int = 32,
             max_prompt: int = 512) -> tuple[list[str], int]:
    """(responses, number of generated tokens). temperature 0 means greedy decoding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    enc = [prompt_ids(tok, p, max_prompt) for p in prompts]
    out: list[str | None] = [None] * len(prompts)
    n_tokens = 0
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    gen = torch.Generator().manual_seed(seed)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, width - len(enc[i]):] = torch.tensor(enc[i])
            mask[j, width - len(enc[i]):] = 1
        sample = temperature > 0
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        res = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             min_new_tokens=1, do_sample=sample, temperature=temperature if sample else None,
                             top_p=top_p if sample else None, top_k=None if sample else None,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for j, i in enumerate(idx):
            new = res[j, width:].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            new = [t for t in new if t != tok.pad_token_id]
            n_tokens += len(new)
            out[i] = tok.decode(new, skip_special_tokens=True).strip()
    model.train(was_training)
    return out, n_tokens  # type: ignore[return-value]
