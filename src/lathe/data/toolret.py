"""ToolRet data: loaders for the published files and a seeded synthetic generator.

Published layouts (Hugging Face `mangopy/ToolRet-*`):
- query rows: `id`, `query`, `instruction`, `labels` (a JSON *string* of `[{"id", "doc", "relevance"}]`),
  `category`; the task is the `task` field when present, else the id's prefix (`apigen_query_5` -> `apigen`).
  A row without `category` gets its task's category from the paper's 35-task table (`TASK_CATEGORY`);
  a row with neither is an error, since an empty category would add a fourth column to the Average.
- tool rows: `id`, `documentation` (a JSON string; decoded into `doc`).
- training rows: FlagEmbedding `{"query", "pos", "neg", "prompt"}` or hub `{"query", "id", "prompt",
  "positive", "negative"}`; both are normalised to `{"query", "instruction", "pos", "neg"}`.

Files may be JSONL, a JSON list, or parquet. A bad file raises one `LatheError` naming it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lathe.platform.errors import LatheError

CATEGORIES = ("web", "code", "customized")
# The paper's 35 task configs by category (spec section 1), plus the synthetic tasks.
_TASKS = {
    "code": ["craft-math-algebra", "craft-tabmwp", "craft-vqa", "gorilla-huggingface", "gorilla-pytorch",
             "gorilla-tensor", "toolink"],
    "web": ["apibank", "apigen", "mnms", "reversechain", "rotbench", "t-eval-dialog", "t-eval-step",
            "taskbench-daily", "toolace", "toolbench", "toolemu", "tooleyes", "toollens", "ultratool",
            "autotools-food", "autotools-music", "autotools-weather", "restgpt-spotify", "restgpt-tmdb"],
    "customized": ["appbench", "gpt4tools", "gta", "taskbench-huggingface", "taskbench-multimedia", "metatool",
                   "tool-be-honest", "toolalpaca", "toolbench-sam"],
}
TASK_CATEGORY = {t: c for c, ts in _TASKS.items() for t in ts} | {f"synth-{c}": c for c in CATEGORIES}
INSTRUCTION_TEMPLATE = "Given a `{task}` task, retrieve tools that {function} by processing {inputs} to {goal}."


@dataclass
class Tool:
    id: str
    documentation: str
    doc: Any
    category: str = ""


@dataclass
class Query:
    id: str
    query: str
    instruction: str
    labels: list[dict]
    category: str
    task: str

    @property
    def gold(self) -> dict[str, int]:
        return {str(lab["id"]): int(lab.get("relevance", 1)) for lab in self.labels}


@dataclass
class ToolRetData:
    tools: list[Tool]
    queries: list[Query]
    missing_labels: list[tuple[str, str]] = field(default_factory=list)  # (query id, tool id)
    skipped_empty: int = 0

    def qrels(self) -> dict[str, dict[str, int]]:
        return {q.id: q.gold for q in self.queries}

    def summary(self) -> str:
        cats: dict[str, int] = {}
        for q in self.queries:
            cats[q.category] = cats.get(q.category, 0) + 1
        return (f"{len(self.tools)} tools, {len(self.queries)} queries "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(cats.items()))}), "
                f"{len(self.missing_labels)} label ids missing from the corpus, {self.skipped_empty} queries without labels")


# ---------------------------------------------------------------------------------------
# Reading files


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LatheError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise LatheError(f"{path}: reading parquet needs pyarrow") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise LatheError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LatheError(f"{path}:{n}: malformed JSON line: {e.msg}") from None
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise LatheError(f"{path}: row {n} is not a JSON object")
    return rows


def _need(row: dict, keys: Iterable[str], where: str) -> None:
    for k in keys:
        if k not in row:
            raise LatheError(f"{where}: missing field {k!r}")


def parse_doc(documentation: Any) -> Any:
    if not isinstance(documentation, str):
        return documentation
    try:
        return json.loads(documentation)
    except json.JSONDecodeError:
        return documentation  # opaque text is allowed


def tool_from_row(row: dict, where: str, category: str = "") -> Tool:
    _need(row, ("id", "documentation"), where)
    raw = row["documentation"]
    documentation = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    return Tool(str(row["id"]), documentation, parse_doc(raw), row.get("category", category) or category)


def load_tools(paths: str | Path | Iterable[str | Path]) -> list[Tool]:
    """Tools from one or more files; the full corpus is their concatenation (ids must be unique)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tools: list[Tool] = []
    seen: set[str] = set()
    for p in paths:
        stem = Path(p).stem.lower()
        cat = next((c for c in CATEGORIES if c in stem), "")
        for n, row in enumerate(read_rows(p), 1):
            t = tool_from_row(row, f"{p}: row {n}", cat)
            if t.id in seen:
                raise LatheError(f"{p}: row {n}: duplicate tool id {t.id!r}")
            seen.add(t.id)
            tools.append(t)
    return tools


