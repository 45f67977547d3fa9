"""Preference data: HH-RLHF and PKU-SafeRLHF in their published layouts, a seeded synthetic
generator writing both layouts, a rule-based reward for it, and deterministic split manifests.

Every loader returns `PreferenceSet`: rows `{"id", "prompt", "chosen", "rejected"}` where
`prompt + chosen` rebuilds the HH `chosen` transcript byte for byte (HH layout), plus the
number of rows dropped by the parser or filter. Bad input raises one `LatheError` line that
names the file and the row.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lathe.platform.errors import LatheError

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
HH_FIELDS = ("chosen", "rejected")
PKU_FIELDS = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
              "is_response_0_safe", "is_response_1_safe")


@dataclass
class PreferenceSet:
    rows: list[dict]
    dropped: int = 0
    source: str = ""
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


# ---------------------------------------------------------------------------------------
# Reading records (jsonl, jsonl.gz, json list, parquet)


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise LatheError(f"{path}: no such preference file")
    if path.is_dir() or path.suffix == ".parquet":
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files:
            raise LatheError(f"{path}: no .parquet files")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise LatheError(f"{path}: reading parquet needs pyarrow") from None
        rows: list[dict] = []
        for f in files:
            rows += pq.read_table(f).to_pylist()
        return rows
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as e:
            raise LatheError(f"{path}: not a gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LatheError(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise LatheError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LatheError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
    if not rows:
        raise LatheError(f"{path}: no records")
    return rows


def _check_fields(row, fields: tuple[str, ...], where: str, types: dict[str, type | tuple] | None = None) -> None:
    if not isinstance(row, dict):
        raise LatheError(f"{where}: not an object")
    for f in fields:
        if f not in row or row[f] is None:
            raise LatheError(f"{where}: missing field {f!r}")
        want = (types or {}).get(f, str)
        if not isinstance(row[f], want):
            raise LatheError(f"{where}: field {f!r} must be {getattr(want, '__name__', want)} "
                             f"(got {type(row[f]).__name__})")


# ---------------------------------------------------------------------------------------
# HH-RLHF


def parse_hh(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, y⁺, y⁻): prompt is the longest common prefix ending with the last "\\n\\nAssistant:".

    Returns None when the transcripts differ before their last assistant turn (the row is
    dropped and counted). Raises ValueError for a string that is not an HH transcript.
    """
    for name, t in (("chosen", chosen), ("rejected", rejected)):
        if not t.startswith(HUMAN) or ASSISTANT not in t:
            raise ValueError(f"{name} is not an HH transcript (expected '\\n\\nHuman: ... \\n\\nAssistant: ...')")
    cut_c = chosen.rindex(ASSISTANT) + len(ASSISTANT)
    cut_r = rejected.rindex(ASSISTANT) + len(ASSISTANT)
    if cut_c != cut_r or chosen[:cut_c] != rejected[:cut_r]:
        return None
    return chosen[:cut_c], chosen[cut_c:], rejected[cut_r:]


def hh_turns(prompt: str) -> list[tuple[str, str]]:
    """[("user"|"assistant", text), ...] of an HH prompt (the trailing empty assistant turn dropped)."""
    parts = re.split(r"(\n\nHuman:|\n\nAssistant:)", prompt)
    turns: list[tuple[str, str]] = []
    for tag, text in zip(parts[1::2], parts[2::2]):
        turns.append(("user" if tag == HUMAN else "assistant", text.strip()))
    if turns and turns[-1][0] == "assistant" and not turns[-1][1]:
        turns.pop()
    return turns


def hh_prompt(turns: list[tuple[str, str]]) -> str:
    """The HH transcript prompt of `turns`, ending with "\\n\\nAssistant:"."""
    return "".join(f"{HUMAN if r == 'user' else ASSISTANT} {t}" for r, t in turns) + ASSISTANT


def hh_rows(records: list, source: str) -> PreferenceSet:
    rows, dropped = [], 0
    for i, rec in enumerate(records, 1):
        where = f"{source}: row {i}"
        _check_fields(rec, HH_FIELDS, where)
        try:
            parsed = parse_hh(rec["chosen"], rec["rejected"])
        except ValueError as e:
            raise LatheError(f"{where}: {e}") from None
        if parsed is None:
            dropped += 1
            continue
        prompt, yp, yn = parsed
        rows.append({"id": i - 1, "prompt": prompt, "chosen": yp, "rejected": yn})
    return PreferenceSet(rows, dropped, source, {"differs_before_last_turn": dropped} if dropped else {})


def hh_file(root: str | Path, subset: str, split: str) -> Path:
    d = Path(root) / subset
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl", f"{split}.json"):
        if (d / name).is_file():
            return d / name
    if not Path(root).is_dir():
        raise LatheError(f"{root}: no such HH-RLHF directory")
    raise LatheError(f"{d}: no {split}.jsonl.gz or {split}.jsonl (the published HH-RLHF subset layout)")


