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


def encode_prompt(tokenizer: Any, prompt: str, answer: str, max_length: int = 256) -> dict[str, list[int]]:
    """A prompt used verbatim (no BOS, as chat clients send it) + answer + eos, labels on the answer.
    Too long: the prompt is cut from the left, so its end (the latest turn) survives."""
    target = (tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    target = target[: max(1, max_length - max_length // 4)]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(target))):]
    return {"input_ids": prompt_ids + target, "labels": [IGNORE] * len(prompt_ids) + target}


def encode_row(tokenizer: Any, row: dict, max_length: int = 256) -> dict[str, list[int]]:
    """{question, answer} (QA, chat-templated), {prompt, answer} (verbatim prompt) or
    {messages, answer} (rendered like the LLM client renders a chat: template, else transcript)."""
    if "question" in row:
        return encode_qa(tokenizer, row["question"], row["answer"], max_length)
    if "prompt" in row:
        return encode_prompt(tokenizer, row["prompt"], row["answer"], max_length)
    from lathe.methods.agents.llm import render_chat

    return encode_prompt(tokenizer, render_chat(tokenizer, row["messages"]), row["answer"], max_length)


def row_text(row: dict) -> str:
    """All text of a row (for training a preset's tokenizer)."""
    head = row.get("question") or row.get("prompt") or "\n".join(m["content"] for m in row.get("messages", []))
    return head + " " + row["answer"]


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


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean NLL over answer tokens; reports the token count (a tensor, read when logged) for throughput."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, mask = token_nll(logits, batch["labels"])
    n = mask.sum()
    return nll.sum() / n.clamp(min=1), {"tokens": batch["attention_mask"].sum()}


@torch.no_grad()
def answer_accuracy(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float, int]:
    """(sum NLL, correct next-token predictions, counted tokens) over answer tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, mask = token_nll(logits, batch["labels"])
    pred = logits[:, :-1].argmax(-1)
    correct = ((pred == batch["labels"][:, 1:]) & mask).sum()
    return float(nll.sum()), float(correct), int(mask.sum())