def task_of(row: dict) -> str:
    if row.get("task"):
        return str(row["task"])
    qid = str(row["id"])
    return qid.split("_query_")[0] if "_query_" in qid else qid.rsplit("_", 1)[0]


def query_from_row(row: dict, where: str) -> Query:
    _need(row, ("id", "query", "labels"), where)
    labels = row["labels"]
    if isinstance(labels, str):
        try:
            labels = json.loads(labels)
        except json.JSONDecodeError as e:
            raise LatheError(f"{where}: 'labels' is not a JSON string ({e.msg})") from None
    if not isinstance(labels, list) or not all(isinstance(x, dict) and "id" in x for x in labels):
        raise LatheError(f"{where}: 'labels' must decode to a list of {{id, relevance}} objects")
    task = task_of(row)
    category = str(row.get("category") or "") or TASK_CATEGORY.get(task.lower())
    if not category:
        raise LatheError(f"{where}: no 'category', and task {task!r} is not one of ToolRet's 35 tasks; "
                         f"add a 'category' ({', '.join(CATEGORIES)})")
    return Query(str(row["id"]), str(row["query"]), str(row.get("instruction") or ""), labels, category, task)


def load_queries(paths: str | Path | Iterable[str | Path]) -> list[Query]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        out += [query_from_row(r, f"{p}: row {n}") for n, r in enumerate(read_rows(p), 1)]
    return out


def load(tools: str | Path | Iterable, queries: str | Path | Iterable) -> ToolRetData:
    """Corpus + queries; label ids not in the corpus are reported, empty-label queries skipped and counted."""
    corpus = load_tools(tools)
    return assemble(corpus, load_queries(queries))


def assemble(corpus: list[Tool], queries: list[Query]) -> ToolRetData:
    ids = {t.id for t in corpus}
    missing, kept, empty = [], [], 0
    for q in queries:
        if not q.labels:
            empty += 1
            continue
        missing += [(q.id, str(lab["id"])) for lab in q.labels if str(lab["id"]) not in ids]
        kept.append(q)
    return ToolRetData(corpus, kept, missing, empty)


def load_training(path: str | Path) -> list[dict]:
    """Training triples in either published layout -> `{query, instruction, pos: [str], neg: [str]}`."""
    out = []
    for n, row in enumerate(read_rows(path), 1):
        where = f"{path}: row {n}"
        _need(row, ("query",), where)
        pos = row.get("pos", row.get("positive"))
        neg = row.get("neg", row.get("negative", []))
        if not pos:
            raise LatheError(f"{where}: no positives (expected 'pos' or 'positive')")
        as_text = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in pos]
        neg_text = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in (neg or [])]
        out.append({"query": str(row["query"]), "instruction": str(row.get("prompt") or row.get("instruction") or ""),
                    "pos": as_text, "neg": neg_text})
    return out


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------
# Seeded synthetic generator. Documents use each concept's first word; queries paraphrase with
# the other synonyms (lexical overlap deliberately low); instructions, written "with knowledge of
# the gold tools" as in the paper, name the tools' functions in documentation vocabulary.

