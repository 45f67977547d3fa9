"""Multi-hop QA: a seeded synthetic knowledge graph rendered as passages, 2-4-hop questions with
distractors, loaders for HotpotQA / MuSiQue / 2WikiMultihopQA / StrategyQA files, and retrieval.

Every dataset maps to rows `{qid, question, answers[], gold_passage_ids[], type}` (plus
`context_ids`, the question's own distractor set when the file has one, and for synthetic rows
`hops`: the gold chain of `{sub_question, answer, passage_id}`). Passages are `{id, title, text}`;
DPR TSV (`id\\ttext\\ttitle`) and JSONL are both read.

Field mappings of the published files:
  - HotpotQA (JSON list): `_id`, `question`, `answer`, `supporting_facts` [[title, sent]], `context` [[title, [sents]]];
  - MuSiQue (JSONL): `id`, `question`, `answer`, `answer_aliases`, `paragraphs` [{idx, title, paragraph_text, is_supporting}];
  - 2WikiMultihopQA (JSON list): as HotpotQA (`_id`, `supporting_facts`, `context`, `type`);
  - StrategyQA (JSON list): `qid`, `question`, `answer` (bool -> "True"/"False").

Retrieval modes: `oracle` (the gold passages), `simulation` (gold plus distractors, shuffled),
`index` (BM25 over the corpus in-process here; the Serve `PassageRetriever` in
`lathe.serve.agents_app` serves the same index). Results are `"Title: <title> Text: <text>"`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lathe.platform.errors import LatheError

FORMATS = ("hotpotqa", "musique", "2wiki", "strategyqa", "lathe")
MODES = ("oracle", "simulation", "index")

_SYL = ["an", "bel", "cor", "dra", "el", "fen", "gor", "hal", "is", "jor", "kel", "lum", "mar", "nor", "ost",
        "pra", "quin", "ros", "sel", "tor", "ul", "var", "wen", "yst", "zar"]
_FIELDS = ["physics", "botany", "poetry", "chess", "sculpture", "medicine", "astronomy", "linguistics"]
_INDUSTRY = ["shipping", "textiles", "software", "mining", "brewing", "aviation"]


def _word(rng: random.Random, n: int, used: set) -> str:
    while True:
        w = "".join(rng.choice(_SYL) for _ in range(n)).capitalize()
        if w not in used:
            used.add(w)
            return w


def build_graph(seed: int = 0, n_countries: int = 8, n_cities: int = 20, n_people: int = 40,
                n_companies: int = 16, n_films: int = 16) -> dict:
    rng = random.Random(seed)
    used: set = set()
    countries = [{"id": f"country:{i}", "name": _word(rng, 3, used) + "ia"} for i in range(n_countries)]
    cities = [{"id": f"city:{i}", "name": _word(rng, 2, used) + rng.choice(["ton", "burg", "ville", "port"]),
               "country": countries[i % n_countries]["id"]} for i in range(n_cities)]
    for c in countries:  # a capital among its own cities
        own = [x for x in cities if x["country"] == c["id"]]
        c["capital"] = own[0]["id"]
        c["founded"] = str(rng.randrange(900, 1900))
    people = [{"id": f"person:{i}", "name": f"{_word(rng, 2, used)} {_word(rng, 3, used)}",
               "born_in": rng.choice(cities)["id"], "field": rng.choice(_FIELDS),
               "born": str(rng.randrange(1850, 1990))} for i in range(n_people)]
    companies = [{"id": f"company:{i}", "name": _word(rng, 2, used) + rng.choice([" Works", " Group", " & Co"]),
                  "founder": rng.choice(people)["id"], "hq": rng.choice(cities)["id"],
                  "industry": rng.choice(_INDUSTRY)} for i in range(n_companies)]
    films = [{"id": f"film:{i}", "name": f"The {_word(rng, 2, used)} {rng.choice(['Affair', 'Journey', 'Letters'])}",
              "director": rng.choice(people)["id"], "year": str(rng.randrange(1930, 2020))} for i in range(n_films)]
    return {"country": countries, "city": cities, "person": people, "company": companies, "film": films}


def render_passages(g: dict) -> list[dict]:
    """One entity page per entity; each fact sits on its subject's page (the bridge to the next hop)."""
    E = {e["id"]: e for kind in g.values() for e in kind}
    out = []
    for c in g["country"]:
        out.append((c, f"{c['name']} is a country whose capital is {E[c['capital']]['name']}. It was founded in "
                       f"{c['founded']}."))
    for c in g["city"]:
        out.append((c, f"{c['name']} is a city in {E[c['country']]['name']}. It is known for its old harbour."))
    for p in g["person"]:
        out.append((p, f"{p['name']} (born {p['born']}) was a scholar of {p['field']} who was born in "
                       f"{E[p['born_in']]['name']}."))
    for c in g["company"]:
        out.append((c, f"{c['name']} is a {c['industry']} company founded by {E[c['founder']]['name']}. Its "
                       f"headquarters are in {E[c['hq']]['name']}."))
    for f in g["film"]:
        out.append((f, f"{f['name']} is a {f['year']} film directed by {E[f['director']]['name']}."))
    return [{"id": e["id"], "title": e["name"], "text": t} for e, t in out]