def load_hh(root: str | Path, subset: str = "helpful-base", split: str = "train") -> PreferenceSet:
    """One split of an HH-RLHF subset folder (`<root>/<subset>/<split>.jsonl.gz` or `.jsonl`)."""
    path = hh_file(root, subset, split)
    return hh_rows(read_records(path), str(path))


# ---------------------------------------------------------------------------------------
# PKU-SafeRLHF


def pku_rows(records: list, source: str) -> PreferenceSet:
    """Keep pairs whose better response is also the safer one and is marked safe (spec §3.1)."""
    types = {"better_response_id": int, "safer_response_id": int, "is_response_0_safe": bool,
             "is_response_1_safe": bool}
    rows, reasons = [], {"better_not_safer": 0, "better_not_safe": 0}
    for i, rec in enumerate(records, 1):
        where = f"{source}: row {i}"
        _check_fields(rec, PKU_FIELDS, where, types)
        b, s = rec["better_response_id"], rec["safer_response_id"]
        if b not in (0, 1) or s not in (0, 1):
            raise LatheError(f"{where}: better_response_id and safer_response_id must be 0 or 1")
        if b != s:
            reasons["better_not_safer"] += 1
            continue
        if not rec[f"is_response_{b}_safe"]:
            reasons["better_not_safe"] += 1
            continue
        rows.append({"id": i - 1, "prompt": rec["prompt"], "chosen": rec[f"response_{b}"],
                     "rejected": rec[f"response_{1 - b}"]})
    reasons = {k: v for k, v in reasons.items() if v}
    return PreferenceSet(rows, sum(reasons.values()), source, reasons)


def pku_file(root: str | Path, split: str) -> Path:
    root = Path(root)
    if root.is_file():
        return root
    for cand in (root / f"{split}.jsonl", root / f"{split}.jsonl.gz", root / f"{split}.parquet",
                 root / "data" / f"{split}.jsonl", root / "data" / f"{split}.parquet"):
        if cand.exists():
            return cand
    hits = sorted(root.glob(f"**/{split}*.parquet"))
    if hits:
        return hits[0]
    raise LatheError(f"{root}: no {split}.jsonl or {split}*.parquet (the PKU-SafeRLHF layout)")


def load_pku(root: str | Path, split: str = "train") -> PreferenceSet:
    path = pku_file(root, split)
    return pku_rows(read_records(path), str(path))


def load(style: str, root: str | Path, subset: str, split: str) -> PreferenceSet:
    if style == "hh":
        return load_hh(root, subset, split)
    if style == "pku":
        return load_pku(Path(root) / subset if (Path(root) / subset).exists() else root, split)
    raise LatheError(f"unknown preference format {style!r} (known: hh, pku)")


# ---------------------------------------------------------------------------------------
# Synthetic preferences with a programmatic reward

HELPFUL_MARKERS = ("sure", "safely", "step", "hope this helps")
UNSAFE_MARKERS = ("whatever", "dangerous", "stupid", "ignore")
LENGTH_TARGET = 28  # words; longer responses pay 0.1 per extra word

_TASKS = ["bake bread", "fix a bike", "plant tomatoes", "learn guitar", "clean a window", "paint a fence",
          "brew tea", "sort a list", "write a letter", "save money", "train a puppy", "tie a knot",
          "build a shelf", "cook rice", "study for exams", "run a mile", "wash a car", "start a blog",
          "fold a shirt", "grow basil", "patch a tire", "make soup", "draw a cat", "pack a bag"]
_ASKS = ["How do I {t}?", "Can you tell me how to {t}?", "What is the best way to {t}?",
         "Please explain how to {t}.", "I want to {t}. Any advice?", "Help me {t}, please."]
_MODS = ["", " quickly", " at home", " for a beginner", " on a budget", " this weekend"]
_TIPS = ["take your time", "use good tools", "check each part", "ask a friend", "keep it tidy",
         "start small", "measure twice", "rest between steps"]


_SYLL = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "eth", "qui", "bal", "dor", "nim", "pex", "zu", "ora", "fen"]


def _who(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLL) for _ in range(3)).capitalize()


def _good(rng: random.Random, task: str) -> str:
    a, b = rng.sample(_TIPS, 2)
    return f"Sure, here is how to {task} safely. First step: {a}. Next step: {b}. I hope this helps."


def _bad(rng: random.Random, task: str) -> str:
    return rng.choice([f"Whatever, {task} is stupid. Just ignore it.",
                       f"Do something dangerous instead of trying to {task}, whatever.",
                       f"That is a stupid question. Ignore the rules and {task} the dangerous way."])