# concept -> synonyms; [0] is the documentation word
_ACTIONS = [
    ["retrieve", "fetch", "look up", "find out"], ["create", "make", "set up", "start"],
    ["delete", "remove", "erase", "drop"], ["update", "change", "modify", "edit"],
    ["search", "hunt for", "browse", "explore"], ["convert", "transform", "turn", "translate"],
    ["schedule", "book", "plan", "arrange"], ["analyze", "examine", "inspect", "study"],
    ["summarize", "condense", "shorten", "recap"], ["compare", "contrast", "weigh", "rank"],
    ["calculate", "compute", "work out", "figure"], ["validate", "verify", "confirm", "check"],
    ["export", "save", "download", "dump"], ["notify", "alert", "remind", "ping"],
    ["generate", "produce", "compose", "draft"], ["filter", "narrow", "sift", "screen"],
]
_OBJECTS = [
    ["forecast", "weather outlook", "predicted conditions"], ["playlist", "song list", "track queue"],
    ["recipe", "cooking instructions", "dish preparation"], ["flight", "plane ticket", "air travel"],
    ["hotel", "lodging", "accommodation"], ["stock quote", "share price", "equity value"],
    ["headline", "news story", "press article"], ["invoice", "bill", "payment request"],
    ["calendar event", "appointment", "meeting slot"], ["email", "mail message", "inbox note"],
    ["matrix", "2d array", "grid of numbers"], ["string", "text snippet", "character sequence"],
    ["tensor", "multidimensional array", "nd array"], ["dataframe", "data table", "spreadsheet rows"],
    ["graph", "network of nodes", "node link structure"], ["polynomial", "algebraic expression", "equation terms"],
    ["image", "picture", "photo"], ["audio clip", "sound recording", "voice sample"],
    ["video", "movie clip", "footage"], ["translation", "language rendering", "localized text"],
    ["route", "driving directions", "path between places"], ["review", "customer opinion", "user rating"],
    ["contact", "address book entry", "phone number record"], ["repository", "code project", "source tree"],
    ["transaction", "payment record", "money transfer"], ["ticket", "support case", "help desk issue"],
    ["lyrics", "song words", "verse text"], ["score", "match result", "game outcome"],
    ["nutrition facts", "calorie information", "dietary values"], ["exchange rate", "currency conversion", "forex price"],
    ["model checkpoint", "trained network weights", "saved neural net"], ["dataset", "data collection", "training corpus"],
]
_DOMAINS = {
    "web": [["spotify", "streaming music service"], ["tmdb", "film database"], ["yelp", "restaurant guide"],
            ["expedia", "travel agency"], ["nasdaq", "stock exchange"], ["gmail", "webmail provider"],
            ["openweather", "meteorology service"], ["github", "code hosting site"], ["paypal", "online wallet"],
            ["twitter", "microblogging network"], ["uber", "ride hailing app"], ["espn", "sports network"]],
    "code": [["numpy", "numerical python library"], ["pandas", "tabular analysis library"],
             ["pytorch", "deep learning framework"], ["sympy", "symbolic math package"],
             ["networkx", "graph algorithms package"], ["huggingface", "model hub"], ["regex", "pattern matching module"],
             ["opencv", "computer vision toolkit"]],
    "customized": [["photoshop", "image editing suite"], ["assistant", "personal helper app"],
                   ["smarthome", "home automation hub"], ["fitness", "workout tracker"],
                   ["pantry", "kitchen inventory app"], ["studio", "media production app"],
                   ["classroom", "education platform"], ["helpdesk", "customer support console"]],
}
_PARAMS = [
    ["location", "place", "where"], ["date", "day", "when"], ["limit", "how many", "maximum count"],
    ["language", "tongue", "locale"], ["user_id", "account", "person"], ["query", "keywords", "search terms"],
    ["format", "output style", "file type"], ["currency", "money unit", "denomination"],
    ["threshold", "cutoff", "minimum level"], ["path", "file location", "folder"],
    ["precision", "decimal places", "rounding"], ["category", "kind", "genre"],
]
_PARAM_TYPES = ["string", "integer", "number", "boolean", "array"]
_GOALS = ["answer the user's request", "complete the workflow", "return the result to the user",
          "finish the multi-step task"]
_QUERY_OPENERS = ["Could you", "Please", "I want you to", "Can you", "Help me", "I need to"]


def _syn(rng: random.Random, words: list[str], p_doc: float) -> str:
    return words[0] if rng.random() < p_doc else rng.choice(words[1:])


def _make_tool(rng: random.Random, category: str, idx: int, used: set[str]) -> tuple[dict, dict]:
    while True:
        a, o = rng.randrange(len(_ACTIONS)), rng.randrange(len(_OBJECTS))
        d = rng.randrange(len(_DOMAINS[category]))
        domain = _DOMAINS[category][d][0]
        act, obj = _ACTIONS[a][0], _OBJECTS[o][0]
        name = f"{domain}_{act.replace(' ', '_')}_{obj.replace(' ', '_')}"
        if name in used:
            name = f"{name}_v{idx}"
        if name not in used:
            used.add(name)
            break
    params = rng.sample(range(len(_PARAMS)), rng.randint(1, 3))
    doc = {
        "name": name,
        "description": f"{act.capitalize()} the {obj} using the {domain} {category} interface.",
        "parameters": {_PARAMS[p][0]: {"description": f"The {_PARAMS[p][0].replace('_', ' ')} of the {obj}.",
                                       "type": rng.choice(_PARAM_TYPES)} for p in params},
    }
    if rng.random() < 0.3:
        doc["parameters"][_PARAMS[params[0]][0]]["default"] = None
    meta = {"a": a, "o": o, "d": d, "params": params, "category": category}
    return doc, meta


