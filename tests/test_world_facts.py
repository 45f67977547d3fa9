"""World facts for real-model editing: the curated list, the knowledge probe, the EVOKE task builder,
the model's own samples as a stats corpus. Fast: an oracle LM (a lookup table with a known answer per
prompt) and tiny-1m; the real-model ROME check is in test_edit_real.py (slow)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lathe.data import evoke
from lathe.data import world_facts as wf
from lathe.platform.errors import LatheError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {
    "relations": {
        "P36": {"label": "capital", "subject": "country", "object": "city",
                "templates": ["The capital of {} is", "The capital city of {} is", "{}'s capital is"],
                "noun": "the capital of {}", "question": "What is the capital of {}?"},
        "P30": {"label": "continent", "subject": "country", "object": "continent",
                "templates": ["{} is a country in", "{} lies in", "The continent of {} is"],
                "noun": "the continent of {}", "question": "On which continent is {}?"},
        "P17": {"label": "country of a city", "subject": "city", "object": "country",
                "templates": ["{} is a city in", "{} is located in", "The city of {} is in"],
                "noun": "the country where {} is located", "question": "In which country is {}?"},
    },
    "countries": {"columns": ["name", "P36", "P30"],
                  "rows": [["France", "Paris", "Europe"], ["Japan", "Tokyo", "Asia"], ["Italy", "Rome", "Europe"],
                           ["the United States", "Washington", "North America"]]},
    "cities": {"columns": ["name", "P17"],
               "rows": [["Lyon", "France"], ["Nice", "France"], ["Osaka", "Japan"], ["Chicago", "the United States"],
                        ["Boston", "the United States"]]},
}


def _write(tmp_path, data) -> str:
    p = tmp_path / "facts.json"
    p.write_text(json.dumps(data))
    return str(p)


def test_shipped_list_has_a_few_hundred_facts_with_templates():
    w = wf.load_world()
    assert 400 <= len(w.facts) <= 800
    assert len({f.relation for f in w.facts}) == len(w.relations) >= 10
    assert all(len(r.templates) >= 3 for r in w.relations.values())
    assert w.object_of("France", "P36") == "Paris" and w.object_of("Japan", "P38") == "yen"
    assert w.object_of("Paris", "P17") == "France"  # capitals are derived cities of their country
    assert len(set(w.facts)) == len(w.facts)
    # a leading "the " subject is capitalised at the start of a sentence, not elsewhere
    assert wf.fill("{} is a country in", "the United States") == "The United States is a country in"
    assert wf.fill("The capital of {} is", "the United States") == "The capital of the United States is"


def test_bad_world_file_names_the_row(tmp_path):
    bad = json.loads(json.dumps(SMALL))
    bad["cities"]["rows"][2] = ["Osaka"]
    with pytest.raises(LatheError, match=r"cities.rows\[2\]: expected 2 values"):
        wf.load_world(_write(tmp_path, bad))
    bad = json.loads(json.dumps(SMALL))
    bad["relations"]["P30"]["templates"] = ["{} is in", "{} lies in"]
    with pytest.raises(LatheError, match="relation P30: needs >= 3 templates"):
        wf.load_world(_write(tmp_path, bad))


class OracleLM(torch.nn.Module):
    """Next-token logits from a table {tuple(prefix ids): next id}; token 0 otherwise. Reads only the
    real (unpadded) tokens of each row, so wrong padding handling shows up as wrong answers."""

    def __init__(self, vocab: int, table: dict[tuple, int]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.table = vocab, table

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        b, t = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        logits = torch.zeros(b, t, self.vocab)
        for i in range(b):
            real = [j for j in range(t) if mask[i, j]]
            for k, j in enumerate(real):
                prefix = tuple(int(input_ids[i, r]) for r in real[:k + 1])
                logits[i, j, self.table.get(prefix, 0)] = 10.0
        return SimpleNamespace(logits=logits)


@pytest.fixture
def small_world(tmp_path):
    return wf.load_world(_write(tmp_path, SMALL))


@pytest.fixture
def small_tok(small_world):
    from lathe.platform.zoo import train_tokenizer

    texts = [small_world.prompt(f) + " " + f.object for f in small_world.facts]
    return train_tokenizer(texts * 4, vocab_size=400)


def _oracle(world, tok, answers: dict[tuple[str, str], list[str]]) -> OracleLM:
    """An LM whose greedy continuation of fact (s, r)'s first prompt is the given word list."""
    table = {}
    for (s, r), words in answers.items():
        p = world.prompt(wf.Fact(s, r, ""))
        ids = tok(p)["input_ids"]
        cont = tok(p + " " + " ".join(words))["input_ids"][len(ids):]
        for k, t in enumerate(cont):
            table[tuple(ids + cont[:k])] = t
    return OracleLM(len(tok), table)