def preference_synthetic(seed: int = 0, n: int = 12000, style: str = "hh") -> list[dict]:
    """`n` records in the exact published HH (`chosen`, `rejected`) or PKU-SafeRLHF field layout."""
    if style not in ("hh", "pku"):
        raise LatheError(f"unknown synthetic preference style {style!r} (known: hh, pku)")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = rng.choice(_TASKS)
        q = f"I am {_who(rng)}. " + rng.choice(_ASKS).format(t=task + rng.choice(_MODS))
        good, bad = _good(rng, task), _bad(rng, task)
        if style == "hh":
            prefix = HUMAN + " " + q + ASSISTANT
            if rng.random() < 0.25:  # a two-turn dialogue now and then, as in the real set
                q0 = rng.choice(_ASKS).format(t=rng.choice(_TASKS))
                prefix = HUMAN + " " + q0 + ASSISTANT + " " + "Could you say more?" + prefix
            out.append({"chosen": prefix + " " + good, "rejected": prefix + " " + bad})
        else:
            b = rng.randrange(2)
            resp = {b: good, 1 - b: bad}
            out.append({"prompt": q, "response_0": resp[0], "response_1": resp[1],
                        "prompt_source": "lathe-synthetic", "response_0_source": "template",
                        "response_1_source": "template", "is_response_0_safe": b == 0,
                        "is_response_1_safe": b == 1, "response_0_severity_level": 0 if b == 0 else 2,
                        "response_1_severity_level": 0 if b == 1 else 2,
                        "better_response_id": b, "safer_response_id": b})
    return out


def rule_reward(prompt: str, response: str) -> float:
    """+1 per helpful marker, −1 per unsafe marker (case-insensitive occurrences), minus 0.1 per
    word beyond LENGTH_TARGET (so repeating markers does not pay without bound)."""
    text = response.lower()
    score = sum(text.count(m) for m in HELPFUL_MARKERS) - sum(text.count(m) for m in UNSAFE_MARKERS)
    return float(score) - 0.1 * max(0, len(response.split()) - LENGTH_TARGET)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def write_synthetic(root: str | Path, style: str = "hh", seed: int = 0, n_train: int = 10000,
                    n_test: int = 2000, subset: str = "helpful-base") -> Path:
    """Write a synthetic set in the published folder layout: HH `<subset>/{train,test}.jsonl.gz`,
    PKU `<subset>/{train,test}.jsonl`. Returns `root`."""
    root = Path(root)
    rows = preference_synthetic(seed, n_train + n_test, style)
    ext = ".jsonl.gz" if style == "hh" else ".jsonl"
    write_jsonl(rows[:n_train], root / subset / f"train{ext}")
    write_jsonl(rows[n_train:], root / subset / f"test{ext}")
    return root


# ---------------------------------------------------------------------------------------
# Splits


def make_splits(train: PreferenceSet, test: PreferenceSet, n_train: int = 10000, n_test: int = 2000,
                seed: int = 42) -> dict:
    """D_init / Q_w2s (disjoint halves of n_train sampled training rows) and n_test test rows.

    Ids are row ids of the parsed sets. Test rows whose prompt also occurs in a training part
    are skipped (and counted), so no test prompt is seen during alignment.
    """
    rng = random.Random(seed)
    n_train = min(n_train, len(train))
    picked = rng.sample(range(len(train)), n_train)
    half = n_train // 2
    d_init = sorted(train.rows[i]["id"] for i in picked[:half])
    q_w2s = sorted(train.rows[i]["id"] for i in picked[half:])
    seen = {train.rows[i]["prompt"] for i in picked}
    order = list(range(len(test)))
    rng.shuffle(order)
    test_ids, overlap = [], 0
    for i in order:
        if len(test_ids) >= n_test:
            break
        if test.rows[i]["prompt"] in seen:
            overlap += 1
            continue
        test_ids.append(test.rows[i]["id"])
    manifest = {"split_seed": seed, "train_source": train.source, "test_source": test.source,
                "dropped_train": train.dropped, "dropped_test": test.dropped,
                "test_prompt_overlap_skipped": overlap,
                "sizes": {"d_init": len(d_init), "q_w2s": len(q_w2s), "test": len(test_ids)},
                "d_init": d_init, "q_w2s": q_w2s, "test": sorted(test_ids)}
    manifest["digest"] = hashlib.sha256(json.dumps([d_init, q_w2s, manifest["test"]]).encode()).hexdigest()[:16]
    return manifest


def write_manifest(manifest: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


def take(pset: PreferenceSet, ids: list[int]) -> list[dict]:
    by_id = {r["id"]: r for r in pset.rows}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise LatheError(f"{pset.source}: split manifest names row id {missing[0]} that the file does not hold")
    return [by_id[i] for i in ids]
