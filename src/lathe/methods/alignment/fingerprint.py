"""A hash of a model's weights (adapter tensors included), for the reference and −IW checks."""

from __future__ import annotations

import hashlib

import torch


def state_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]