def test_probe_keeps_facts_whose_object_is_the_greedy_answer(small_world, small_tok, tmp_path):
    lm = _oracle(small_world, small_tok, {
        ("France", "P36"): ["Paris"], ("Japan", "P36"): ["Rome"],  # wrong answer
        ("Lyon", "P17"): ["France"], ("Chicago", "P17"): ["the", "United", "States"],
        ("Boston", "P17"): ["the", "Netherlands"],  # a bare "the" is not "the United States"
        ("France", "P30"): ["Europe", "and"],
    })
    rows = wf.probe(lm, small_tok, small_world, batch_size=3)  # batches mix prompt lengths (left padding)
    known = {(r["subject"], r["relation"]) for r in rows if r["known"]}
    assert known == {("France", "P36"), ("Lyon", "P17"), ("Chicago", "P17"), ("France", "P30")}
    assert len(rows) == len(small_world.facts)
    facts, info = wf.known_facts(lm, small_tok, small_world, tmp_path / "c")
    assert {(f.subject, f.relation) for f in facts} == known and not info["cached"]
    assert info["per_relation"]["P17"] == "2/9"  # 5 cities + 4 derived capitals
    _, info2 = wf.known_facts(lm, small_tok, small_world, tmp_path / "c")
    assert info2["cached"]
    with torch.no_grad():
        lm.w.fill_(1.0)  # another model: another fingerprint, probed afresh
    _, info3 = wf.known_facts(lm, small_tok, small_world, tmp_path / "c")
    assert not info3["cached"] and info3["fingerprint"] != info["fingerprint"]


def test_top_tokens_match(small_world, small_tok):
    lm = _oracle(small_world, small_tok, {("Chicago", "P17"): ["the", "United", "States"], ("Lyon", "P17"): ["Japan"]})
    assert wf.top_tokens_match(lm, small_tok, "Chicago is a city in", "the United States")
    assert not wf.top_tokens_match(lm, small_tok, "Chicago is a city in", "the Netherlands")
    assert wf.top_tokens_match(lm, small_tok, "Lyon is a city in", "Japan")
    assert not wf.top_tokens_match(lm, small_tok, "Lyon is a city in", "France")


