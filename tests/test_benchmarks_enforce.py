"""Benchmarks enforce what they print, one way: `--no-enforce` from `_common.add_enforce`, the exit
status from `_common.verdict`; and the peft_speed FLOP count used for MFU."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name != "_common.py")


@pytest.mark.parametrize("path", scripts(), ids=lambda p: p.name)
def test_every_benchmark_enforces_through_common(path):
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "_common"
                for a in n.names}
    assert {"add_enforce", "verdict"} <= imported, f"{path.name}: does not use _common.add_enforce/verdict"
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"add_enforce", "verdict"} <= called, f"{path.name}: imports but never calls add_enforce/verdict"
    own = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
           and n.func.attr == "add_argument" and n.args and isinstance(n.args[0], ast.Constant)
           and n.args[0].value == "--no-enforce"]
    assert not own, f"{path.name}: defines its own --no-enforce"


def test_verdict_exit_status(capsys):
    from _common import verdict

    assert verdict({"a": True, "b": True}, no_enforce=False) == 0
    assert verdict({"a": True, "b": False}, no_enforce=False) == 1
    assert verdict({"a": False}, no_enforce=True) == 0
    err = capsys.readouterr().err
    assert "MISSED: b" in err and "met   : a" in err


def test_step_flops_counts_no_weight_gradient_for_frozen_weights():
    import torch
    from peft_speed import step_flops

    class Cfg:
        num_hidden_layers, hidden_size = 2, 8

    class M(torch.nn.Module):
        config = Cfg()

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)  # a lookup: no matmul FLOPs
            self.frozen = torch.nn.Linear(8, 16, bias=False)
            self.frozen.requires_grad_(False)
            self.emb.requires_grad_(False)
            self.a = torch.nn.Parameter(torch.zeros(3, 8))

    tokens, seq = 10, 5
    # 4 per frozen weight (fwd + input grad), 6 per trainable parameter, 12*L*seq*d attention
    expected = tokens * (4 * 8 * 16 + 6 * 24 + 12 * 2 * 5 * 8)
    assert step_flops(M(), tokens, seq) == expected
