"""MELoRA: n mini-LoRAs forming a block-diagonal update (spec section 2).

h = W₀x + concat_i( s · B_i A_i dropout(x_i) ),  x = [x₁; …; x_n].
Stored stacked: A (n, r, d_in/n), B (n, d_out/n, r); the forward pass has no Python loop over
minis. `r` is the MINI rank, `n` the number of minis (official scripts).

The block-diagonal product has several exact formulations; which is fastest depends on the shape
(`pick_formulation`, measured on CPU, fwd+bwd with the input gradient on, one thread; see
docs/performance.md). `einsum_out` is the reference every formulation is tested against.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from lathe.methods.peft import common as C
from lathe.methods.peft.base import Method, adapter_dtype_of
from lathe.platform.errors import ConfigError
from lathe.platform.registry import register


class MeloraConfig(C.AdapterConfig):
    r: int = Field(1, ge=1, description="mini-rank")
    n: int = Field(8, ge=1, description="number of minis; must divide d_in and d_out")
    melora_scaling: Literal["per_mini", "total"] = Field(
        "per_mini", description="per_mini: s = α/r (official); total: s = α/(n·r)")


def melora_scale(alpha: float, r: int, n: int, mode: str, rslora: bool) -> float:
    rank = r if mode == "per_mini" else n * r
    return alpha / math.sqrt(rank) if rslora else alpha / rank


FORMULATIONS = ("einsum", "bmm", "mulsum", "blockdiag")


def pick_formulation(n: int, r: int, device: torch.device | str) -> str:
    """The measured rule (CPU): r = 1 -> a broadcast multiply and sum (elementwise, no matmul
    dispatch: ~2x the einsum pair); n·r <= 16 -> two dense GEMMs through block-diagonal A and B
    (n times the FLOPs, but those GEMMs are memory-bound at such widths); else two batched
    matmuls over the minis. Off CPU the einsum pair (not measured there this round)."""
    if torch.device(device).type != "cpu":
        return "einsum"
    if r == 1:
        return "mulsum"
    return "blockdiag" if n * r <= 16 else "bmm"


def einsum_out(xs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
    """xs (..., n, d_in/n), a (n, r, d_in/n), b (n, d_out/n, r) -> (..., n, d_out/n). The reference."""
    # the scale goes on the small (…, n, r) activation, not the d_out-wide output
    z = torch.einsum("...ni,nri->...nr", xs, a) * s
    return torch.einsum("...nr,nor->...no", z, b)


def bmm_out(xs, a, b, s):
    lead, (n, di) = xs.shape[:-2], xs.shape[-2:]
    xt = xs.reshape(-1, n, di).transpose(0, 1)  # (n, T, di)
    z = torch.bmm(xt, a.transpose(1, 2)) * s  # (n, T, r)
    return torch.bmm(z, b.transpose(1, 2)).transpose(0, 1).reshape(*lead, n, b.shape[1])


def mulsum_out(xs, a, b, s):
    n, r, di = a.shape
    if r != 1:  # general r: a broadcast over r (memory r times x; slow beyond r = 1)
        z = (xs.unsqueeze(-2) * a).sum(-1) * s  # (..., n, r)
        return (z.unsqueeze(-2) * b).sum(-1)
    z = (xs * a.reshape(n, di)).sum(-1, keepdim=True) * s  # (..., n, 1)
    return z * b.reshape(n, -1)  # (..., n, d_out/n)


def blockdiag_out(xs, a, b, s):
    import torch.nn.functional as F

    lead, (n, di) = xs.shape[:-2], xs.shape[-2:]
    A = torch.block_diag(*a.unbind(0))  # (n·r, d_in)
    B = torch.block_diag(*b.unbind(0))  # (d_out, n·r)
    y = F.linear(F.linear(xs.reshape(*lead, n * di), A) * s, B)
    return y.reshape(*lead, n, b.shape[1])


_OUT = {"einsum": einsum_out, "bmm": bmm_out, "mulsum": mulsum_out, "blockdiag": blockdiag_out}


class MeloraLayer(C.AdapterLayer):
    method = "melora"
    formulation = "auto"  # or one of FORMULATIONS (benchmarks and tests pin one)

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool | None = None):
        super().__init__(base_layer, fan_in_fan_out)
        self.melora_A = nn.ParameterDict()
        self.melora_B = nn.ParameterDict()
        self.n: dict[str, int] = {}

    def add_adapter(self, name: str, r: int, n: int, alpha: float, dropout: float, scaling: str, rslora: bool):
        w = self.base_layer.weight
        dt = adapter_dtype_of(self.base_layer)
        di, do = self.in_features // n, self.out_features // n
        a = torch.empty(n, r, di, dtype=dt, device=w.device)
        for i in range(n):  # init each mini separately: fan-in d_in/n (not the 3-D tensor's)
            C.kaiming_(a[i], di)
        self.melora_A[name] = nn.Parameter(a)
        self.melora_B[name] = nn.Parameter(torch.zeros(n, do, r, dtype=dt, device=w.device))
        self.dropout[name] = C.make_dropout(dropout)
        self.scaling[name] = melora_scale(alpha, r, n, scaling, rslora)
        self.n[name] = n
        self.active_adapters.append(name)

    def adapter_dtype(self, name: str) -> torch.dtype:
        return self.melora_A[name].dtype

    def adapter_out(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b, n = self.melora_A[name], self.melora_B[name], self.n[name]
        lead = x.shape[:-1]
        xs = self.dropout[name](x).reshape(*lead, n, self.in_features // n)
        how = self.formulation if self.formulation != "auto" else pick_formulation(n, a.shape[1], a.device)
        return _OUT[how](xs, a, b, self.scaling[name]).reshape(*lead, self.out_features)

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.melora_A[name], self.melora_B[name]
        if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):
            a, b = a.float(), b.float()
        blocks = torch.bmm(b, a) * self.scaling[name]  # (n, d_out/n, d_in/n), one batched product
        d = torch.block_diag(*blocks.unbind(0))
        return d.T if self.fan_in_fan_out else d


class MELoRA(Method):
    name = "melora"
    Config = MeloraConfig
    Layer = MeloraLayer

    def check(self, cfg: MeloraConfig, targets) -> None:
        bad = []
        for name, m in targets:
            d_in, d_out, _ = C.linear_dims(m)
            if d_in % cfg.n or d_out % cfg.n:
                bad.append(f"{name} (d_in={d_in}, d_out={d_out})")
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise ConfigError(f"adapter.n={cfg.n} (melora) does not divide the shape of {bad[0]}{more}; "
                              f"pick n dividing both dimensions")

    def new_layer(self, base: nn.Module, cfg: MeloraConfig) -> MeloraLayer:
        layer = MeloraLayer(base, cfg.fan_in_fan_out)
        self.add_to_layer(layer, cfg)
        return layer

    def add_to_layer(self, layer: MeloraLayer, cfg: MeloraConfig) -> None:
        layer.add_adapter(cfg.adapter_name, cfg.r, cfg.n, cfg.lora_alpha, cfg.lora_dropout, cfg.melora_scaling,
                          cfg.use_rslora)

    def layer_tensors(self, layer: MeloraLayer, adapter: str) -> dict[str, torch.Tensor]:
        return {"melora_A": layer.melora_A[adapter], "melora_B": layer.melora_B[adapter]}

    def load_layer_tensors(self, layer: MeloraLayer, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for part, p in (("melora_A", layer.melora_A[adapter]), ("melora_B", layer.melora_B[adapter])):
                if part not in tensors:
                    raise ConfigError(f"adapter file lacks {part} for a layer (keys: {sorted(tensors)})")
                if tensors[part].shape != p.shape:
                    raise ConfigError(f"adapter {part} has shape {tuple(tensors[part].shape)}, "
                                      f"layer expects {tuple(p.shape)}")
                p.copy_(tensors[part])


register("peft", "melora")(MELoRA())
