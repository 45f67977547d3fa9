"""The preference-data section every alignment job shares, and its loading with split manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lathe.data import preference as P
from lathe.platform.config import Strict
from lathe.platform.errors import LatheError


class PreferenceDataConfig(Strict):
    source: Literal["synthetic", "hh", "pku"] = Field("synthetic", description="synthetic, or published files")
    root: str | None = Field(None, description="HH-RLHF or PKU-SafeRLHF directory (source hh/pku)")
    subset: str = Field("helpful-base", description="HH subset folder (or PKU sub-folder)")
    style: Literal["hh", "pku"] = Field("hh", description="layout the synthetic generator writes")
    n_train: int = Field(10000, ge=2, description="training rows sampled (halved into D_init and Q_w2s)")
    n_test: int = Field(2000, ge=1)
    split_seed: int = 42
    max_prompt: int = Field(512, ge=4)
    max_response: int = Field(256, ge=2)


def load_sets(d: PreferenceDataConfig, seed: int, out_dir: Path | None) -> tuple[P.PreferenceSet, P.PreferenceSet]:
    if d.source == "synthetic":
        subset = d.subset if d.style == "hh" else "default"
        if out_dir is not None:  # the synthetic set is written in its published layout beside the run
            root = P.write_synthetic(out_dir / "data", d.style, seed, d.n_train, d.n_test, subset)
            return P.load(d.style, root, subset, "train"), P.load(d.style, root, subset, "test")
        recs = P.preference_synthetic(seed, d.n_train + d.n_test, d.style)
        parse = P.hh_rows if d.style == "hh" else P.pku_rows
        return parse(recs[: d.n_train], "synthetic:train"), parse(recs[d.n_train:], "synthetic:test")
    if d.root is None:
        raise LatheError(f"data.root: source {d.source!r} needs the directory of the published files")
    return P.load(d.source, d.root, d.subset, "train"), P.load(d.source, d.root, d.subset, "test")


def load_splits(d: PreferenceDataConfig, seed: int, run_dir: Path) -> tuple[dict[str, list[dict]], dict]:
    """{"d_init", "q_w2s", "test"} row lists and the manifest (written to run_dir/splits.json).

    An existing manifest in the run dir is reused (resume), so the parts never change mid-run.
    """
    import json

    train, test = load_sets(d, seed, run_dir)
    path = run_dir / "splits.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
    else:
        manifest = P.make_splits(train, test, d.n_train, d.n_test, d.split_seed)
        P.write_manifest(manifest, path)
    if not manifest["test"] or not manifest["d_init"] or not manifest["q_w2s"]:
        raise LatheError(f"{path}: a split is empty ({manifest['sizes']}); use more data")
    parts = {k: P.take(train if k != "test" else test, manifest[k]) for k in ("d_init", "q_w2s", "test")}
    return parts, manifest