def toolret_synthetic(seed: int = 0, n_tools: int = 2000, n_queries: int = 300, n_train: int = 2000,
                      n_neg: int = 7) -> dict[str, list[dict]]:
    """Rows in the published layouts: {"tools": [...], "queries": [...], "train": [...]}.

    Tools are split over web / code / customized (60 / 20 / 20 %), every query needs 1-3 gold tools
    from one category and carries a template instruction; ids of the tasks: synth-web, synth-code,
    synth-customized. Deterministic per seed.
    """
    if n_tools < 12:
        raise LatheError(f"toolret_synthetic: n_tools must be >= 12 (got {n_tools})")
    rng = random.Random(seed)
    shares = {"web": 0.6, "code": 0.2, "customized": 0.2}
    counts = {c: max(4, int(n_tools * s)) for c, s in shares.items()}
    counts["web"] = n_tools - counts["code"] - counts["customized"]
    tools, metas, used = [], [], set()
    for cat in CATEGORIES:
        for i in range(counts[cat]):
            doc, meta = _make_tool(rng, cat, i, used)
            tid = f"{cat}_tool_{i}"
            meta["id"] = tid
            tools.append({"id": tid, "documentation": json.dumps(doc, ensure_ascii=False)})
            metas.append(meta)
    by_cat = {c: [m for m in metas if m["category"] == c] for c in CATEGORIES}
    docs = {t["id"]: t["documentation"] for t in tools}

    def make_query(qid: str, cat: str, p_doc: float) -> dict:
        gold = rng.sample(by_cat[cat], rng.choice([1, 1, 2, 2, 3]))
        parts, funcs, inputs = [], [], []
        for g in gold:
            dom = _DOMAINS[cat][g["d"]]
            params = ", ".join(_syn(rng, _PARAMS[p], p_doc) for p in g["params"])
            parts.append(f"{_syn(rng, _ACTIONS[g['a']], p_doc)} the {_syn(rng, _OBJECTS[g['o']], p_doc)} "
                         f"on the {_syn(rng, dom, p_doc)} given the {params}")
            funcs.append(f"{_ACTIONS[g['a']][0]} the {_syn(rng, _OBJECTS[g['o']], 0.5)}")
            inputs += [_PARAMS[p][0].replace("_", " ") for p in g["params"]]
        text = f"{rng.choice(_QUERY_OPENERS)} " + ", then ".join(parts) + "?"
        instruction = INSTRUCTION_TEMPLATE.format(task=f"synth-{cat}", function=" and ".join(funcs),
                                                  inputs=", ".join(dict.fromkeys(inputs)), goal=rng.choice(_GOALS))
        labels = [{"id": g["id"], "doc": json.loads(docs[g["id"]]), "relevance": 1} for g in gold]
        return {"id": qid, "query": text, "instruction": instruction, "labels": json.dumps(labels),
                "category": cat, "gold_meta": gold}

    queries = []
    for i in range(n_queries):
        cat = rng.choices(CATEGORIES, weights=[0.6, 0.2, 0.2])[0]
        q = make_query(f"synth-{cat}_query_{i}", cat, p_doc=0.2)
        q.pop("gold_meta")
        queries.append(q)
    train = []
    for i in range(n_train):
        cat = rng.choices(CATEGORIES, weights=[0.6, 0.2, 0.2])[0]
        q = make_query(f"synth-train_{i}", cat, p_doc=0.2)
        gold = {g["id"] for g in q["gold_meta"]}
        # random negatives; the hard-negative mining step replaces them with retrieved ones
        negs = [m["id"] for m in rng.sample(metas, min(len(metas), n_neg + 3)) if m["id"] not in gold][:n_neg]
        train.append({"query": q["query"], "pos": [docs[g] for g in sorted(gold)], "neg": [docs[n] for n in negs],
                      "prompt": q["instruction"]})
    return {"tools": tools, "queries": queries, "train": train}


def write_synthetic(out_dir: str | Path, seed: int = 0, n_tools: int = 2000, n_queries: int = 300,
                    n_train: int = 2000) -> dict[str, Path]:
    rows = toolret_synthetic(seed, n_tools, n_queries, n_train)
    out_dir = Path(out_dir)
    return {k: write_jsonl(v, out_dir / f"{k}.jsonl") for k, v in rows.items()}


def synthetic_data(seed: int = 0, n_tools: int = 2000, n_queries: int = 300) -> ToolRetData:
    rows = toolret_synthetic(seed, n_tools, n_queries, n_train=0)
    corpus = [tool_from_row(r, "synthetic", r["id"].split("_tool_")[0]) for r in rows["tools"]]
    return assemble(corpus, [query_from_row(r, "synthetic") for r in rows["queries"]])
