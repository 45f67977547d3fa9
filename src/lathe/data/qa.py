"""Question/answer JSONL: `{"question": str, "answer": str}` per line, plus a seeded generator.

The generator writes invented facts about invented places, so a tiny model has something
real to memorise and nothing in it can be known in advance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

from lathe.platform.errors import LatheError

_SYLL = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "eth", "qui", "bal", "dor", "nim", "pex", "zu", "ora", "fen"]
_COLORS = ["red", "blue", "green", "amber", "violet", "silver", "black", "white"]
_FOODS = ["bread", "rice", "figs", "fish", "beans", "cheese", "plums", "honey"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLL) for _ in range(parts)).capitalize()


def generate(n: int = 256, seed: int = 0) -> list[dict]:
    """`n` QA pairs over n//4 invented countries (four facts each), deterministic in `seed`."""
    rng = random.Random(seed)
    rows: list[dict] = []
    used: set[str] = set()
    while len(rows) < n:
        country = _name(rng, 3)
        if country in used:
            continue
        used.add(country)
        capital, color, food = _name(rng, 2), rng.choice(_COLORS), rng.choice(_FOODS)
        year = rng.randint(1200, 1999)
        facts = [
            (f"What is the capital of {country}?", f"The capital of {country} is {capital}."),
            (f"What color is the flag of {country}?", f"The flag of {country} is {color}."),
            (f"What do people in {country} eat?", f"People in {country} mostly eat {food}."),
            (f"When was {country} founded?", f"{country} was founded in {year}."),
        ]
        rows += [{"question": q, "answer": a} for q, a in facts]
    return rows[:n]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def load_jsonl(path: str | Path, fields: tuple[str, ...] = ("question", "answer")) -> list[dict]:
    """Rows of a JSONL (or JSON list) file; one clear error names the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise LatheError(f"{path}: no such data file")
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
            numbered = list(enumerate(rows, 1))
        else:
            numbered = [(i, json.loads(line)) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not valid JSON/JSONL ({e.msg} at line {e.lineno})") from None
    for i, row in numbered:
        if not isinstance(row, dict):
            raise LatheError(f"{path}: record {i} is not an object")
        for f in fields:
            if not isinstance(row.get(f), str):
                raise LatheError(f"{path}: record {i} lacks string field {f!r}")
    if not numbered:
        raise LatheError(f"{path}: no records")
    return [r for _, r in numbered]
