"""Strict configs of the serving layer (no Ray import: `lathe config validate` reads these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lathe.methods.retrieval import RetrieverSpec
from lathe.platform.config import JobConfig, ModelConfig, Strict


class HTTPConfig(Strict):
    host: str = Field("127.0.0.1", description="bind address; keep loopback unless a token is set")
    port: int = Field(8000, ge=0, le=65535)
    ingress: Literal["proxy", "direct"] = Field(
        "proxy", description="proxy: requests reach replicas through Serve's HTTP proxy (an actor call each); "
        "direct: each app's single replica serves HTTP itself on its own port on this host (Serve's direct "
        "ingress; one node, one replica per app; docs/serving.md)")


class BatchingConfig(Strict):
    enabled: bool = True
    max_batch_size: int = Field(32, ge=1, le=1024)
    wait_timeout_s: float = Field(0.01, ge=0, le=5)


class AutoscalingConfig(Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)


class ReplicaConfig(Strict):
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = Field(None, description="set to scale between min and max replicas")
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)


class RetrieverAppConfig(Strict):
    route_prefix: str = "/retriever"
    tools: list[str] = Field(default_factory=list, description="tool files (id/documentation); empty: synthetic")
    synthetic_tools: int = Field(500, ge=12)
    seed: int = 0
    retrievers: list[RetrieverSpec] = Field(
        default_factory=lambda: [RetrieverSpec(kind="dense"), RetrieverSpec(kind="bm25")], min_length=1)
    default_retriever: str | None = Field(None, description="label used when a request names none; default: first")
    index_dir: str | None = Field(None, description="load dense indexes from here if saved, else build and save")
    batching: BatchingConfig = BatchingConfig()
    replicas: ReplicaConfig = ReplicaConfig()
    max_k: int = Field(100, ge=1, le=1000)
    max_query_chars: int = Field(4000, ge=1)
    max_embed_texts: int = Field(64, ge=1)
    max_body_bytes: int = Field(1 << 16, ge=256)


class LLMAppConfig(Strict):
    route_prefix: str = "/llm"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(preset="smollm2-135m-instruct"),
                               description="a pretrained preset, any artifact lathe writes (path: a full HF "
                                           "dir, or a LoRA/MELoRA/ASLoRA adapter, merged into its base at "
                                           "load), or a tiny preset saved on first start")
    served_name: str | None = Field(None, description="model name in responses; default: the dir name")
    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="auto: vLLM on CUDA or on AVX512-BF16 CPUs without AMX, else transformers (pick_engine)")
    max_model_len: int = Field(256, ge=16)
    max_tokens_limit: int = Field(256, ge=1, description="largest max_tokens a request may ask for")
    kv_cache_gib: int = Field(1, ge=1, description="vllm-cpu: VLLM_CPU_KVCACHE_SPACE")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPU or bf16-capable CPUs under vLLM, else float32")
    replicas: ReplicaConfig = ReplicaConfig(max_ongoing_requests=16)
    max_body_bytes: int = Field(1 << 16, ge=256)


class SandboxAppConfig(Strict):
    """The RestBench-style tool sandbox (lathe.serve.sandbox_app)."""

    route_prefix: str = "/sandbox"
    domains: list[Literal["tmdb", "spotify"]] = Field(default_factory=lambda: ["tmdb", "spotify"], min_length=1)
    seed: int = 0
    error_rate: float = Field(0.0, ge=0, le=1, description="fault injection: share of requests answered 500")
    latency_ms: float = Field(0.0, ge=0, le=60000, description="fault injection: added latency per request")
    api_token: str | None = Field(None, description="the sandbox API answers 401 without 'Bearer <api_token>'")
    faults: dict[str, Literal["raise", "hang"]] = Field(
        default_factory=dict, description="'GET /movie/top_rated': raise | hang (testing the agents' error paths)")
    hang_s: float = Field(30.0, gt=0, le=3600, description="how long a 'hang' fault sleeps")
    replicas: ReplicaConfig = ReplicaConfig(num_cpus=0.25)
    max_body_bytes: int = Field(1 << 16, ge=256)


class AgentLLMConfig(Strict):
    kind: Literal["student", "handle", "openai", "oracle"] = Field(
        "student", description="student: the embedded default, SmolLM2-135M-Instruct + the distilled LoRA (trained "
                               "once, cached), its own LLM app reached through a handle, compact prompts; handle: "
                               "the llm app of this config; openai: base_url; oracle: the gold-path teacher")
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/llm/v1")
    model: str | None = None
    api_key_env: str | None = None
    allow_remote: bool = False
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _url(self) -> "AgentLLMConfig":
        if self.kind == "openai" and not self.base_url:
            raise ValueError("llm.kind openai needs llm.base_url")
        return self


class AgentsAppConfig(Strict):
    """ConAgents and GenGround (lathe.serve.agents_app), composed with the llm and sandbox apps."""

    route_prefix: str = "/agents"
    llm: AgentLLMConfig = AgentLLMConfig()
    domain: Literal["tmdb", "spotify"] = "tmdb"
    candidates: int = Field(20, ge=1, le=200, description="candidate tools per query (gold + random for tasks)")
    conagents: dict[str, Any] = Field(default_factory=dict, description="ConAgentsConfig fields (max_steps, protocol..)")
    genground: dict[str, Any] = Field(default_factory=dict, description="GenGroundConfig fields (max_iters, n_docs..)")
    knowledge_mode: Literal["oracle", "simulation", "index"] = "index"
    corpus_seed: int = 0
    questions: str | None = Field(None, description="QA file (else the synthetic multi-hop set)")
    questions_format: Literal["hotpotqa", "musique", "2wiki", "strategyqa", "lathe"] = "hotpotqa"
    passages: str | None = Field(None, description="passage file (DPR TSV or JSONL); default: the questions' own")
    max_steps_limit: int = Field(10, ge=1, le=50, description="largest max_steps / max_iters a request may ask")
    max_wall_s: float = Field(120.0, gt=0, description="wall-time budget of one run")
    tool_timeout_s: float = Field(10.0, gt=0, description="a tool call that takes longer ends the run")
    max_query_chars: int = Field(2000, ge=1)
    replicas: ReplicaConfig = ReplicaConfig(num_cpus=0.25, max_ongoing_requests=32)
    max_body_bytes: int = Field(1 << 16, ge=256)

    @model_validator(mode="after")
    def _options(self) -> "AgentsAppConfig":
        from dataclasses import fields

        from lathe.methods.agents.conagents import ConAgentsConfig
        from lathe.methods.agents.genground import GenGroundConfig

        for name, cls in (("conagents", ConAgentsConfig), ("genground", GenGroundConfig)):
            known = {f.name for f in fields(cls)}
            bad = sorted(set(getattr(self, name)) - known)
            if bad:
                raise ValueError(f"{name}: unknown option(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
        return self


class LegoLLMConfig(Strict):
    """Where the LEGO assistant's LLM comes from."""

    backend: Literal["deployment", "openai", "scripted"] = Field(
        "deployment", description="deployment: an LLM Serve deployment beside the app (through a handle); "
                                  "openai: any OpenAI-compatible URL; scripted: fixed replies (tests only)")
    model: ModelConfig | None = Field(
        None, description="the deployment's model (a local HF dir or a preset); default: the embedded assistant, "
                          "SmolLM2-135M-Instruct fine-tuned with MELoRA on the LEGO data (trained on first use, cached)")
    engine: Literal["auto", "vllm", "transformers"] = "transformers"
    max_model_len: int = Field(2048, ge=16)
    max_tokens_limit: int = Field(512, ge=1)
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/llm/v1")
    api_model: str | None = None
    api_key_env: str | None = None
    allow_remote: bool = False
    script: list[tuple[str, str]] = Field(default_factory=list, description="scripted: [[regex, reply], ...]")
    replicas: ReplicaConfig = ReplicaConfig(max_ongoing_requests=16)

    @model_validator(mode="after")
    def _backend_needs(self) -> "LegoLLMConfig":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("llm.base_url: required with backend openai")
        if self.backend == "scripted" and not self.script:
            raise ValueError("llm.script: required with backend scripted")
        return self


