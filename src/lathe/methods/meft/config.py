"""MEFT options (spec section 4): one strict config for both engines and both semantics."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from lathe.platform.config import Strict


class MeftConfig(Strict):
    num_neurons: int = Field(4096, ge=1, description="N: adapter keys/values per adapted layer")
    topk: int = Field(64, description="k kept per token; <= 0 gives a dense parallel adapter (model's activation)")
    num_experts: int = Field(1, ge=1, description="E contiguous key experts; 1 = no router (gates fixed to 1)")
    n_probe: int = Field(1, ge=1, description="experts probed per token")
    router_softmax: bool = Field(False, description="softmax the router gates over experts")
    mask: Literal["per_token", "union"] = Field("per_token", description="which neurons a token uses (4.3)")
    engine: Literal["gpu", "offload"] = Field("gpu", description="gpu: masked reference; offload: host tables")
    on_gpu_size: int | None = Field(None, ge=1, description="n_max: buffer rows per layer; default N (never truncates)")
    location: Literal["all", "front", "back", "middle"] = "all"
    num_adapted_layers: int | None = Field(None, ge=1, description="how many layers front/back/middle adapt")
    mlp_pattern: str = Field(r"(?:.*\.)?layers\.(\d+)\.mlp", description="regex (full match) for the MLP blocks; "
                             "group 1 is the layer index")
    key_init: Literal["normal", "from_model"] = "normal"
    init_std: float = Field(0.02, gt=0, description="std of K, the router and P (the model's initializer range)")
    low_key_dim: int | None = Field(None, ge=1, description="d': trainable device projection P: d -> d'")
    frozen_keys: bool = Field(False, description="gpu engine: train only V (and the router/P)")
    train_keys_offload: bool = Field(False, description="offload engine: also train K on the host (spec default: frozen)")
    cpu_adam: Literal["sparse", "dense"] = Field("sparse", description="sparse: touched rows only; dense: whole tables")
    adam_impl: Literal["auto", "torch", "deepspeed"] = Field(
        "auto", description="auto: DeepSpeedCPUAdam on CUDA machines when it builds, else the vectorised torch one")
    offload_lr: float | None = Field(None, gt=0, description="host Adam lr; default: the loop's scheduled lr")
    offload_weight_decay: float = Field(1e-6, ge=0, description="host AdamW decay (reference offload path: 1e-6)")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    pre_look_layers: int = Field(0, ge=0, description="p: select layer l's rows from layer l-p's MLP input "
                                 "(reference: 2); 0 = exact, from the layer's own input")
    cpu_threads: int = Field(2, ge=1, description="worker threads for host scoring when pre_look_layers > 0")
    tables: Literal["local", "actor"] = Field("local", description="offload: tables in this process, or in the "
                                              "node's Ray table actor (lathe.jobs.meft_tables)")
    actor_name: str | None = Field(None, description="table actor name (default: derived from the seed and shapes)")
    kernels: Literal["auto", "torch", "triton"] = Field("auto", description="auto: Triton on CUDA, torch on CPU")
    seed: int = Field(0, description="seed of the table / router initialisation")
    adapter_name: str = Field("default", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _check(self) -> "MeftConfig":
        n, e = self.num_neurons, self.num_experts
        if n % e:
            raise ValueError(f"num_experts={e} does not divide num_neurons={n}")
        if self.n_probe > e:
            raise ValueError(f"n_probe={self.n_probe} exceeds num_experts={e}")
        if self.dense:
            if self.engine == "offload":
                raise ValueError("topk <= 0 (dense adapter) needs engine: gpu; the offload engine is sparse")
            if e > 1:
                raise ValueError("topk <= 0 (dense adapter) takes no router: set num_experts: 1")
        elif self.topk > self.n_probe * (n // e):
            raise ValueError(f"topk={self.topk} exceeds the {self.n_probe}*{n // e} candidate keys a token probes")
        if self.engine == "offload" and e == 1 and self.low_key_dim is None:
            raise ValueError("engine: offload needs a device-trained router (num_experts > 1) or low_key_dim; "
                             "the training loop's optimizer needs at least one device parameter")
        if self.tables == "actor" and self.engine != "offload":
            raise ValueError("tables: actor needs engine: offload")
        if self.tables == "actor" and self.key_init == "from_model":
            raise ValueError("tables: actor initialises its tables itself; key_init: from_model needs tables: local")
        return self

    @property
    def dense(self) -> bool:
        return self.topk <= 0

    @property
    def n_max(self) -> int:
        return min(self.on_gpu_size or self.num_neurons, self.num_neurons)

    @property
    def keys_trained(self) -> bool:
        return self.train_keys_offload if self.engine == "offload" else not self.frozen_keys


def reference_num_experts(num_neurons: int, factor: int = 1) -> int:
    """The reference code's rule: E = ceil(sqrt(N)) // factor when that divides N, else ceil(sqrt(N))."""
    root = math.ceil(math.sqrt(num_neurons))
    e = root // factor
    return e if e >= 1 and num_neurons % e == 0 else root


def select_layers(cfg: MeftConfig, n_layers: int) -> list[int]:
    """Layer indices to adapt for `location` (front/back/middle take num_adapted_layers, default L/2)."""
    if cfg.location == "all":
        return list(range(n_layers))
    m = min(cfg.num_adapted_layers or max(1, n_layers // 2), n_layers)
    if cfg.location == "front":
        return list(range(m))
    if cfg.location == "back":
        return list(range(n_layers - m, n_layers))
    start = (n_layers - m) // 2
    return list(range(start, start + m))
