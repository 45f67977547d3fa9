"""Offline text for covariance statistics: seeded samples from the unedited model itself.

ROME/MEMIT estimate C = E[k k^T] over "typical" text (the reference: 100,000 Wikipedia samples).
No corpus can be downloaded here, so for a pretrained model the platform samples its own text:
top-k sampling from the unedited model, started from a fixed list of varied openings (news,
encyclopedia, story, instructions, dialogue, science, ...). The samples follow the model's own
distribution, which is what the keys k it sees at edit time follow too; they are deterministic
for a seed (a torch.Generator, no global RNG) and cached as a text file by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lathe.methods.editing.common import pad

OPENINGS = [
    "The", "In", "A", "It", "When", "This", "After", "According to", "Many", "One of the",
    "The history of", "In the early", "Scientists have", "The city of", "Once upon a time,", "How to",
    "The new", "During the", "Researchers at", "The government", "In 2019,", "Most people", "There are",
    "My", "We", "If you", "The company", "The river", "The team", "Yesterday,", "The book", "Students",
    "The war", "The first", "Music", "Water", "The president", "In a small village,", "The study",
    "Today,", "Dear", "The population of", "Football", "The museum", "Climate", "The king", "Recipe:",
    "Chapter 1.", "Q: What is", "The word",
]


@torch.no_grad()
def model_samples(model, tok, n: int, length: int = 64, seed: int = 0, batch_size: int = 16,
                  top_k: int = 40) -> list[str]:
    """n texts of up to `length` new tokens each, sampled from `model` after the OPENINGS in turn."""
    gen = torch.Generator().manual_seed(seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    out: list[str] = []
    for i in range(0, n, batch_size):
        starts = [OPENINGS[(i + j) % len(OPENINGS)] for j in range(min(batch_size, n - i))]
        seqs = [tok(s)["input_ids"] for s in starts]
        enc = pad(seqs, pad_id, "left")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        new = []
        done = torch.zeros(len(seqs), dtype=torch.bool)
        for _ in range(length):
            logits = res.logits[:, -1].float()
            top = torch.topk(logits, top_k, dim=-1)
            pick = torch.multinomial(F.softmax(top.values, -1), 1, generator=gen)
            nxt = top.indices.gather(1, pick)
            if eos is not None:
                done |= nxt[:, 0] == eos
            new.append(nxt)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = pos[:, -1:] + 1
            res = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=res.past_key_values,
                        use_cache=True)
        gen_ids = torch.cat(new, 1).tolist()
        for s, g in zip(seqs, gen_ids):
            if eos is not None and eos in g:
                g = g[:g.index(eos)]
            text = tok.decode(s + g, skip_special_tokens=True).strip()
            out.append(" ".join(text.split()))
    return out
