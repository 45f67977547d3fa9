"""Preference data: HH parsing byte for byte, PKU filter, synthetic layouts and reward, splits."""

from __future__ import annotations

import gzip
import json

import pytest

from lathe.data import preference as P
from lathe.platform.errors import LatheError

HH_ROWS = [
    # one-turn, ordinary
    {"chosen": "\n\nHuman: How do I cook rice?\n\nAssistant: Rinse it, then simmer it.",
     "rejected": "\n\nHuman: How do I cook rice?\n\nAssistant: No idea."},
    # multi-turn; differs only in the last assistant turn
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken...",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:  "},
    # differs before the last assistant turn: dropped and counted
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: ok\n\nAssistant: good",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: ok\n\nAssistant: bad"},
    # responses that share a prefix: the prompt must still end at the last "Assistant:"
    {"chosen": "\n\nHuman: Name a color\n\nAssistant: Blue is nice",
     "rejected": "\n\nHuman: Name a color\n\nAssistant: Blue"},
]


def write_hh(root, subset, split, rows, gz=True):
    d = root / subset
    d.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if gz:
        (d / f"{split}.jsonl.gz").write_bytes(gzip.compress(data))
    else:
        (d / f"{split}.jsonl").write_bytes(data)


def test_hh_parse_rebuilds_both_transcripts_exactly(tmp_path):
    write_hh(tmp_path, "helpful-base", "train", HH_ROWS)
    ps = P.load_hh(tmp_path, "helpful-base", "train")
    assert ps.dropped == 1 and len(ps) == 3
    src = [r for i, r in enumerate(HH_ROWS) if i != 2]
    for row, orig in zip(ps.rows, src):
        assert row["prompt"] + row["chosen"] == orig["chosen"]
        assert row["prompt"] + row["rejected"] == orig["rejected"]
        assert row["prompt"].endswith("\n\nAssistant:")
    assert ps.rows[2]["chosen"] == " Blue is nice" and ps.rows[2]["rejected"] == " Blue"
    assert [r["id"] for r in ps.rows] == [0, 1, 3]


def test_hh_plain_jsonl_layout(tmp_path):
    write_hh(tmp_path, "harmless-base", "test", HH_ROWS[:1], gz=False)
    assert len(P.load_hh(tmp_path, "harmless-base", "test")) == 1


@pytest.mark.parametrize("row,needle", [
    ({"chosen": "\n\nHuman: a\n\nAssistant: b"}, "row 2: missing field 'rejected'"),
    ({"chosen": "Human: a Assistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}, "row 2: chosen is not an HH"),
    ({"chosen": 3, "rejected": "x"}, "row 2: field 'chosen' must be str"),
])
def test_hh_bad_rows_name_file_and_row(tmp_path, row, needle):
    write_hh(tmp_path, "helpful-base", "train", [HH_ROWS[0], row])
    with pytest.raises(LatheError) as e:
        P.load_hh(tmp_path, "helpful-base", "train")
    msg = str(e.value)
    assert needle in msg and "train.jsonl.gz" in msg and "\n" not in msg


def test_hh_bad_json_and_missing_layout(tmp_path):
    d = tmp_path / "helpful-base"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps(HH_ROWS[0]) + "\n{oops\n")
    with pytest.raises(LatheError, match=r"train.jsonl: row 2: not valid JSON"):
        P.load_hh(tmp_path, "helpful-base", "train")
    with pytest.raises(LatheError, match="no test.jsonl.gz"):
        P.load_hh(tmp_path, "helpful-base", "test")


PKU = [
    dict(prompt="q0", response_0="safe good", response_1="bad", better_response_id=0, safer_response_id=0,
         is_response_0_safe=True, is_response_1_safe=False),
    dict(prompt="q1", response_0="a", response_1="b", better_response_id=1, safer_response_id=0,
         is_response_0_safe=True, is_response_1_safe=True),  # better is not safer: dropped
    dict(prompt="q2", response_0="a", response_1="b", better_response_id=1, safer_response_id=1,
         is_response_0_safe=False, is_response_1_safe=False),  # better not marked safe: dropped
    dict(prompt="q3", response_0="worse", response_1="better", better_response_id=1, safer_response_id=1,
         is_response_0_safe=False, is_response_1_safe=True),
]


def test_pku_filter_jsonl_and_parquet(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PKU))
    ps = P.load_pku(tmp_path, "train")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in ps.rows] == [("q0", "safe good", "bad"),
                                                                          ("q3", "better", "worse")]
    assert ps.dropped == 2 and ps.drop_reasons == {"better_not_safer": 1, "better_not_safe": 1}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pdir = tmp_path / "pq" / "data"
    pdir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(PKU), pdir / "train-00000-of-00001.parquet")
    assert P.load_pku(tmp_path / "pq", "train").rows == ps.rows


