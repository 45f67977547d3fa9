"""LEGO bricks, manuals and the valid-assembly generator."""

from __future__ import annotations

import json

import pytest

from lathe.data.lego import (Brick, assembly_problems, check_assembly, generate_manual, lexicon, load_manual,
                             load_manuals, parse_piece, save_manuals, task_label)
from lathe.platform.errors import LatheError


def test_brick_geometry_rotation_and_heights():
    b = Brick("brick", 2, 4, "bright yellow", 1, 2, 0, 0)
    assert b.name == "bright yellow brick 2x4" and b.height == 3 and b.top == 3
    assert b.footprint() == {(x, y) for x in (1, 2) for y in (2, 3, 4, 5)}
    r = Brick("brick", 2, 4, "bright yellow", 1, 2, 0, 90)
    assert r.size == (4, 2) and r.footprint() == {(x, y) for x in (1, 2, 3, 4) for y in (2, 3)}
    assert len(Brick("plate", 1, 2, "white").cells()) == 2 and Brick("plate", 1, 2, "white").top == 1
    assert Brick("brick", 4, 2, "white").piece == "brick 2x4"  # canonical smaller side first
    with pytest.raises(LatheError, match="rotation"):
        Brick("brick", 2, 4, "white", rot=45)
    with pytest.raises(LatheError, match="unknown piece"):
        parse_piece("tile 2x2")
    assert parse_piece("Brick 2 x 4") == ("brick", 2, 4)


def test_lexicon_is_colour_by_type_by_size():
    lex = lexicon()
    assert "bright yellow brick 2x4" in lex and "white plate 1x2" in lex
    assert len(lex) == len(set(lex)) == 12 * 2 * 11


def _floor():
    return Brick("plate", 4, 4, "black", 0, 0, 0)


def test_hand_built_invalid_assemblies_are_rejected():
    base = _floor()
    on_top = Brick("brick", 2, 2, "white", 0, 0, 1)
    assert assembly_problems([[base], [on_top]]) == []
    overlap = Brick("brick", 2, 2, "bright red", 1, 1, 1)  # shares cells with on_top
    probs = assembly_problems([[base], [on_top], [overlap]])
    assert len(probs) == 1 and probs[0].step == 3 and "overlaps" in probs[0].message
    floating = Brick("brick", 1, 1, "bright blue", 0, 0, 7)  # on_top's top is 4: gap
    probs = assembly_problems([[base], [on_top], [floating]])
    assert probs[0].step == 3 and "floating" in probs[0].message
    apart = Brick("plate", 2, 2, "tan", 10, 10, 0)  # on the ground, touching nothing
    assert "not connected" in assembly_problems([[base], [apart]])[0].message
    # hanging under an overhang counts as connected (studs hold it)
    over = Brick("brick", 2, 2, "white", 3, 0, 1)   # overhangs x=4..
    under = Brick("plate", 1, 1, "white", 4, 0, 0)  # its top (1) meets over's bottom (1)
    assert assembly_problems([[base], [over], [under]]) == []
    with pytest.raises(LatheError, match=r"manual 'm1': step 2: .*floating"):
        check_assembly([[base], [Brick("brick", 1, 1, "tan", 0, 0, 5)]], "m1")


@pytest.mark.parametrize("seed", range(8))
def test_generated_manuals_are_valid_and_seeded(seed):
    m = generate_manual(seed, 40)
    assert m.n_steps == 40 and m.problems() == []
    assert generate_manual(seed, 40).to_json() == m.to_json()
    for s in m.steps:
        assert s.bricks and s.entities == list(dict.fromkeys(b.name for b in s.bricks))
        assert s.vlm["task_label"] == task_label(s.text)
        if s.vlm["task_label"] != "None":
            assert s.vlm["query"].startswith(s.vlm["task_label"]) and "{<" in s.vlm["MiniGPTv2_output"]
    assert generate_manual(seed + 100, 40).to_json() != m.to_json()


def test_generator_mixes_single_and_collect_steps():
    steps = [s for seed in range(4) for s in generate_manual(seed, 40).steps]
    collect = [s for s in steps if s.text.startswith("Collect")]
    assert collect and all(len(s.bricks) > 1 and len(set(b.piece for b in s.bricks)) == 1 for s in collect)
    assert any(s.text.startswith("Find") for s in steps) and any(s.text.startswith("Attach") for s in steps)


def test_task_labels():
    assert task_label("Find a white plate 1x2") == "[detection]"
    assert task_label("Collect two bricks") == "[detection-collect]"
    assert task_label("Attach the roof") == "None"


def test_manual_json_round_trip_and_published_layout(tmp_path):
    m = generate_manual(3, 12)
    (p,) = save_manuals([m], tmp_path)
    back = load_manual(p)
    assert back.to_json() == m.to_json() and back.bricks_up_to(12) == m.bricks_up_to(12)
    # a crawled manual in the published layout: no geometry, no entities
    crawled = {"manual_id": "6186", "manual_type": "lego", "instructions": [
        {"instruction_id": 1, "text": "Find a red brick 2x4.", "img_url": "https://x/1.jpg"},
        {"instruction_id": 2, "text": "Collect two plates 1x2.", "img_url": "https://x/2.jpg",
         "entities": ["plate 1x2"],
         "VLM": {"img_path": "i/2.png", "task_label": "[detection-collect]", "query": "[detection-collect] plate",
                 "MiniGPTv2_output": "<p>plate</p> {<1><2><3><4>}"}}]}
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "a.json").write_text(json.dumps([crawled]))
    (ms,) = load_manuals(tmp_path / "list")
    assert ms.manual_id == "6186" and ms.n_steps == 2 and ms.step(2).entities == ["plate 1x2"]
    assert ms.step(1).bricks == ()


def _write(tmp_path, obj):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(obj))
    return p


def test_bad_manual_files_get_one_line_naming_manual_and_step(tmp_path):
    good = generate_manual(1, 5).to_json()
    bad = json.loads(json.dumps(good))
    bad["instructions"][3]["bricks"][0]["z"] = 40  # floating
    with pytest.raises(LatheError) as e:
        load_manual(_write(tmp_path, bad))
    msg = str(e.value)
    assert "\n" not in msg and "bad.json" in msg and "lathe-00001" in msg and "step 4" in msg and "floating" in msg
    bad = json.loads(json.dumps(good))
    bad["instructions"][2]["bricks"] = [dict(bad["instructions"][1]["bricks"][0])]  # same spot as step 2
    with pytest.raises(LatheError, match=r"step 3: .*overlaps"):
        load_manual(_write(tmp_path, bad))
    bad = json.loads(json.dumps(good))
    bad["instructions"][1]["bricks"][0]["piece"] = "wheel 2x2"
    with pytest.raises(LatheError, match=r"step 2: unknown piece 'wheel 2x2'"):
        load_manual(_write(tmp_path, bad))
    bad = json.loads(json.dumps(good))
    del bad["instructions"][0]["text"]
    with pytest.raises(LatheError, match=r"step 1: text must be"):
        load_manual(_write(tmp_path, bad))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LatheError, match="not valid JSON"):
        load_manual(tmp_path / "broken.json")