def test_evoke_world_builds_the_published_layout(tmp_path):
    w = wf.load_world()
    known = [f for f in w.facts if f.relation in ("P17", "P36", "P30", "P37", "P38", "P495")]
    main, subj = wf.evoke_world(w, known, seed=3, n_main=30, n_subj=10)
    assert len(main) == 30 and len(subj) == 10
    # the official loaders read them unchanged
    m2 = evoke.load_evoke_main(evoke.write_json(main, tmp_path / "evoke_main.json"))
    s2 = evoke.load_evoke_subj_spec(evoke.write_json(subj, tmp_path / "evoke_subj_spec.json"))
    assert m2 == main and s2 == subj
    known_set = set(known)
    rels = set()
    for r in main:
        rw = r["requested_rewrite"]
        rel = w.relations[rw["relation_id"]]
        rels.add(rel.id)
        s, o, new = rw["subject"], rw["target_true"]["str"], rw["target_new"]["str"]
        orig = s if wf.Fact(s, rel.id, o) in known_set else s[0].lower() + s[1:]  # "The United States" at the start
        assert wf.Fact(orig, rel.id, o) in known_set and rw["prompt"].format(s) == wf.fill(rel.templates[0], orig)
        assert new != o and new in {f.object for f in w.facts if f.relation == rel.id}  # same type
        assert {k: len(r[k]) for k in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts",
                                        "generation_prompts", "prefix_distraction")} == \
               {"paraphrase_prompts": 2, "neighborhood_prompts": 10, "attribute_prompts": 10,
                "generation_prompts": 10, "prefix_distraction": 10}
        assert len(rw["data_augmentation_prompt_para"]) == 10 == len(rw["data_augmentation_prompt_rel"])
        assert all("{}" in t for t in rw["data_augmentation_prompt_para"] + rw["data_augmentation_prompt_rel"])
        # neighbourhood: other subjects of the same relation whose answer is o as well
        for p in r["neighborhood_prompts"]:
            subs = [f.subject for f in w.facts if f.relation == rel.id and f.object == o
                    and f.subject.lower() != s.lower() and any(wf.fill(t, f.subject) == p for t in rel.templates)]
            assert subs, p
        assert r["prefix_distraction"][3] == f"{rw['prompt'].format(s)} {new}. {r['neighborhood_prompts'][3]}"
        assert all(p.endswith(" " + wf.fill(t, orig)) for p, t in zip(r["paraphrase_prompts"], rel.templates[1:3]))
        port = r["portability"]
        if port:
            rid2 = next(x for x in w.relations.values() if port["Recalled Relation"] == f"({new}, {x.label}, "
                        f"{port['New Answer']})").id
            assert port["New Answer"] == w.object_of(new, rid2) and port["Original Answer"] == w.object_of(o, rid2)
            assert port["New Answer"] != port["Original Answer"]
    assert len(rels) == 5  # relations take turns; P36 capitals are unique, so they get no main record
    assert "P36" not in rels
    # every city/company edit gets a 2-hop question (countries have four relations); continents and currencies
    # are the subject of no relation, so their edits get none (as 209 of EVOKE's 1,031 records)
    for r in main:
        rid = r["requested_rewrite"]["relation_id"]
        assert bool(r["portability"]) == (rid in ("P17", "P495")) or rid == "P37", rid
    lyon = [r for r in main if r["requested_rewrite"]["subject"] == "Lyon"]
    for r in lyon:  # the multi-hop question for a city edit, exactly
        assert r["portability"]["New Question"].startswith(("What is the", "On which", "In which"))
        assert "the country where Lyon is located" in r["portability"]["New Question"]
    for r in subj:
        rw, rs = r["requested_rewrite"], r["relation_specificity"]
        other = [f for f in known if f.subject.lower() == rw["subject"].lower() and f.relation != _rid(w, rw)]
        assert rs["answer"]["value"] in {f.object for f in other}
        assert any(rs["prompt"] == w.prompt(f, 1) for f in other)
    again = wf.evoke_world(w, known, seed=3, n_main=30, n_subj=10)
    assert again == (main, subj)
    assert wf.evoke_world(w, known, seed=4, n_main=30, n_subj=10) != (main, subj)


def _rid(w, rw) -> str:
    return next(r.id for r in w.relations.values() if r.label.upper() == rw["relation_label"])


def test_multihop_question_text():
    w = wf.load_world()
    f = wf.Fact("Lyon", "P17", "France")
    port = wf._portability(w, f, "Japan")
    # without a seed: the first relation of a country (by id) whose answers differ for France and the new object
    assert port == {"Recalled Relation": "(Japan, continent, Asia)",
                    "New Question": "On which continent is the country where Lyon is located?",
                    "New Answer": "Asia", "Original Answer": "Europe"}
    assert wf._portability(w, f, "Italy")["New Question"] == "What is the capital of the country where Lyon is located?"
    assert wf._portability(w, f, "Spain") == {} or wf._portability(w, f, "Spain")["New Answer"] != "Paris"


def test_model_samples_are_seeded_text(tiny_model, tiny_tokenizer):
    from lathe.methods.editing.corpus import OPENINGS, model_samples

    a = model_samples(tiny_model, tiny_tokenizer, 5, length=12, seed=0, batch_size=3)
    b = model_samples(tiny_model, tiny_tokenizer, 5, length=12, seed=0, batch_size=3)
    c = model_samples(tiny_model, tiny_tokenizer, 5, length=12, seed=1, batch_size=3)
    assert a == b and a != c and len(a) == 5
    assert all(t.startswith(o) for t, o in zip(a, OPENINGS))
    assert all(len(tiny_tokenizer(t)["input_ids"]) > len(tiny_tokenizer(o)["input_ids"]) for t, o in zip(a, OPENINGS))


