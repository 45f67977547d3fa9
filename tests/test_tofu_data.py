"""TOFU data layer: generator sizes/fields/determinism, split algebra, loader formats and errors."""

from __future__ import annotations

import json

import pytest

from lathe.data import tofu
from lathe.platform.errors import LatheError


@pytest.fixture(scope="module")
def full_default():
    return tofu.tofu_synthetic(seed=0)


def test_default_sizes_and_fields(full_default):
    c = full_default.configs
    for name, n in tofu.PUBLISHED_ROWS.items():
        assert len(c[name]) == n, name
        for row in c[name]:
            assert set(row) == set(tofu.FIELDS[name]), name
    for name in ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"):
        assert all(len(r["perturbed_answer"]) == 5 for r in c[name])
        assert all(r["paraphrased_answer"] not in r["perturbed_answer"] for r in c[name])
        assert all(len(set(r["perturbed_answer"])) == 5 for r in c[name])
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        assert all(len(r["perturbed_answer"]) == 3 for r in c[name])
        assert all(r["answer"] not in r["perturbed_answer"] for r in c[name])


def _key(rows):
    return [(r["question"], r["answer"]) for r in rows]


def test_split_algebra(full_default):
    c = full_default.configs
    full = set(_key(c["full"]))
    assert len(full) == 4000  # no duplicated QA pairs
    for f, r in tofu.RETAIN_OF.items():
        forget, retain = set(_key(c[f])), set(_key(c[r]))
        assert forget | retain == full and not forget & retain
        assert _key(c[f"{f}_perturbed"]) == _key(c[f])
    assert set(_key(c["forget01"])) < set(_key(c["forget05"])) < set(_key(c["forget10"]))
    assert not set(_key(c["retain_perturbed"])) & set(_key(c["forget10"]))
    assert set(_key(c["retain_perturbed"])) <= set(_key(c["retain90"]))


def test_small_scale_sizes():
    c = tofu.tofu_synthetic(seed=3, n_authors=20).configs
    assert (len(c["forget01"]), len(c["forget05"]), len(c["forget10"])) == (20, 20, 40)
    assert len(c["full"]) == 400 and len(c["retain90"]) == 360


def test_generator_byte_identical(tmp_path):
    a = tofu.tofu_synthetic(seed=5, n_authors=12, qa_per_author=6).write(tmp_path / "a")
    b = tofu.tofu_synthetic(seed=5, n_authors=12, qa_per_author=6).write(tmp_path / "b")
    c = tofu.tofu_synthetic(seed=6, n_authors=12, qa_per_author=6).write(tmp_path / "c")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "forget10_perturbed.jsonl" in names
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "full.jsonl").read_bytes() != (c / "full.jsonl").read_bytes()


def test_loader_reads_published_format(tmp_path):
    ds = tofu.tofu_synthetic(seed=1, n_authors=10, qa_per_author=4)
    ds.write(tmp_path)
    # the published TOFU files are JSON: one as a JSON list, one as a parquet file
    rows = ds.configs["forget10_perturbed"]
    (tmp_path / "forget10_perturbed.jsonl").unlink()
    (tmp_path / "forget10_perturbed.json").write_text(json.dumps(rows))
    import pandas as pd

    (tmp_path / "world_facts_perturbed.jsonl").unlink()
    (tmp_path / "world_facts_perturbed").mkdir()
    pd.DataFrame(ds.configs["world_facts_perturbed"]).to_parquet(tmp_path / "world_facts_perturbed" / "train.parquet")
    with pytest.warns(UserWarning, match="rows"):
        loaded = tofu.TofuDataset.from_local(tmp_path)
    assert set(loaded.configs) == set(ds.configs)
    for name in ds.configs:
        assert loaded.configs[name] == ds.configs[name], name
    assert loaded.retain("forget10") == ds.configs["retain90"]


@pytest.mark.filterwarnings("ignore:.*the published config has")
def test_loader_errors(tmp_path):
    (tmp_path / "forget10_perturbed.jsonl").write_text(json.dumps({"question": "q", "answer": "a",
                                                                   "perturbed_answer": ["b"]}) + "\n")
    with pytest.raises(LatheError, match=r"forget10_perturbed.jsonl: record 1 lacks field 'paraphrased_answer'"):
        tofu.TofuDataset.from_local(tmp_path)
    (tmp_path / "forget10_perturbed.jsonl").write_text("{not json\n")
    with pytest.raises(LatheError, match="not valid JSON"):
        tofu.TofuDataset.from_local(tmp_path)
    (tmp_path / "forget10_perturbed.jsonl").unlink()
    (tmp_path / "full.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(LatheError, match="missing TOFU config 'forget10'"):
        tofu.TofuDataset.from_local(tmp_path, configs=["full", "forget10"])
    with pytest.raises(LatheError, match="unknown forget split"):
        tofu.TofuDataset.from_local(tmp_path).forget("forget20")
