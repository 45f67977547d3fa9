"""Supervised fine-tuning pieces, pure PyTorch: QA encoding with answer-only labels, the loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100


def prompt_text(tokenizer: Any, question: str) -> str:
    """The prompt for `question`: the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {question}\nAnswer: "


def encode_qa(tokenizer: Any, question: str, answer: str, max_length: int = 256) -> dict[str, list[int]]:
    """Token ids of prompt+answer+eos, with labels on the answer (and eos) only."""
    prompt = tokenizer(prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and not getattr(tokenizer, "chat_template", None):
        prompt = [tokenizer.bos_token_id] + prompt
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + target)[:max_length]
    labels = ([IGNORE] * len(prompt) + target)[:max_length]
    return {"input_ids": ids, "labels": labels}


def pad_collate(pad_id: int):
    """Collate encoded rows into right-padded tensors with an attention mask."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of next-token prediction, and the mask of positions that count."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.clamp(min=0).reshape(-1),
                          reduction="none").view_as(targets)
    return nll * mask, mask


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean NLL over answer tokens; reports the token count for throughput."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, mask = token_nll(logits, batch["labels"])
    n = mask.sum()
    return nll.sum() / n.clamp(min=1), {"tokens": float(batch["attention_mask"].sum())}


@torch.no_grad()
def answer_accuracy(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float, int]:
    """(sum NLL, correct next-token predictions, counted tokens) over answer tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, mask = token_nll(logits, batch["labels"])
    pred = logits[:, :-1].argmax(-1)
    correct = ((pred == batch["labels"][:, 1:]) & mask).sum()
    return float(nll.sum()), float(correct), int(mask.sum())