def _chains(g: dict, rng: random.Random) -> list[dict]:
    E = {e["id"]: e for kind in g.values() for e in kind}
    rows = []

    def hop(q: str, subject_id: str, answer_id_or_text: str) -> dict:
        ans = E[answer_id_or_text]["name"] if answer_id_or_text in E else answer_id_or_text
        return {"sub_question": q, "answer": ans, "passage_id": subject_id}

    for c in g["company"]:
        f = E[c["founder"]]
        city = E[f["born_in"]]
        rows.append(("2-hop", f"In which city was the founder of {c['name']} born?",
                     [hop(f"Who founded {c['name']}?", c["id"], f["id"]),
                      hop(f"Where was {f['name']} born?", f["id"], city["id"])]))
        country = E[city["country"]]
        rows.append(("3-hop", f"In which country was the founder of {c['name']} born?",
                     [hop(f"Who founded {c['name']}?", c["id"], f["id"]),
                      hop(f"Where was {f['name']} born?", f["id"], city["id"]),
                      hop(f"Which country is {city['name']} in?", city["id"], country["id"])]))
    for fl in g["film"]:
        d = E[fl["director"]]
        city = E[d["born_in"]]
        country = E[city["country"]]
        rows.append(("2-hop", f"What field did the director of {fl['name']} study?",
                     [hop(f"Who directed {fl['name']}?", fl["id"], d["id"]),
                      hop(f"What field did {d['name']} study?", d["id"], d["field"])]))
        rows.append(("4-hop", f"What is the capital of the country where the director of {fl['name']} was born?",
                     [hop(f"Who directed {fl['name']}?", fl["id"], d["id"]),
                      hop(f"Where was {d['name']} born?", d["id"], city["id"]),
                      hop(f"Which country is {city['name']} in?", city["id"], country["id"]),
                      hop(f"What is the capital of {country['name']}?", country["id"], country["capital"])]))
    return rows


def generate(seed: int = 0, n: int | None = None, distractors: int = 6) -> tuple[list[dict], list[dict]]:
    """(questions, passages) of the synthetic corpus. Each question's `context_ids` holds its gold
    passages plus `distractors` pages of the same kinds, shuffled."""
    g = build_graph(seed)
    passages = render_passages(g)
    rng = random.Random(f"multihop:{seed}")
    ids = [p["id"] for p in passages]
    rows = []
    for i, (typ, q, hops) in enumerate(_chains(g, rng)):
        gold = [h["passage_id"] for h in hops]
        kinds = {x.split(":")[0] for x in gold}
        pool = [x for x in ids if x not in gold and x.split(":")[0] in kinds]
        ctx = gold + rng.sample(pool, min(distractors, len(pool)))
        rng.shuffle(ctx)
        rows.append({"qid": f"syn-{i}", "question": q, "answers": [hops[-1]["answer"]], "gold_passage_ids": gold,
                     "type": typ, "context_ids": ctx, "hops": hops})
    rng.shuffle(rows)
    return (rows[:n] if n else rows), passages


