"""Bradley-Terry reward model: a one-logit sequence-classification head scored on (x, y).

  L_RM = −mean log σ(r(x, y⁺) − r(x, y⁻))

The score is the logit at the last non-padding token (HF's *ForSequenceClassification).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lathe.methods.alignment.encoding import encode


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    margin = r_chosen - r_rejected
    return -F.logsigmoid(margin).mean(), {"rm_margin": float(margin.detach().mean()),
                                          "rm_accuracy": float((margin.detach() > 0).float().mean())}


def scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


@torch.no_grad()
def score_texts(model: torch.nn.Module, tok: Any, prompts: list[str], responses: list[str],
                max_prompt: int = 512, max_response: int = 256, batch_size: int = 32) -> list[float]:
    from lathe.methods.sft import pad_collate

    model.eval()
    device = next(model.parameters()).device
    collate = pad_collate(tok.pad_token_id)
    enc = [encode(tok, p, r, max_prompt, max_response) for p, r in zip(prompts, responses)]
    out: list[float] = []
    for s in range(0, len(enc), batch_size):
        b = collate(enc[s: s + batch_size])
        out += scores(model, b["input_ids"].to(device), b["attention_mask"].to(device)).tolist()
    return out


class RewardModel:
    """A learned reward model directory (one-logit sequence classification, safetensors)."""

    def __init__(self, path: str, max_prompt: int = 512, max_response: int = 256):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
                                                                        use_safetensors=True).eval()
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.max_prompt, self.max_response = max_prompt, max_response

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return score_texts(self.model, self.tok, prompts, responses, self.max_prompt, self.max_response)
