"""Model artifacts the platform writes, read back as one thing: a full HF directory, or an adapter
(LoRA, MELoRA, ASLoRA, or an HF peft LoRA) over the base model its `lathe_source.json` records.

`load_artifact` gives the model with its adapter applied; `merged_dir` folds the adapter into the
base and writes a standalone HF directory (what `lathe export --merged` and the LLM server use).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from lathe.platform.errors import ConfigError

SOURCE_FILE = "lathe_source.json"


def kind(path: str | Path) -> str:
    """'model' (a full HF dir), 'adapter' (an adapter over a recorded base), or a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such model directory")
    if (path / "adapter_config.json").is_file():
        if not (path / SOURCE_FILE).is_file():
            raise ConfigError(f"{path}: an adapter without {SOURCE_FILE}, so its base model is unknown "
                              f"(load it in Python with lathe.methods.peft.load_adapter(base, path))")
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise ConfigError(f"{path}: not a model directory (no config.json) nor an adapter (no adapter_config.json)")


def load_artifact(path: str | Path, dtype: str | None = None):
    """(model, tokenizer) of an artifact; an adapter is applied (not merged) on its recorded base."""
    from lathe.platform.registry import lookup
    from lathe.platform.zoo import ModelSource, load_pretrained

    path = Path(path)
    if kind(path) == "model":
        return load_pretrained(path, dtype=dtype or "float32")
    source = json.loads((path / SOURCE_FILE).read_text())
    if dtype:
        source["dtype"] = dtype
    model, tok = ModelSource(**source).load()
    meta = json.loads((path / "adapter_config.json").read_text())
    method = meta.get("lathe_method") or meta.get("peft_type", "lora").lower()
    return lookup("peft", method).load(model, path), tok


def merged_dir(path: str | Path, cache: str | Path) -> Path:
    """A standalone HF directory for any artifact: a full model as is, an adapter merged into its base.

    Merged copies are cached under `cache`, keyed by a hash of the adapter's files, and written
    atomically (temporary sibling, then rename) so concurrent replicas never read half a model.
    """
    path = Path(path).resolve()
    if kind(path) == "model":
        return path
    out = Path(cache) / f"merged-{path.name}-{_digest(path)}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        export(path, tmp)
        if not (out / "config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export(path: str | Path, out: str | Path) -> Path:
    """Write the artifact as a standalone HF directory (adapter merged) that transformers and vLLM load."""
    from lathe.methods.peft.common import export_merged
    from lathe.platform.zoo import save_pretrained

    model, tok = load_artifact(path)
    if kind(path) == "model":
        return save_pretrained(model, tok, out)
    return export_merged(model, tok, out)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
