"""EVOKE data layer: generator determinism, published format, loader errors."""

from __future__ import annotations

import json

import pytest

from lathe.data import evoke
from lathe.platform.errors import LatheError


def test_generator_deterministic_and_format(tmp_path):
    a = evoke.evoke_synthetic(3, n_main=20, n_subj=10)
    b = evoke.evoke_synthetic(3, n_main=20, n_subj=10)
    c = evoke.evoke_synthetic(4, n_main=20, n_subj=10)
    assert json.dumps(a[:2]) == json.dumps(b[:2])
    assert json.dumps(a[:2]) != json.dumps(c[:2])
    main, subj, kg = a
    assert len(main) == 20 and len(subj) == 10
    for r in main:
        rw = r["requested_rewrite"]
        assert set(r) == {"case_id", "pararel_idx", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
                          "attribute_prompts", "generation_prompts", "portability", "prefix_distraction"}
        assert len(r["paraphrase_prompts"]) == 2 and len(r["neighborhood_prompts"]) == 10
        assert len(r["attribute_prompts"]) == 10 and len(r["generation_prompts"]) == 10
        assert len(r["prefix_distraction"]) == 10
        assert len(rw["data_augmentation_prompt_para"]) == 10 and len(rw["data_augmentation_prompt_rel"]) == 10
        assert "{}" in rw["prompt"] and rw["target_new"]["str"] != rw["target_true"]["str"]
        # the true object is what the graph says
        rid = rw["relation_id"]
        assert kg.facts[(rw["subject"], rid)] == rw["target_true"]["str"]
        # prefix distraction = edit sentence with o*, ". ", neighbourhood prompt
        assert r["prefix_distraction"][0] == f"{rw['prompt'].format(rw['subject'])} {rw['target_new']['str']}. " \
                                             f"{r['neighborhood_prompts'][0]}"
        if r["portability"]:
            assert set(r["portability"]) == {"Recalled Relation", "New Question", "New Answer", "Original Answer"}
    assert 0 < sum(bool(r["portability"]) for r in main) < 20
    for r in subj:
        assert set(r) == {"case_id", "requested_rewrite", "relation_specificity"}
        assert "relation_label" in r["requested_rewrite"] and "relation_id" not in r["requested_rewrite"]
        assert r["requested_rewrite"]["subject"] in r["relation_specificity"]["prompt"]
    # 2-hop answers follow the graph
    r = next(r for r in main if r["portability"])
    new = r["requested_rewrite"]["target_new"]["str"]
    assert r["portability"]["New Answer"] in {kg.place_facts[(new, p)] for p, _, _ in evoke.PLACE_RELATIONS}


def test_loaders_read_published_format(tmp_path):
    main, subj, _ = evoke.evoke_synthetic(0, n_main=20, n_subj=10)
    pm = evoke.write_json(main, tmp_path / "evoke_main.json")
    ps = evoke.write_json(subj, tmp_path / "evoke_subj_spec.json")
    assert evoke.load_evoke_main(pm) == main
    assert evoke.load_evoke_subj_spec(ps) == subj
    req = evoke.EditRequest.from_record(main[0])
    assert req.subject == main[0]["requested_rewrite"]["subject"] and req.text == req.prompt.format(req.subject)
    assert evoke.multihop_prompt("Who?") == "Who? The answer to this question, most simply, is"


def test_official_record_shape_loads(tmp_path):
    # a record written the way the official file spells it (Wikidata ids, empty portability)
    rec = {"case_id": 0, "pararel_idx": 2796,
           "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                                 "target_new": {"str": "English", "id": "Q1860"},
                                 "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux",
                                 "data_augmentation_prompt_para": ["{} speaks"] * 10,
                                 "data_augmentation_prompt_rel": ["{} was born in"] * 10},
           "paraphrase_prompts": ["x. Danielle Darrieux spoke the language"] * 2,
           "neighborhood_prompts": ["The mother tongue of L\u00e9on Blum is"] * 10,
           "attribute_prompts": ["a"] * 10, "generation_prompts": ["b"] * 10, "portability": {},
           "prefix_distraction": ["The mother tongue of Danielle Darrieux is English. The mother tongue of X is"] * 10}
    p = tmp_path / "m.json"
    p.write_text(json.dumps([rec]))
    assert evoke.load_evoke_main(p)[0]["portability"] == {}


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"requested_rewrite": {"prompt": "no placeholder", "subject": "s", "relation_id": "P1",'
     ' "target_new": {"str": "a"}, "target_true": {"str": "b"}}}]', "placeholder"),
    ('[{"requested_rewrite": {"prompt": "{} x", "subject": "s", "relation_id": "P1",'
     ' "target_new": {"str": "a"}, "target_true": {"str": "b"}}, "paraphrase_prompts": 3}]', "paraphrase_prompts"),
])
def test_loader_errors_are_one_line(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(LatheError) as e:
        evoke.load_evoke_main(p)
    assert needle in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LatheError, match="no such EVOKE file"):
        evoke.load_evoke_subj_spec(tmp_path / "missing.json")