# --------------------------------------------------------------------------------------------
# Loaders


def _read_rows(path: Path) -> list:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LatheError(f"{path}: no such file") from None
    s = text.lstrip()
    try:
        if s.startswith("["):
            return json.loads(s)
        if s.startswith("{") and "\n" not in s.strip():
            return [json.loads(s)]
        if s.startswith("{") and s.rstrip().endswith("}") and s.count("\n{") == 0:
            obj = json.loads(s)
            return obj.get("data", [obj]) if isinstance(obj, dict) else obj
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not JSON or JSONL ({e.msg} at line {e.lineno})") from None


def _req(r: Any, key: str, where: str):
    if not isinstance(r, dict) or key not in r:
        raise LatheError(f"{where}: missing field {key!r}")
    return r[key]


def _hotpot_like(rows: list, src: str) -> tuple[list[dict], list[dict]]:
    out, passages = [], {}
    for i, r in enumerate(rows):
        where = f"{src}: row {i}"
        qid, q, a = _req(r, "_id", where), _req(r, "question", where), _req(r, "answer", where)
        ctx = _req(r, "context", where)
        ids = []
        for item in ctx:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise LatheError(f"{where}: context items must be [title, [sentences]]")
            title, sents = item
            pid = str(title)
            passages.setdefault(pid, {"id": pid, "title": str(title),
                                      "text": " ".join(sents) if isinstance(sents, list) else str(sents)})
            ids.append(pid)
        gold = list(dict.fromkeys(str(t) for t, *_ in _req(r, "supporting_facts", where)))
        out.append({"qid": str(qid), "question": q, "answers": [str(a)], "gold_passage_ids": gold,
                    "type": str(r.get("type", "")), "context_ids": ids})
    return out, list(passages.values())


def _musique(rows: list, src: str) -> tuple[list[dict], list[dict]]:
    out, passages = [], []
    for i, r in enumerate(rows):
        where = f"{src}: row {i}"
        qid = str(_req(r, "id", where))
        answers = [str(_req(r, "answer", where))] + [str(x) for x in r.get("answer_aliases", []) or []]
        ids, gold = [], []
        for p in _req(r, "paragraphs", where):
            if not isinstance(p, dict) or "paragraph_text" not in p:
                raise LatheError(f"{where}: paragraphs need idx, title, paragraph_text")
            pid = f"{qid}-{p.get('idx', len(ids))}"
            passages.append({"id": pid, "title": str(p.get("title", "")), "text": p["paragraph_text"]})
            ids.append(pid)
            if p.get("is_supporting"):
                gold.append(pid)
        out.append({"qid": qid, "question": _req(r, "question", where), "answers": answers,
                    "gold_passage_ids": gold, "type": qid.split("__")[0] if "__" in qid else "", "context_ids": ids})
    return out, passages


def _strategyqa(rows: list, src: str) -> tuple[list[dict], list[dict]]:
    out = []
    for i, r in enumerate(rows):
        where = f"{src}: row {i}"
        a = _req(r, "answer", where)
        if not isinstance(a, bool):
            raise LatheError(f"{where}: StrategyQA answer must be true or false")
        out.append({"qid": str(_req(r, "qid", where)), "question": _req(r, "question", where),
                    "answers": [str(a)], "gold_passage_ids": [], "type": "strategyqa", "context_ids": []})
    return out, []