class LegoAgentSettings(Strict):
    mode: Literal["react_json", "function_calling"] = "react_json"
    memory: Literal["window", "buffer"] = "window"
    window_k: int = Field(5, ge=1)
    max_tool_calls: int = Field(5, ge=1)
    parse_retries: int = Field(2, ge=0)
    temperature: float = Field(0.0, ge=0, le=2)
    max_new_tokens: int = Field(96, ge=1, description="per LLM call (the reference uses 512)")
    open_model: bool = True
    few_shot: bool = True
    prompt_style: Literal["full", "compact"] = "compact"


class LegoAppConfig(Strict):
    route_prefix: str = Field("/", description="root, as the reference: ws://host:port/chatbot, POST /ask")
    llm: LegoLLMConfig = LegoLLMConfig()
    agent: LegoAgentSettings = LegoAgentSettings()
    manual: str | None = Field(None, description="a manual JSON in the LEGO-MRTA layout; default: a generated one")
    manual_seed: int = 0
    manual_steps: int = Field(20, ge=1)
    transport: Literal["simulator", "client"] = Field(
        "simulator", description="simulator: tool calls answered locally; client: the XR client executes them")
    tool_timeout_s: float = Field(1.0, gt=0, le=60, description="wait for a client's tool result (3.0 on headsets)")
    session_ttl_s: float = Field(600, gt=0, description="a session (memory + scene) resumes within this time")
    max_sessions: int = Field(256, ge=1)
    fault_rate: float = Field(0.0, ge=0, le=1, description="simulator: CheckStepStatusVR fault injection")
    vision: Literal["scene_state", "stub", "hf"] = "scene_state"
    vision_path: str | None = None
    replicas: ReplicaConfig = ReplicaConfig(max_ongoing_requests=64)
    max_body_bytes: int = Field(1 << 16, ge=256)
    max_frame_bytes: int = Field(1 << 16, ge=256)


class ServeConfig(JobConfig):
    """`lathe serve CONFIG`: which apps to deploy and how the HTTP proxy binds."""

    job: Literal["serve"] = "serve"
    http: HTTPConfig = HTTPConfig()
    auth_token: str | None = Field(None, description="require 'Authorization: Bearer <token>' (prefer auth_token_env)")
    auth_token_env: str | None = Field(None, description="read the bearer token from this environment variable")
    retriever: RetrieverAppConfig | None = None
    llm: LLMAppConfig | None = None
    sandbox: SandboxAppConfig | None = None
    agents: AgentsAppConfig | None = None
    lego: LegoAppConfig | None = None

    @model_validator(mode="after")
    def _something(self) -> "ServeConfig":
        if all(a is None for a in (self.retriever, self.llm, self.sandbox, self.agents, self.lego)):
            raise ValueError("configure at least one app: retriever, llm, sandbox, agents and/or lego")
        if self.agents is not None:
            if self.sandbox is None:
                raise ValueError("agents: needs the sandbox app (add a sandbox: section)")
            if self.agents.llm.kind == "handle" and self.llm is None:
                raise ValueError("agents.llm.kind handle: needs the llm app (add an llm: section)")
        return self
