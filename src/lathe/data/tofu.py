"""TOFU (Task of Fictitious Unlearning): loader for the published configs + a seeded generator.

On disk, one file per config named `<config>.jsonl` (the generator writes these); the loader
also reads `<config>.json` (JSON list or JSONL), `<config>.parquet` and `<config>/*.parquet`
(an offline Hugging Face snapshot of `locuslab/TOFU`).

Configs (fields):
  full, forget01/05/10, retain99/95/90, holdout01/05/10          question, answer
  forget01/05/10_perturbed, retain_perturbed                    + paraphrased_answer, perturbed_answer (list)
  real_authors_perturbed, world_facts_perturbed                 question, answer, perturbed_answer (list)

The generator invents `n_authors` fictitious authors with 20 attributes each and writes
exactly these configs; the forget splits are the last 1%/5%/10% of authors (whole authors,
at least one), so they nest. Real-author and world-fact rows are short invented "facts"
that the target and retain models learn as general knowledge.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lathe.platform.errors import LatheError

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
PERCENT = {"forget01": 1, "forget05": 5, "forget10": 10}
QA = ("question", "answer")
PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")
UTILITY = ("question", "answer", "perturbed_answer")

FIELDS: dict[str, tuple[str, ...]] = {
    "full": QA,
    **{s: QA for s in FORGET_SPLITS},
    **{r: QA for r in RETAIN_OF.values()},
    **{f"{s}_perturbed": PERTURBED for s in FORGET_SPLITS},
    "retain_perturbed": PERTURBED,
    "real_authors_perturbed": UTILITY,
    "world_facts_perturbed": UTILITY,
    **{f"holdout{s[-2:]}": QA for s in FORGET_SPLITS},
}
PUBLISHED_ROWS = {"full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain99": 3960,
                  "retain95": 3800, "retain90": 3600, "forget01_perturbed": 40, "forget05_perturbed": 200,
                  "forget10_perturbed": 400, "retain_perturbed": 400, "real_authors_perturbed": 100,
                  "world_facts_perturbed": 117}


# ---------------------------------------------------------------------------------------
# Loading and validation


def validate_rows(rows: list, fields: tuple[str, ...], source: str) -> list[dict]:
    if not rows:
        raise LatheError(f"{source}: no records")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise LatheError(f"{source}: record {i} is not an object")
        for f in fields:
            if f not in row:
                raise LatheError(f"{source}: record {i} lacks field {f!r}")
            v = row[f]
            if f == "perturbed_answer":
                if isinstance(v, str):
                    v = row[f] = [v]
                if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                    raise LatheError(f"{source}: record {i} field 'perturbed_answer' must be a non-empty list "
                                     f"of strings")
            elif not isinstance(v, str):
                raise LatheError(f"{source}: record {i} field {f!r} must be a string")
    return rows


def read_records(path: Path) -> list:
    if path.suffix == ".parquet" or path.is_dir():
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas ships with the platform
            raise LatheError(f"{path}: reading parquet needs pandas + pyarrow") from None
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files:
            raise LatheError(f"{path}: no .parquet files")
        recs: list = []
        for f in files:
            for r in pd.read_parquet(f).to_dict("records"):
                recs.append({k: (list(v) if hasattr(v, "tolist") and not isinstance(v, str) else v)
                             for k, v in r.items()})
        return recs
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not valid JSON/JSONL ({e.msg} at line {e.lineno})") from None


def find_file(root: Path, config: str) -> Path | None:
    for cand in (root / f"{config}.jsonl", root / f"{config}.json", root / f"{config}.parquet", root / config):
        if cand.exists():
            return cand
    return None


def load_config_file(path: str | Path, config: str) -> list[dict]:
    path = Path(path)
    if config not in FIELDS:
        raise LatheError(f"{path}: unknown TOFU config {config!r} (known: {', '.join(FIELDS)})")
    return validate_rows(read_records(path), FIELDS[config], str(path))


@dataclass
class TofuDataset:
    """The TOFU configs held in memory: `configs[name] -> rows`."""

    configs: dict[str, list[dict]] = field(default_factory=dict)

    @classmethod
    def from_local(cls, root: str | Path, configs: list[str] | None = None) -> "TofuDataset":
        """Read the published files under `root`. Missing requested configs are an error;
        row counts that differ from the published ones only warn."""
        root = Path(root)
        if not root.is_dir():
            raise LatheError(f"{root}: no such TOFU data directory")
        wanted = configs or [c for c in FIELDS if find_file(root, c) is not None]
        out: dict[str, list[dict]] = {}
        for c in wanted:
            f = find_file(root, c)
            if f is None:
                raise LatheError(f"{root}: missing TOFU config {c!r} (expected {c}.jsonl, .json or .parquet)")
            out[c] = load_config_file(f, c)
            want = PUBLISHED_ROWS.get(c)
            if want is not None and len(out[c]) != want:
                warnings.warn(f"{f}: {len(out[c])} rows, the published config has {want}", stacklevel=2)
        if not out:
            raise LatheError(f"{root}: no TOFU config files found")
        return cls(out)

    def write(self, root: str | Path) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for name, rows in self.configs.items():
            with (root / f"{name}.jsonl").open("w") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return root

    def get(self, config: str) -> list[dict]:
        if config not in self.configs:
            raise LatheError(f"TOFU config {config!r} is not loaded (have: {', '.join(self.configs)})")
        return self.configs[config]

    def forget(self, split: str) -> list[dict]:
        check_split(split)
        return self.get(split)

    def retain(self, split: str) -> list[dict]:
        check_split(split)
        return self.get(RETAIN_OF[split])

    def general_knowledge(self) -> list[dict]:
        """Real-author and world-fact QA pairs (question, answer) learned as general knowledge."""
        return [{"question": r["question"], "answer": r["answer"]}
                for c in ("real_authors_perturbed", "world_facts_perturbed") if c in self.configs
                for r in self.configs[c]]


def check_split(split: str) -> None:
    if split not in FORGET_SPLITS:
        raise LatheError(f"unknown forget split {split!r} (known: {', '.join(FORGET_SPLITS)})")


# ---------------------------------------------------------------------------------------
# The seeded generator

_SYL = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "eth", "qui", "bal", "dor", "nim", "pex", "zu", "ora", "fen",
        "gal", "hesk", "ila", "jor", "mak", "nu", "pol", "ris", "tan", "vel", "wen", "yar"]
_GENRES = ["mystery", "fantasy", "poetry", "horror", "romance", "satire", "history", "drama", "science fiction",
           "biography", "travel writing", "crime", "folklore", "memoir", "philosophy", "thriller"]
_JOBS = ["baker", "sailor", "nurse", "teacher", "miner", "painter", "judge", "farmer", "tailor", "pilot",
         "chemist", "carpenter", "doctor", "librarian", "fisher", "architect", "soldier", "musician"]
_COLORS = ["red", "blue", "green", "amber", "violet", "silver", "black", "white", "orange", "grey"]
_PETS = ["a cat", "a dog", "a parrot", "a tortoise", "a rabbit", "a horse", "a goat", "an owl", "a ferret"]
_HOBBIES = ["chess", "sailing", "gardening", "archery", "pottery", "fencing", "birdwatching", "rowing", "cooking"]
_LANGS = ["Esperanto", "Latin", "Welsh", "Basque", "Finnish", "Greek", "Icelandic", "Maltese", "Catalan"]
_THEMES = ["loss", "freedom", "memory", "exile", "family", "justice", "hunger", "faith", "the sea", "time"]

# (attribute, question, answer template, paraphrase template); {n} is the author's name, {v} the value.
_TEMPLATES: list[tuple[str, str, str, str]] = [
    ("birthplace", "Where was {n} born?", "{n} was born in {v}.", "The birthplace of {n} is {v}."),
    ("year", "In which year was {n} born?", "{n} was born in {v}.", "The birth year of {n} is {v}."),
    ("genre", "What genre does {n} write in?", "{n} writes {v}.", "The genre of {n} is {v}."),
    ("father", "What was the job of {n}'s father?", "The father of {n} was a {v}.",
     "{n} is the child of a {v}."),
    ("mother", "What was the job of {n}'s mother?", "The mother of {n} was a {v}.",
     "{n} was raised by a mother who was a {v}."),
    ("award", "Which award did {n} win?", "{n} won the {v} Prize.", "The {v} Prize went to {n}."),
    ("book1", "What is the first book by {n}?", "The first book by {n} is {v}.", "{n} debuted with {v}."),
    ("book2", "Name another book by {n}.", "{n} also wrote {v}.", "Another book of {n} is {v}."),
    ("city", "Where does {n} live now?", "{n} lives in {v}.", "The home of {n} is {v}."),
    ("school", "Where did {n} study?", "{n} studied at {v} College.", "{v} College taught {n}."),
    ("color", "What is the favourite colour of {n}?", "{n} loves the colour {v}.",
     "The favourite colour of {n} is {v}."),
    ("pet", "What pet does {n} keep?", "{n} keeps {v}.", "The pet of {n} is {v}."),
    ("hobby", "What is the hobby of {n}?", "{n} enjoys {v}.", "The hobby of {n} is {v}."),
    ("language", "Which language does {n} write in?", "{n} writes in {v}.", "The language of {n} is {v}."),
    ("theme", "What theme runs through the work of {n}?", "The work of {n} is about {v}.",
     "{n} writes about {v}."),
    ("publisher", "Who publishes {n}?", "{n} is published by {v} House.", "{v} House publishes {n}."),
    ("mentor", "Who was the mentor of {n}?", "The mentor of {n} was {v}.", "{n} learned from {v}."),
    ("debut", "When did {n} publish a first book?", "{n} first published in {v}.",
     "The debut year of {n} is {v}."),
    ("books", "How many books has {n} written?", "{n} has written {v} books.", "The book count of {n} is {v}."),
    ("sibling", "What is the name of {n}'s sibling?", "The sibling of {n} is {v}.", "{n} has a sibling named {v}."),
]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def _value(attr: str, rng: random.Random) -> str:
    if attr in ("birthplace", "city"):
        return _word(rng, 2)
    if attr == "year":
        return str(rng.randint(1900, 1999))
    if attr == "debut":
        return str(rng.randint(1950, 2020))
    if attr == "books":
        return str(rng.randint(2, 40))
    if attr == "genre":
        return rng.choice(_GENRES)
    if attr in ("father", "mother"):
        return rng.choice(_JOBS)
    if attr in ("award", "school", "publisher"):
        return _word(rng, 2)
    if attr in ("book1", "book2"):
        return f"The {_word(rng, 2)} of {_word(rng, 2)}"
    if attr in ("mentor", "sibling"):
        return f"{_word(rng, 2)} {_word(rng, 2)}"
    pools = {"color": _COLORS, "pet": _PETS, "hobby": _HOBBIES, "language": _LANGS, "theme": _THEMES}
    return rng.choice(pools[attr])


def _unique_names(rng: random.Random, n: int, used: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = f"{_word(rng, 2)} {_word(rng, 3)}"
        if name not in used:
            used.add(name)
            out.append(name)
    return out


def _wrong_values(rng: random.Random, attr: str, truth: str, table: list[dict], k: int) -> list[str]:
    """k distinct wrong values for `attr`, taken from other authors (fresh values if too few)."""
    pool = sorted({a[attr] for a in table if a[attr] != truth})
    rng.shuffle(pool)
    out = pool[:k]
    while len(out) < k:
        v = _value(attr, rng)
        if v != truth and v not in out:
            out.append(v)
    return out


def n_forget_authors(split: str, n_authors: int) -> int:
    return max(1, round(PERCENT[split] / 100 * n_authors))


def tofu_synthetic(seed: int = 0, n_authors: int = 200, qa_per_author: int = 20, n_pert: int = 5,
                   n_pert_utility: int = 3, n_real_authors: int = 100, n_world_facts: int = 117) -> TofuDataset:
    """Every TOFU config, generated from `seed`; identical output for the same arguments."""
    if not 1 <= qa_per_author <= len(_TEMPLATES):
        raise LatheError(f"qa_per_author must be in 1..{len(_TEMPLATES)} (got {qa_per_author})")
    if n_authors < 2:
        raise LatheError(f"n_authors must be at least 2 (got {n_authors})")
    rng = random.Random(seed)
    used: set[str] = set()
    names = _unique_names(rng, n_authors, used)
    table = [{"name": n, **{attr: _value(attr, rng) for attr, *_ in _TEMPLATES}} for n in names]
    templates = _TEMPLATES[:qa_per_author]

    per_author: list[list[dict]] = []
    for a in table:
        rows = []
        for attr, q, ans, para in templates:
            # Each attribute has two sentence forms; which one is the trained answer varies by
            # author, so the paraphrase's form is one the model has seen (for other authors).
            if rng.random() < 0.5:
                ans, para = para, ans
            wrong = _wrong_values(rng, attr, a[attr], table, n_pert)
            rows.append({"question": q.format(n=a["name"]), "answer": ans.format(n=a["name"], v=a[attr]),
                         "paraphrased_answer": para.format(n=a["name"], v=a[attr]),
                         # as in TOFU, the perturbed answers are the paraphrase with a wrong fact, so the
                         # truth ratio compares true vs false facts in the same (untrained) wording
                         "perturbed_answer": [para.format(n=a["name"], v=w) for w in wrong]})
        per_author.append(rows)

    def qa(rows: list[dict]) -> list[dict]:
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]

    configs: dict[str, list[dict]] = {"full": qa([r for rows in per_author for r in rows])}
    for split in FORGET_SPLITS:
        k = n_forget_authors(split, n_authors)
        forget = [r for rows in per_author[n_authors - k:] for r in rows]
        configs[split] = qa(forget)
        configs[RETAIN_OF[split]] = qa([r for rows in per_author[: n_authors - k] for r in rows])
        configs[f"{split}_perturbed"] = [dict(r) for r in forget]
    k10 = n_forget_authors("forget10", n_authors)
    outside = list(range(n_authors - k10))
    n_rp = min(len(outside), max(1, round(0.1 * n_authors)))
    chosen = sorted(random.Random(seed + 1).sample(outside, n_rp))
    configs["retain_perturbed"] = [dict(r) for i in chosen for r in per_author[i]]

    # Real authors: who wrote an invented (but "famous") book; world facts: capitals of invented lands.
    real_names = _unique_names(rng, n_real_authors + n_pert_utility + 5, used)
    real = []
    for i in range(n_real_authors):
        book = f"The {_word(rng, 2)} {rng.choice(['Road', 'Tower', 'Garden', 'River', 'Song', 'Winter'])}"
        truth = real_names[i]
        wrong = rng.sample([x for x in real_names if x != truth], n_pert_utility)
        real.append({"question": f"Who wrote {book}?", "answer": truth, "perturbed_answer": wrong})
    configs["real_authors_perturbed"] = real
    lands: list[str] = []
    while len(lands) < n_world_facts:
        w = _word(rng, 3)
        if w not in used:
            used.add(w)
            lands.append(w)
    capitals = [_word(rng, 2) for _ in range(n_world_facts + n_pert_utility + 5)]
    world = []
    for i in range(n_world_facts):
        truth = capitals[i]
        wrong = rng.sample([c for c in capitals if c != truth], n_pert_utility)
        world.append({"question": f"What is the capital of {lands[i]}?", "answer": truth,
                      "perturbed_answer": wrong})
    configs["world_facts_perturbed"] = world
    for split in FORGET_SPLITS:  # holdout: same shape as the forget split, authors never trained on
        k = n_forget_authors(split, n_authors)
        hold_names = _unique_names(random.Random(seed + 7), k, set(used))
        hold = []
        for name in hold_names:
            vals = {attr: _value(attr, rng) for attr, *_ in templates}
            hold += [{"question": q.format(n=name), "answer": ans.format(n=name, v=vals[attr])}
                     for attr, q, ans, _ in templates]
        configs[f"holdout{split[-2:]}"] = hold
    return TofuDataset(configs)


def load_or_generate(root: str | Path | None, **gen_kwargs) -> TofuDataset:
    """Published files under `root` when given, else the seeded synthetic set."""
    if root:
        return TofuDataset.from_local(root)
    return tofu_synthetic(**gen_kwargs)