def load_questions(path: str | Path, fmt: str) -> tuple[list[dict], list[dict]]:
    """(questions, passages found in the file) for a published file of format `fmt`."""
    if fmt not in FORMATS:
        raise LatheError(f"format: expected one of {', '.join(FORMATS)} (got {fmt!r})")
    p = Path(path)
    rows = _read_rows(p)
    if fmt in ("hotpotqa", "2wiki"):
        return _hotpot_like(rows, str(p))
    if fmt == "musique":
        return _musique(rows, str(p))
    if fmt == "strategyqa":
        return _strategyqa(rows, str(p))
    for i, r in enumerate(rows):
        for k in ("qid", "question", "answers", "gold_passage_ids"):
            _req(r, k, f"{p}: row {i}")
    return rows, []


def load_passages(path: str | Path) -> list[dict]:
    """DPR TSV (`id\\ttext\\ttitle`, header optional) or JSONL `{id, title, text}`."""
    p = Path(path)
    if p.suffix == ".tsv":
        out = []
        for n, line in enumerate(p.read_text().splitlines()):
            parts = line.split("\t")
            if n == 0 and parts[0] == "id":
                continue
            if len(parts) != 3:
                raise LatheError(f"{p}: line {n + 1}: expected id<TAB>text<TAB>title")
            out.append({"id": parts[0], "text": parts[1], "title": parts[2]})
        return out
    rows = _read_rows(p)
    for i, r in enumerate(rows):
        for k in ("id", "text"):
            _req(r, k, f"{p}: row {i}")
    return [{"id": str(r["id"]), "title": str(r.get("title", "")), "text": r["text"]} for r in rows]


# --------------------------------------------------------------------------------------------
# Retrieval


def passage_string(p: dict) -> str:
    return f"Title: {p['title']} Text: {p['text']}"


class PassageIndex:
    """BM25 over `Title + Text` (the tool retriever's BM25, over passages)."""

    def __init__(self, passages: list[dict]):
        from lathe.data.toolret import Tool
        from lathe.methods.retrieval.bm25 import BM25Retriever

        self.by_id = {p["id"]: p for p in passages}
        self.bm25 = BM25Retriever()
        self.bm25.index([Tool(p["id"], passage_string(p), passage_string(p)) for p in passages])

    def search(self, query: str, k: int = 10) -> list[dict]:
        if not query.strip():
            return []
        return [self.by_id[i] for i, _ in self.bm25.search([query], k=min(k, len(self.by_id)))[0]]


class Knowledge:
    """`retrieve(sub_question, k)` for one question under a retrieval mode."""

    def __init__(self, passages: list[dict], mode: str = "oracle", seed: int = 0,
                 search: Callable[[str, int], list[dict]] | None = None):
        if mode not in MODES:
            raise LatheError(f"knowledge.mode: expected one of {', '.join(MODES)} (got {mode!r})")
        self.by_id = {p["id"]: p for p in passages}
        self.mode, self.seed = mode, seed
        self._search = search
        if mode == "index" and search is None:
            self._search = PassageIndex(passages).search
        self.calls: list[str] = []

    def for_question(self, row: dict) -> Callable[[str, int], list[str]]:
        def retrieve(query: str, k: int = 10) -> list[str]:
            self.calls.append(query)
            if self.mode == "index":
                return [passage_string(p) for p in self._search(query, k)]
            gold = [self.by_id[i] for i in row["gold_passage_ids"] if i in self.by_id]
            if self.mode == "oracle":
                return [passage_string(p) for p in gold][:k]
            rng = random.Random(f"{self.seed}:{row['qid']}")
            ctx = [self.by_id[i] for i in row.get("context_ids", []) if i in self.by_id and
                   i not in row["gold_passage_ids"]]
            if not ctx:
                others = [p for p in self.by_id.values() if p["id"] not in row["gold_passage_ids"]]
                ctx = rng.sample(others, min(len(others), max(0, k - len(gold))))
            docs = gold + ctx[: max(0, k - len(gold))]
            rng.shuffle(docs)
            return [passage_string(p) for p in docs]

        return retrieve
