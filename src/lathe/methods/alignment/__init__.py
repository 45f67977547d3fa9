"""Preference alignment, pure PyTorch: the DPO loss, response-only log-probs and PPL, the
Bradley-Terry reward-model loss and MACPO's selection pieces (see docs/alignment.md)."""

from lathe.methods.alignment.dpo import dpo_loss, pair_logps, policy_logps, sequence_logps, sft_loss_on_chosen
from lathe.methods.alignment.encoding import encode, encode_pair, pair_collate, prompt_ids
from lathe.methods.alignment.macpo import Ablations, agent_seed, argmin_ppl, build_pairs, candidates
from lathe.methods.alignment.scoring import perplexity, response_logps, response_ppl

__all__ = ["Ablations", "agent_seed", "argmin_ppl", "build_pairs", "candidates", "dpo_loss", "encode",
           "encode_pair", "pair_collate", "pair_logps", "perplexity", "policy_logps", "prompt_ids",
           "response_logps", "response_ppl", "sequence_logps", "sft_loss_on_chosen"]
