"""DPO (sigmoid loss) over response-token log-probability sums, pure PyTorch.

  L = −mean log σ(β·[(log π_θ(y⁺|x) − log π_ref(y⁺|x)) − (log π_θ(y⁻|x) − log π_ref(y⁻|x))])

log π(y|x) is the SUM over response tokens; prompt tokens and padding are masked by labels
= IGNORE. The plain DPO scale (no 2/β factor); at θ = ref the loss is ln 2 per pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lathe.methods.sft import IGNORE


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, number of response tokens) per row.

    `labels` are the input ids with prompt and padding set to IGNORE; position t predicts t+1.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def policy_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"])
    return sequence_logps(out.logits, batch[f"{prefix}labels"])


def concat_pair_batch(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one right-padded batch (one forward for both)."""
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=value)

    return {
        "input_ids": torch.cat([pad(batch["chosen_input_ids"], pad_id), pad(batch["rejected_input_ids"], pad_id)]),
        "attention_mask": torch.cat([pad(batch["chosen_attention_mask"], 0), pad(batch["rejected_attention_mask"], 0)]),
        "labels": torch.cat([pad(batch["chosen_labels"], IGNORE), pad(batch["rejected_labels"], IGNORE)]),
    }


def pair_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y⁺|x), log π(y⁻|x)) for a pair batch, from one concatenated forward pass."""
    both, _ = policy_logps(model, concat_pair_batch(batch, pad_id))
    n = batch["chosen_input_ids"].shape[0]
    return both[:n], both[n:]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean sigmoid DPO loss and the spec's logged metrics (implicit rewards, margin, accuracy)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    metrics = {
        "rewards_chosen": float(chosen_reward.detach().mean()),
        "rewards_rejected": float(rejected_reward.detach().mean()),
        "reward_margin": float(margin.detach().mean()),
        "reward_accuracy": float((margin.detach() > 0).float().mean()),
    }
    return loss, metrics


def sft_loss_on_chosen(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean NLL of y⁺ tokens (the −HN ablation's default: SFT on the selected positives)."""
    logp, n = policy_logps(model, batch, "chosen_")
    loss = -logp.sum() / n.sum().clamp(min=1)
    return loss, {"chosen_nll": float(loss.detach())}