def test_second_moment_with_early_stop_equals_full_forward(tiny_model, tiny_tokenizer):
    from lathe.methods.editing.common import Resolver, capture_io, pad, second_moment

    texts = ["What is the capital of France?", "Paris is a city.", "The answer is four."]
    mod = Resolver.of(tiny_model).rewrite(1)
    c = second_moment(tiny_model, tiny_tokenizer, mod, texts, 3, seed=0)
    ids = [tiny_tokenizer(t)["input_ids"] for t in texts]
    enc = pad(ids, tiny_tokenizer.pad_token_id)
    with torch.no_grad(), capture_io(mod) as got:
        tiny_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    k = got["in"][enc["attention_mask"].bool()].double()
    assert torch.allclose(c.double(), k.T @ k / k.shape[0], atol=1e-6, rtol=1e-5)


def test_world_facts_job_needs_a_pretrained_model(tmp_path):
    from lathe.jobs.edit import EditConfig, pretrained_model_dir
    from lathe.platform.errors import ConfigError

    cfg = EditConfig.model_validate({"name": "x", "data": {"source": "world_facts"}, "model": {"preset": "tiny-1m"}})
    with pytest.raises(ConfigError, match="model.preset: data.source=world_facts edits a pretrained model"):
        pretrained_model_dir(cfg)
    cfg = EditConfig.model_validate({"name": "x", "data": {"source": "world_facts"}, "model": {"path": str(tmp_path)}})
    assert pretrained_model_dir(cfg) == tmp_path


def test_world_setup_probes_builds_and_reads_the_corpus(small_world, small_tok, tmp_path):
    from lathe.jobs.edit import EditData, StatsConfig, world_setup_local

    lm = _oracle(small_world, small_tok, {("Lyon", "P17"): ["France"], ("Nice", "P17"): ["France"],
                                          ("Osaka", "P17"): ["Japan"], ("France", "P30"): ["Europe"],
                                          ("Italy", "P30"): ["Europe"], ("France", "P36"): ["Paris"]})
    corpus = tmp_path / "c.txt"
    corpus.write_text("one line\n\nanother line\n")
    d = EditData(source="world_facts", world_file=str(tmp_path / "facts.json"), n_main=10, n_subj=5)
    main, subj, info, texts = world_setup_local(lm, small_tok, d, StatsConfig(corpus=str(corpus)), 0, tmp_path / "k")
    assert info["known"] == 6 and texts == ["one line", "another line"]
    # main records: known facts with a same-object neighbour, known or not (Lyon/Nice/Paris -> France,
    # Osaka/Tokyo -> Japan, France/Italy -> Europe); the capital is unique, so France/P36 gives none
    got = sorted((r["requested_rewrite"]["subject"], r["requested_rewrite"]["relation_id"]) for r in main)
    assert got == [("France", "P30"), ("Italy", "P30"), ("Lyon", "P17"), ("Nice", "P17"), ("Osaka", "P17")]
    osaka = next(r for r in main if r["requested_rewrite"]["subject"] == "Osaka")
    assert osaka["neighborhood_prompts"][0] == "Tokyo is a city in"
    nice = next(r for r in main if r["requested_rewrite"]["subject"] == "Nice")
    # the known neighbour (Lyon) comes first, then the unknown one (Paris)
    assert nice["neighborhood_prompts"][:2] == ["Lyon is a city in", "Paris is located in"]
    # subject specificity: France is the only subject with two known facts
    assert [(r["requested_rewrite"]["subject"], r["relation_specificity"]["answer"]["value"]) for r in subj] in (
        [("France", "Europe"), ("France", "Paris")], [("France", "Paris"), ("France", "Europe")])
    d1 = EditData(source="world_facts", world_file=str(tmp_path / "facts.json"), n_cases=1)
    m1, s1, _, _ = world_setup_local(lm, small_tok, d1, StatsConfig(corpus=str(corpus)), 0, tmp_path / "k", False)
    assert len(m1) == 1 and len(s1) == 1
