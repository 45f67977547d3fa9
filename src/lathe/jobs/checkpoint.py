"""Checkpoint files for the training loop: safetensors for tensors, JSON for the rest.

No pickle: optimizer state is flattened into named tensors plus a JSON skeleton.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = val
    save_file(tensors or {"_empty": torch.zeros(0)}, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    meta = json.loads((path / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for name, t in load_file(str(path / "optimizer.safetensors")).items():
        if name == "_empty":
            continue
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for name, v in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