def test_pku_bad_field_type(tmp_path):
    bad = dict(PKU[0], better_response_id="zero")
    (tmp_path / "train.jsonl").write_text(json.dumps(PKU[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LatheError, match=r"train.jsonl: row 2: field 'better_response_id' must be int"):
        P.load_pku(tmp_path, "train")


def test_synthetic_layouts_and_reward_ranks_every_row(tmp_path):
    hh = P.preference_synthetic(seed=3, n=300, style="hh")
    assert all(set(r) == {"chosen", "rejected"} for r in hh)
    pku = P.preference_synthetic(seed=3, n=300, style="pku")
    assert all(set(P.PKU_FIELDS) <= set(r) for r in pku)
    assert P.preference_synthetic(seed=3, n=300, style="hh") == hh  # seeded
    assert P.preference_synthetic(seed=4, n=300, style="hh") != hh
    root = P.write_synthetic(tmp_path / "hh", "hh", seed=1, n_train=200, n_test=50)
    train = P.load_hh(root, "helpful-base", "train")
    assert len(train) == 200 and train.dropped == 0
    proot = P.write_synthetic(tmp_path / "pku", "pku", seed=1, n_train=200, n_test=50, subset="default")
    ptrain = P.load("pku", proot, "default", "train")
    assert len(ptrain) == 200
    for r in train.rows + ptrain.rows:
        assert P.rule_reward(r["prompt"], r["chosen"]) > P.rule_reward(r["prompt"], r["rejected"])


def test_rule_reward_hand_values():
    assert P.rule_reward("x", "Sure, do it safely, step one.") == 3.0
    assert P.rule_reward("x", "Whatever, that is stupid.") == -2.0
    assert P.rule_reward("x", "sure " * 30) == pytest.approx(30 - 0.1 * 2)


def test_split_manifest_deterministic_disjoint_no_test_leak(tmp_path):
    root = P.write_synthetic(tmp_path, "hh", seed=0, n_train=400, n_test=300)
    train, test = P.load_hh(root, "helpful-base", "train"), P.load_hh(root, "helpful-base", "test")
    # a test row whose prompt is also a training prompt must never reach the test split
    test.rows.append(dict(train.rows[5], id=10_000))
    m1 = P.make_splits(train, test, n_train=400, n_test=400, seed=42)
    m2 = P.make_splits(train, test, n_train=400, n_test=400, seed=42)
    m3 = P.make_splits(train, test, n_train=400, n_test=400, seed=7)
    assert m1 == m2 and m1["digest"] != m3["digest"]
    assert m1["sizes"] == {"d_init": 200, "q_w2s": 200, "test": 300}
    assert not set(m1["d_init"]) & set(m1["q_w2s"])
    train_prompts = {r["prompt"] for r in P.take(train, m1["d_init"] + m1["q_w2s"])}
    assert not {r["prompt"] for r in P.take(test, m1["test"])} & train_prompts
    assert m1["test_prompt_overlap_skipped"] == 1 and 10_000 not in m1["test"]
    path = P.write_manifest(m1, tmp_path / "run" / "splits.json")
    assert json.loads(path.read_text()) == m1
    with pytest.raises(LatheError, match="row id 99999"):
        P.take(train, [99999])
