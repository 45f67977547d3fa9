"""Prompt rendering and tokenisation of (x, y) for DPO, scoring and generation.

The prompt is rendered with the tokenizer's chat template when it has one, else in the HH
transcript format ("\\n\\nHuman: …\\n\\nAssistant:"). Too long a prompt loses its oldest turns
first (then its oldest tokens); a response is cut at `max_response` tokens (eos included).
"""

from __future__ import annotations

from typing import Any

from lathe.data.preference import HUMAN, hh_prompt, hh_turns
from lathe.methods.sft import IGNORE


def has_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def turns_of(prompt: str) -> list[tuple[str, str]]:
    return hh_turns(prompt) if prompt.startswith(HUMAN) else [("user", prompt.strip())]


def _render(tok: Any, turns: list[tuple[str, str]], original: str | None) -> str:
    if has_template(tok):
        msgs = [{"role": r, "content": t} for r, t in turns]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return original if original is not None else hh_prompt(turns)


def prompt_ids(tok: Any, prompt: str, max_prompt: int = 512) -> list[int]:
    """Token ids of the rendered prompt, at most `max_prompt`, oldest turns dropped first."""
    turns = turns_of(prompt)
    original = prompt if prompt.startswith(HUMAN) else None
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and not has_template(tok) else []
    while True:
        ids = bos + tok(_render(tok, turns, original), add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt or len(turns) <= 1:
            break
        turns = turns[1:]
        while len(turns) > 1 and turns[0][0] != "user":
            turns = turns[1:]
        original = None
    if len(ids) > max_prompt:
        ids = bos + ids[len(ids) - max_prompt + len(bos):]
    return ids


def response_text(tok: Any, response: str) -> str:
    """HH responses follow "Assistant:" after one space; a chat template starts them clean."""
    return response.strip() if has_template(tok) else " " + response.strip()


def response_ids(tok: Any, response: str, max_response: int = 256) -> list[int]:
    ids = tok(response_text(tok, response), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids[:max_response]


def encode(tok: Any, prompt: str, response: str, max_prompt: int = 512, max_response: int = 256,
           p_ids: list[int] | None = None) -> dict[str, list[int]]:
    """input ids of prompt+response with labels on the response tokens only."""
    p = prompt_ids(tok, prompt, max_prompt) if p_ids is None else p_ids
    r = response_ids(tok, response, max_response)
    return {"input_ids": p + r, "labels": [IGNORE] * len(p) + r}


def encode_pair(tok: Any, prompt: str, chosen: str, rejected: str, max_prompt: int = 512,
                max_response: int = 256) -> dict[str, dict[str, list[int]]]:
    p = prompt_ids(tok, prompt, max_prompt)
    return {"chosen": encode(tok, prompt, chosen, max_prompt, max_response, p),
            "rejected": encode(tok, prompt, rejected, max_prompt, max_response, p)}


def pair_collate(pad_id: int):
    """Items {"chosen": enc, "rejected": enc, ["ref_chosen", "ref_rejected"]} -> prefixed tensors."""
    import torch

    from lathe.methods.sft import pad_collate

    inner = pad_collate(pad_id)

    def collate(items: list[dict]) -> dict:
        out = {}
        for part in ("chosen", "rejected"):
            for k, v in inner([it[part] for it in items]).items():
                out[f"{part}_{k}"] = v
        if "ref_chosen" in items[0]:
            out["ref_chosen"] = torch.tensor([it["ref_chosen"] for it in items], dtype=torch.float32)
            out["ref_rejected"] = torch.tensor([it["ref_rejected"] for it in items], dtype=torch.float32)
        return out

    return collate
