"""World facts for editing a real pretrained model: a curated list, a knowledge probe, EVOKE tasks.

`world_facts.json` (shipped with the package, written for lathe) holds small tables (countries
with capital/continent/language/currency, cities, landmarks, companies, products, languages,
people) and twelve relations, each with four prompt templates, a noun phrase and a question.
`load_world()` turns the tables into a few hundred (subject, relation, object) triples.

`probe()` keeps the facts the model knows: its greedy answer to the first template starts with
the object's first token (two tokens for objects starting with "the ", so that a bare "the" does
not count as knowing "the United States"). `known_facts()` caches the probe per model fingerprint.

`evoke_world()` builds EVOKE records in the published layout (`evoke_main.json`,
`evoke_subj_spec.json`, see lathe.data.evoke) around the known facts, with a counterfactual new
object of the same relation (so of the same type):
- efficacy: the first template; paraphrase: two other templates after a filler sentence;
- relation specificity (`neighborhood_prompts`): other subjects with the same relation and the same
  true object (known ones first), so the right answer is o;
- prefix distraction: the edit sentence with o*, then a neighbourhood prompt;
- multi-hop (`portability`): a relation of the object, asked about the edited fact's noun phrase,
  e.g. "What is the capital of the country where Lyon is located?" (New Answer: the capital of o*);
- subject specificity: another known fact about the same subject.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lathe.platform.errors import LatheError

DATA = Path(__file__).with_name("world_facts.json")
PROBE_VERSION = 1  # bump when the probe rule changes (invalidates cached probes)
TABLES = ("countries", "cities", "landmarks", "companies", "products", "languages", "people")


@dataclass(frozen=True)
class Relation:
    id: str
    label: str
    subject_type: str
    object_type: str
    templates: tuple[str, ...]
    noun: str
    question: str


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str


@dataclass
class World:
    relations: dict[str, Relation]
    facts: list[Fact]
    fillers: list[str]
    digest: str
    _index: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {(f.subject, f.relation): f.object for f in self.facts}

    def object_of(self, subject: str, relation: str) -> str | None:
        return self._index.get((subject, relation))

    def prompt(self, fact: Fact, i: int = 0) -> str:
        return fill(self.relations[fact.relation].templates[i], fact.subject)


def fill(template: str, subject: str) -> str:
    """template.format(subject), capitalising a leading "the " subject at the start of a sentence."""
    return template.format(subject_for(template, subject))


def subject_for(template: str, subject: str) -> str:
    """The subject string as it appears in `template` (capitalised at the start)."""
    if template.startswith("{}") and subject[:1].islower():
        return subject[:1].upper() + subject[1:]
    return subject


def load_world(path: str | Path | None = None) -> World:
    """The curated facts (or a file in the same layout), validated with one-line errors."""
    path = Path(path) if path is not None else DATA
    if not path.is_file():
        raise LatheError(f"{path}: no such world-facts file")
    text = path.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    rels: dict[str, Relation] = {}
    for rid, r in (raw.get("relations") or {}).items():
        try:
            t = tuple(r["templates"])
            rel = Relation(rid, r["label"], r["subject"], r["object"], t, r["noun"], r["question"])
        except (KeyError, TypeError):
            raise LatheError(f"{path}: relation {rid}: needs label, subject, object, templates, noun, question") from None
        if len(t) < 3 or any(x.count("{}") != 1 for x in t) or rel.noun.count("{}") != 1 \
                or rel.question.count("{}") != 1:
            raise LatheError(f"{path}: relation {rid}: needs >= 3 templates, each (and noun, question) with one '{{}}'")
        rels[rid] = rel
    if not rels:
        raise LatheError(f"{path}: no relations")
    facts: list[Fact] = []
    seen: set[tuple[str, str]] = set()
    for table in TABLES:
        tab = raw.get(table)
        if tab is None:
            continue
        cols = tab.get("columns") if isinstance(tab, dict) else None
        if not cols or cols[0] != "name" or any(c not in rels for c in cols[1:]):
            raise LatheError(f"{path}: {table}.columns must be ['name', <relation ids>...]")
        for i, row in enumerate(tab.get("rows", [])):
            if not isinstance(row, list) or len(row) != len(cols) or not isinstance(row[0], str):
                raise LatheError(f"{path}: {table}.rows[{i}]: expected {len(cols)} values {cols}")
            for rid, obj in zip(cols[1:], row[1:]):
                if obj is None:
                    continue
                if not isinstance(obj, str) or not obj:
                    raise LatheError(f"{path}: {table}.rows[{i}]: {rid} must be a string or null")
                if (row[0], rid) in seen:
                    raise LatheError(f"{path}: {table}.rows[{i}]: duplicate fact ({row[0]}, {rid})")
                seen.add((row[0], rid))
                facts.append(Fact(row[0], rid, obj))
    # capitals are cities too: their country is a fact of relation P17
    if "P17" in rels and "P36" in rels:
        for f in list(facts):
            if f.relation == "P36" and (f.object, "P17") not in seen:
                seen.add((f.object, "P17"))
                facts.append(Fact(f.object, "P17", f.subject))
    fillers = [s for s in raw.get("fillers", []) if isinstance(s, str)] or ["It was a quiet day."]
    return World(rels, facts, fillers, hashlib.sha256(text.encode()).hexdigest()[:16])


# ---------------------------------------------------------------------------------------
# The knowledge probe


def _match_len(obj: str) -> int:
    return 2 if obj.lower().startswith("the ") else 1


def probe(model, tok, world: World, facts: list[Fact] | None = None, batch_size: int = 32) -> list[dict]:
    """Per fact: the first template's prompt, the greedy answer's first tokens, and `known`
    (they equal the object's first token(s); see the module docstring)."""
    import torch

    from lathe.methods.editing.common import continuation_ids, pad

    facts = world.facts if facts is None else facts
    rows = []
    for i in range(0, len(facts), batch_size):
        chunk = facts[i:i + batch_size]
        prompts = [world.prompt(f) for f in chunk]
        seqs = [tok(p)["input_ids"] for p in prompts]
        greedy: list[list[int]] = [[] for _ in chunk]
        for _ in range(2):
            enc = pad([s + g for s, g in zip(seqs, greedy)], tok.pad_token_id if tok.pad_token_id is not None else 0,
                      "left")
            mask = enc["attention_mask"]
            with torch.no_grad():
                logits = model(input_ids=enc["input_ids"], attention_mask=mask, logits_to_keep=1,
                               position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
            for g, t in zip(greedy, logits.argmax(-1).tolist()):
                g.append(t)
        for f, p, g in zip(chunk, prompts, greedy):
            want = continuation_ids(tok, p, f.object)[:_match_len(f.object)]
            rows.append({"subject": f.subject, "relation": f.relation, "object": f.object, "prompt": p,
                         "greedy": tok.decode(g), "known": g[:len(want)] == want})
    return rows


def known_facts(model, tok, world: World, cache_dir: str | Path | None = None) -> tuple[list[Fact], dict]:
    """(facts the model knows, probe info); the probe is cached per (model fingerprint, world file)."""
    from lathe.methods.editing.common import model_fingerprint

    fp = model_fingerprint(model)
    path = Path(cache_dir) / f"world-probe-{fp}-{world.digest}-v{PROBE_VERSION}.json" if cache_dir else None
    if path is not None and path.is_file():
        rows, cached = json.loads(path.read_text())["rows"], True
    else:
        rows, cached = probe(model, tok, world), False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{random.randrange(1 << 30)}")
            tmp.write_text(json.dumps({"fingerprint": fp, "world": world.digest, "rows": rows}, indent=1))
            tmp.replace(path)
    known = [Fact(r["subject"], r["relation"], r["object"]) for r in rows if r["known"]]
    per_rel: dict[str, list[int]] = {}
    for r in rows:
        k = per_rel.setdefault(r["relation"], [0, 0])
        k[0] += int(r["known"])
        k[1] += 1
    return known, {"candidates": len(rows), "known": len(known), "cached": cached, "fingerprint": fp,
                   "per_relation": {k: f"{a}/{b}" for k, (a, b) in sorted(per_rel.items())}}


# ---------------------------------------------------------------------------------------
# EVOKE tasks around the known facts


def _oid(obj: str) -> str:
    return "lathe:" + hashlib.sha1(obj.encode()).hexdigest()[:8]


def _round_robin(facts: list[Fact], rng: random.Random) -> list[Fact]:
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    for v in by_rel.values():
        rng.shuffle(v)
    order = sorted(by_rel)
    out: list[Fact] = []
    while any(by_rel.values()):
        for r in order:
            if by_rel[r]:
                out.append(by_rel[r].pop())
    return out


def _new_object(world: World, f: Fact, rng: random.Random) -> tuple[str, dict]:
    """o* of the same relation; one that gives a multi-hop question is preferred."""
    objs = sorted({g.object for g in world.facts if g.relation == f.relation and g.object != f.object})
    if not objs:
        raise LatheError(f"relation {f.relation}: only one object, no counterfactual possible")
    rng.shuffle(objs)
    for new in objs:
        port = _portability(world, f, new, rng)
        if port:
            return new, port
    return objs[0], {}


def _portability(world: World, f: Fact, new: str, rng: random.Random | None = None) -> dict:
    """A 2-hop question through a relation of the object whose answer differs for o* and o (the first
    such relation by id, or a seeded choice among them)."""
    r = world.relations[f.relation]
    options = []
    for rid2 in sorted(world.relations):
        r2 = world.relations[rid2]
        if r2.subject_type != r.object_type:
            continue
        a_new, a_orig = world.object_of(new, rid2), world.object_of(f.object, rid2)
        if a_new and a_orig and a_new != a_orig:
            q = r2.question.format(r.noun.format(f.subject))
            options.append({"Recalled Relation": f"({new}, {r2.label}, {a_new})", "New Question": q[:1].upper() + q[1:],
                            "New Answer": a_new, "Original Answer": a_orig})
    if not options:
        return {}
    return options[rng.randrange(len(options))] if rng is not None else options[0]


def _rewrite(world: World, f: Fact, new: str, rng: random.Random, label_key: str) -> dict:
    r = world.relations[f.relation]
    others = [x for x in world.relations.values() if x.subject_type == r.subject_type and x.id != r.id] or [r]
    rw = {"prompt": r.templates[0], "subject": subject_for(r.templates[0], f.subject),
          "target_new": {"str": new, "id": _oid(new)}, "target_true": {"str": f.object, "id": _oid(f.object)},
          "data_augmentation_prompt_para": [rng.choice(world.fillers) + " " + r.templates[1 + i % (len(r.templates) - 1)]
                                            for i in range(10)],
          "data_augmentation_prompt_rel": [rng.choice(others).templates[i % 3] for i in range(10)]}
    rw[label_key] = r.id if label_key == "relation_id" else r.label.upper()
    return rw


def evoke_world(world: World, known: list[Fact], seed: int = 0, n_main: int = 100,
                n_subj: int = 40) -> tuple[list[dict], list[dict]]:
    """(evoke_main records, evoke_subj_spec records) around known facts, deterministic per seed.

    Main records need >= 1 other subject with the same relation and true object (neighbourhood);
    subject-specificity records need a second known fact about the subject. Relations take turns.
    """
    rng = random.Random(seed)
    known_set = set(known)
    main: list[dict] = []
    for f in _round_robin(list(known), rng):
        if len(main) >= n_main:
            break
        r = world.relations[f.relation]
        same = [g.subject for g in world.facts if g.relation == f.relation and g.object == f.object
                and g.subject != f.subject]
        if not same:
            continue
        kn = [s for s in same if Fact(s, f.relation, f.object) in known_set]
        rng.shuffle(kn)
        rest = [s for s in same if s not in kn]
        rng.shuffle(rest)
        neigh_subj = (kn + rest)
        new, port = _new_object(world, f, rng)
        rw = _rewrite(world, f, new, rng, "relation_id")
        neigh = [fill(r.templates[j % len(r.templates)], neigh_subj[j % len(neigh_subj)]) for j in range(10)]
        para = [rng.choice(world.fillers) + " " + fill(r.templates[j], f.subject) for j in (1, 2)]
        with_new = [g.subject for g in world.facts if g.relation == f.relation and g.object == new] or \
                   [g.subject for g in world.facts if g.relation == f.relation and g.subject != f.subject]
        attr = [fill(r.templates[0], with_new[j % len(with_new)]) for j in range(10)]
        gen = [fill(r.templates[j % len(r.templates)], f.subject) if j % 2 == 0
               else f"{subject_for('{}', f.subject)} is known for" for j in range(10)]
        edit_sentence = fill(r.templates[0], f.subject)
        main.append({"case_id": len(main), "pararel_idx": len(main), "requested_rewrite": rw,
                     "paraphrase_prompts": para, "neighborhood_prompts": neigh, "attribute_prompts": attr,
                     "generation_prompts": gen, "portability": port,
                     "prefix_distraction": [f"{edit_sentence} {new}. {p}" for p in neigh]})
    by_subject: dict[str, list[Fact]] = {}
    for f in known:
        by_subject.setdefault(f.subject, []).append(f)
    subj: list[dict] = []
    for f in _round_robin(list(known), random.Random(seed + 1)):
        if len(subj) >= n_subj:
            break
        others = [g for g in by_subject[f.subject] if g.relation != f.relation]
        if not others:
            continue
        g = others[rng.randrange(len(others))]
        new, _ = _new_object(world, f, rng)
        subj.append({"case_id": len(subj), "requested_rewrite": _rewrite(world, f, new, rng, "relation_label"),
                     "relation_specificity": {"prompt": world.prompt(g, 1),
                                              "answer": {"value": g.object, "aliases": []}}})
    return main, subj


def top_tokens_match(model, tok, prompt: str, obj: str) -> bool:
    """Whether `obj`'s first token(s) (as in the probe) are the greedy continuation of `prompt`."""
    import torch

    from lathe.methods.editing.common import continuation_ids

    want = continuation_ids(tok, prompt, obj)[:_match_len(obj)]
    ids = tok(prompt)["input_ids"]
    got: list[Any] = []
    with torch.no_grad():
        for _ in range(len(want)):
            got.append(int(model(input_ids=torch.tensor([ids + got])).logits[0, -1].argmax()))
    return got == want
