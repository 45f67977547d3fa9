"""EVOKE data: loaders for the published files and a seeded synthetic counterfactual generator.

Published format (Acruxos/EVOKE):
- `evoke_main.json`: list of records with `requested_rewrite`, `paraphrase_prompts` (2),
  `neighborhood_prompts` (10), `attribute_prompts`, `generation_prompts`, `portability`
  (`{}` or `Recalled Relation`, `New Question`, `New Answer`, `Original Answer`) and
  `prefix_distraction` (10).
- `evoke_subj_spec.json`: list of records with `requested_rewrite` (with `relation_label`)
  and `relation_specificity: {prompt, answer: {value, aliases}}`.

Naming trap, resolved here once: the reference calls the same-relation/other-subject
prompts (`neighborhood_prompts`) "rel_spec" -> our task `relation_specificity`; its field
`relation_specificity` holds same-subject/other-relation prompts -> our task `subject_specificity`.

The synthetic generator builds a fictional knowledge graph (pseudo-word subjects, place
objects with multi-token names, relations with >= 3 templates, and two attributes of every
place so that 2-hop questions have a right answer) and emits both files in the same format.
`knowledge_corpus` gives the (prompt, answer) rows a tiny model is fine-tuned on first.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lathe.platform.errors import LatheError

GENERATOR_VERSION = 3  # bump when the synthetic graph changes (invalidates cached knowledge models)
MULTIHOP_SUFFIX = " The answer to this question, most simply, is"
ICL_PREFIX = "Imagine that {} {}\n"


@dataclass(frozen=True)
class EditRequest:
    """A CounterFact-compatible edit (s, r, o -> o*)."""

    prompt: str  # template containing "{}" for the subject
    subject: str
    target_new: str
    target_true: str
    case_id: int = 0
    relation_id: str = ""

    @property
    def text(self) -> str:
        return self.prompt.format(self.subject)

    @classmethod
    def from_record(cls, rec: dict) -> "EditRequest":
        rw = rec["requested_rewrite"]
        return cls(prompt=rw["prompt"], subject=rw["subject"], target_new=rw["target_new"]["str"],
                   target_true=rw["target_true"]["str"], case_id=int(rec.get("case_id", 0)),
                   relation_id=str(rw.get("relation_id", rw.get("relation_label", ""))))


# ---------------------------------------------------------------------------------------
# Loaders


def _fail(path, i, msg) -> LatheError:
    return LatheError(f"{path}: record {i}: {msg}")


def _check_rewrite(path, i, rec: dict, rel_key: str) -> None:
    rw = rec.get("requested_rewrite")
    if not isinstance(rw, dict):
        raise _fail(path, i, "missing object 'requested_rewrite'")
    for k in ("prompt", "subject", rel_key):
        if not isinstance(rw.get(k), str):
            raise _fail(path, i, f"requested_rewrite.{k} must be a string")
    if "{}" not in rw["prompt"]:
        raise _fail(path, i, "requested_rewrite.prompt has no '{}' placeholder for the subject")
    for k in ("target_new", "target_true"):
        if not isinstance(rw.get(k), dict) or not isinstance(rw[k].get("str"), str):
            raise _fail(path, i, f"requested_rewrite.{k} must be an object with a 'str' field")


def _read_list(path: str | Path) -> list:
    path = Path(path)
    if not path.is_file():
        raise LatheError(f"{path}: no such EVOKE file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, list):
        raise LatheError(f"{path}: expected a JSON list of records")
    return data


def load_evoke_main(path: str | Path) -> list[dict]:
    """Records of `evoke_main.json`, validated (the official file loads unchanged)."""
    data = _read_list(path)
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise _fail(path, i, "expected an object")
        _check_rewrite(path, i, rec, "relation_id")
        for k in ("paraphrase_prompts", "neighborhood_prompts", "prefix_distraction"):
            v = rec.get(k)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise _fail(path, i, f"{k} must be a list of strings")
        port = rec.get("portability", {})
        if not isinstance(port, dict):
            raise _fail(path, i, "portability must be an object ({} when absent)")
        if port:
            for k in ("New Question", "New Answer", "Original Answer"):
                if not isinstance(port.get(k), str):
                    raise _fail(path, i, f"portability.{k!s} must be a string")
    return data


def load_evoke_subj_spec(path: str | Path) -> list[dict]:
    """Records of `evoke_subj_spec.json` (field `relation_specificity` = our subject_specificity task)."""
    data = _read_list(path)
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise _fail(path, i, "expected an object")
        _check_rewrite(path, i, rec, "relation_label")
        rs = rec.get("relation_specificity")
        if not isinstance(rs, dict) or not isinstance(rs.get("prompt"), str) \
                or not isinstance(rs.get("answer"), dict) or not isinstance(rs["answer"].get("value"), str):
            raise _fail(path, i, "relation_specificity must be {prompt: str, answer: {value: str, aliases: [...]}}")
    return data


def write_json(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


# ---------------------------------------------------------------------------------------
# Synthetic knowledge graph

# (relation id, noun phrase for 2-hop questions with {} = subject, templates)
RELATIONS: list[tuple[str, str, list[str]]] = [
    ("P19", "the city where {} was born", ["{} was born in", "The birthplace of {} is", "{} was born in the city of"]),
    ("P20", "the city where {} died", ["{} died in", "The place of death of {} is", "{} passed away in"]),
    ("P551", "the city where {} lives", ["{} lives in", "The home of {} is", "{} resides in"]),
    ("P937", "the city where {} works", ["{} works in", "The workplace of {} is", "{} is employed in"]),
    ("P69", "the city where {} studied", ["{} studied in", "The university town of {} is", "{} went to school in"]),
    ("P495", "the place {} originates from", ["{} originates from", "The origin of {} is", "{} comes from"]),
    ("P27", "the city {} is a citizen of", ["{} is a citizen of", "The citizenship of {} is", "{} holds a passport of"]),
    ("P740", "the city where {} was founded", ["{} was founded in", "The founding place of {} is", "{} started out in"]),
    ("P159", "the city where {} is headquartered", ["{} is headquartered in", "The headquarters of {} are in",
                                                    "{} has its main office in"]),
    ("P131", "the place {} is located in", ["{} is located in", "The location of {} is", "{} can be found in"]),
    ("P1376", "the city {} governs", ["{} governs", "The city governed by {} is", "{} is the ruler of"]),
    ("P276", "the city where {} performs", ["{} performs in", "The stage of {} is in", "{} gives concerts in"]),
    ("P108", "the city where {} trades", ["{} trades in", "The market of {} is", "{} sells goods in"]),
    ("P1412", "the city whose dialect {} speaks", ["{} speaks the dialect of", "The dialect of {} is from",
                                                   "{} talks like people from"]),
    ("P463", "the city whose guild {} belongs to", ["{} belongs to the guild of", "The guild of {} is in",
                                                    "{} is a guild member in"]),
    ("P106", "the city where {} teaches", ["{} teaches in", "The school of {} is in", "{} gives lessons in"]),
    ("P50", "the city where {} writes", ["{} writes in", "The writing desk of {} is in", "{} composes books in"]),
    ("P170", "the city where {} paints", ["{} paints in", "The studio of {} is in", "{} makes paintings in"]),
    ("P86", "the city where {} sings", ["{} sings in", "The choir of {} is in", "{} performs songs in"]),
    ("P138", "the city {} is named after", ["{} is named after", "The namesake of {} is", "{} took its name from"]),
]
# attributes of places: (id, question phrase, templates)
PLACE_RELATIONS: list[tuple[str, str, list[str]]] = [
    ("P30", "In which region lies {}?", ["{} lies in the region of", "The region of {} is"]),
    ("P38", "Which coin is used in {}?", ["The coin used in {} is the", "{} pays with the"]),
]
_SYL = ["ka", "lo", "mir", "dan", "ve", "tor", "sul", "ri", "bex", "na", "qu", "zem", "ol", "fa", "gri", "hu",
        "ix", "pel", "zor", "tav", "nor", "ush", "kel", "bry"]
_PLACE_WORDS = ["Port", "Lake", "Mount", "New", "Fort", "Saint", "North", "Old"]
_FILLERS = ["The weather was mild that day.", "Many people like long walks.", "A small cat slept by the door.",
            "The market opened early.", "Someone left a note on the table.", "Bread was baked in the morning.",
            "The river was calm.", "Music played in the hall.", "A bird sang outside.", "The lamp was bright."]


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(n)).capitalize()


def _unique(rng: random.Random, make, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = make()
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


@dataclass
class KnowledgeGraph:
    subjects: list[str]
    places: list[str]
    relations: list[tuple[str, str, list[str]]]
    facts: dict[tuple[str, str], str]  # (subject, relation id) -> place
    place_facts: dict[tuple[str, str], str]  # (place, place relation id) -> value
    place_values: dict[str, list[str]] = field(default_factory=dict)

    def rel(self, rid: str) -> tuple[str, str, list[str]]:
        return next(r for r in self.relations if r[0] == rid)


def build_graph(seed: int, n_subjects: int, n_relations: int = 20, n_places: int = 6) -> KnowledgeGraph:
    if not 2 <= n_relations <= len(RELATIONS):
        raise LatheError(f"n_relations must be in [2, {len(RELATIONS)}] (got {n_relations})")
    if n_places < 3:
        raise LatheError(f"n_places must be >= 3 (got {n_places})")
    rng = random.Random(seed)
    # first and last names are shared between subjects, so that only the whole name (read at its
    # last token) identifies a subject, as with real entities
    firsts = _unique(rng, lambda: _word(rng, 2), 5)
    lasts = _unique(rng, lambda: _word(rng, 2), max(2, -(-n_subjects // 4) + 1))
    pairs = [f"{f} {l}" for l in lasts for f in firsts]
    rng.shuffle(pairs)
    subjects = pairs[:n_subjects]
    places = _unique(rng, lambda: rng.choice(_PLACE_WORDS) + " " + _word(rng, 2), n_places)
    rels = RELATIONS[:n_relations]
    values = {"P30": _unique(rng, lambda: _word(rng, 2) + " Vale", 4),
              "P38": _unique(rng, lambda: _word(rng, 1) + " crown", 4)}
    place_facts = {}
    for rid, vals in values.items():
        # each value used by >= 1 place, so that 2-hop answers differ between places
        for i, p in enumerate(places):
            place_facts[(p, rid)] = vals[i % len(vals)] if i < len(vals) else rng.choice(vals)
    facts = {(s, r[0]): rng.choice(places) for s in subjects for r in rels}
    return KnowledgeGraph(subjects, places, rels, facts, place_facts, values)


def _rec_rewrite(kg: KnowledgeGraph, s: str, rid: str, new: str, rng: random.Random, tmpl_idx: int = 0,
                 label_key: str = "relation_id") -> dict:
    _, _, templates = kg.rel(rid)
    other = [r for r in kg.relations if r[0] != rid]
    rw = {"prompt": templates[tmpl_idx], "subject": s,
          "target_new": {"str": new, "id": f"Q{kg.places.index(new) + 100}"},
          "target_true": {"str": kg.facts[(s, rid)], "id": f"Q{kg.places.index(kg.facts[(s, rid)]) + 100}"},
          "data_augmentation_prompt_para": [rng.choice(_FILLERS) + " " + templates[1 + i % (len(templates) - 1)]
                                            for i in range(10)],
          "data_augmentation_prompt_rel": [rng.choice(other)[2][0] for _ in range(10)]}
    rw[label_key] = rid if label_key == "relation_id" else kg.rel(rid)[1].replace("{}", "X").upper()
    return rw


def evoke_synthetic(seed: int = 0, n_main: int = 1031, n_subj: int = 458, n_relations: int = 20,
                    n_places: int = 6, portability_rate: float = 0.8) -> tuple[list[dict], list[dict], KnowledgeGraph]:
    """(evoke_main records, evoke_subj_spec records, the graph), deterministic for a seed.

    Main records edit distinct subjects; subject-specificity records edit further distinct subjects.
    """
    n_subjects = max(n_main + n_subj, 12)
    kg = build_graph(seed, n_subjects, n_relations, n_places)
    rng = random.Random(seed + 7919)
    main: list[dict] = []
    for i in range(n_main):
        s = kg.subjects[i]
        rid, noun, templates = rng.choice(kg.relations)
        o = kg.facts[(s, rid)]
        new = rng.choice([p for p in kg.places if p != o])
        rw = _rec_rewrite(kg, s, rid, new, rng)
        others = [t for t in kg.subjects if t != s and kg.facts[(t, rid)] == o] or \
                 [t for t in kg.subjects if t != s]
        neigh = [templates[j % len(templates)].format(rng.choice(others)) for j in range(10)]
        # neighbourhood answers must be o: fall back only uses subjects with the same object
        neigh = [n for n in neigh]
        para = [rng.choice(_FILLERS) + " " + templates[1 + j % (len(templates) - 1)].format(s) for j in range(2)]
        attr = [templates[0].format(t) for t in rng.sample(kg.subjects, 10)
                if t != s][:10]
        while len(attr) < 10:
            attr.append(templates[0].format(rng.choice(kg.subjects)))
        port: dict[str, Any] = {}
        if rng.random() < portability_rate:
            prid, question, _ = rng.choice(PLACE_RELATIONS)
            a_new, a_orig = kg.place_facts[(new, prid)], kg.place_facts[(o, prid)]
            q = question.format(noun.format(s))
            port = {"Recalled Relation": f"({new}, {prid}, {a_new})", "New Question": q,
                    "New Answer": a_new, "Original Answer": a_orig}
        rec = {"case_id": i, "pararel_idx": i, "requested_rewrite": rw,
               "paraphrase_prompts": para, "neighborhood_prompts": neigh,
               "attribute_prompts": attr,
               "generation_prompts": [f"{s} is known for" if j % 2 else templates[0].format(s) for j in range(10)],
               "portability": port,
               "prefix_distraction": [f"{rw['prompt'].format(s)} {new}. {p}" for p in neigh]}
        main.append(rec)
    subj: list[dict] = []
    for i in range(n_subj):
        s = kg.subjects[n_main + i]
        rid = rng.choice(kg.relations)[0]
        o = kg.facts[(s, rid)]
        new = rng.choice([p for p in kg.places if p != o])
        rw = _rec_rewrite(kg, s, rid, new, rng, label_key="relation_label")
        rid2, _, templates2 = rng.choice([r for r in kg.relations if r[0] != rid])
        subj.append({"case_id": i, "requested_rewrite": rw,
                     "relation_specificity": {"prompt": templates2[1].format(s),
                                              "answer": {"value": kg.facts[(s, rid2)], "aliases": []}}})
    return main, subj, kg


def multihop_prompt(question: str) -> str:
    return question + MULTIHOP_SUFFIX


def knowledge_corpus(kg: KnowledgeGraph, seed: int = 0, icl_rows: int = 200, distract_rows: int = 200,
                     filler_rows: int = 100) -> list[tuple[str, str]]:
    """(prompt, answer) rows teaching a tiny model the graph: every fact under every template,
    every place attribute, every 2-hop question with its answer, plus in-context skills that a
    large LM already has (use an "Imagine that" fact for the same subject; ignore an unrelated
    preceding sentence; ignore a filler sentence)."""
    rng = random.Random(seed + 104729)
    rows: list[tuple[str, str]] = []
    for (s, rid), o in kg.facts.items():
        for t in kg.rel(rid)[2]:
            rows.append((t.format(s), o))
    for (p, prid), v in kg.place_facts.items():
        _, question, templates = next(r for r in PLACE_RELATIONS if r[0] == prid)
        for t in templates:
            rows.append((t.format(p), v))
    for (s, rid), o in kg.facts.items():
        noun = kg.rel(rid)[1]
        for prid, question, _ in PLACE_RELATIONS:
            rows.append((multihop_prompt(question.format(noun.format(s))), kg.place_facts[(o, prid)]))
    keys = list(kg.facts)
    for _ in range(icl_rows):  # counterfactual in context -> answer from context
        s, rid = rng.choice(keys)
        templates = kg.rel(rid)[2]
        new = rng.choice(kg.places)
        ctx = ICL_PREFIX.format(rng.choice(templates).format(s), new)
        rows.append((ctx + rng.choice(templates).format(s), new))
    for _ in range(distract_rows):  # a sentence about another subject does not change the answer
        (s, rid), (t, rid2) = rng.sample(keys, 2)
        if s == t:
            continue
        rows.append((f"{kg.rel(rid)[2][0].format(s)} {rng.choice(kg.places)}. {kg.rel(rid2)[2][0].format(t)}",
                     kg.facts[(t, rid2)]))
    for _ in range(filler_rows):
        s, rid = rng.choice(keys)
        rows.append((rng.choice(_FILLERS) + " " + rng.choice(kg.rel(rid)[2]).format(s), kg.facts[(s, rid)]))
    return rows


def stats_corpus(kg: KnowledgeGraph, seed: int = 0, n: int = 400) -> list[str]:
    """Plain text for covariance statistics when no local corpus is given."""
    rng = random.Random(seed + 15485863)
    rows = knowledge_corpus(kg, seed, icl_rows=50, distract_rows=50, filler_rows=50)
    texts = [f"{p} {a}." for p, a in rows]
    rng.shuffle(texts)
    return texts[:n] + _FILLERS


def requests_of(records: list[dict]) -> list[EditRequest]:
    return [EditRequest.from_record(r) for r in records]
