"""The LEGO-MRTA workflow: chunks, simulated tools, dialogue engines, four sections, regeneration,
v1/v2 exports with the published split procedure, and loaders for the published files."""

from __future__ import annotations

import json
import random

import pytest
from lego_helpers import ReplayLLM

from lathe.data.lego import (SECTIONS, chunk_manual, generate_manual, hf_split, load_v1, load_v2,
                             parse_conversation_file, postprocess, v1_rows, v2_rows)
from lathe.data.lego.conversations import Conversation, v2_prompt
from lathe.methods.lego.mrta import (generate_conversation, lego_synthetic, llm_messages, simulate_tool_responses,
                                     template_dialogue)
from lathe.methods.lego.tools import TOOL_NAMES, tools_mentioned
from lathe.platform.errors import LatheError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("lego")
    return lego_synthetic(0, n_manuals=3, steps_per_manual=20, out_dir=out), out


def test_chunks_of_10_with_summaries():
    m = generate_manual(0, 25)
    chunks = chunk_manual(m)
    assert [len(c.steps) for c in chunks] == [10, 10, 5]
    assert chunks[1].summary.startswith("Summary: build steps 11 to 20") and chunks[1].first == 11
    text = chunks[0].text()
    assert text.startswith(chunks[0].summary) and "Step 10:" in text
    assert len(chunks[0].text(max_words=12).split(" ")) == 12


def test_five_distinct_simulated_tool_responses():
    chunk = chunk_manual(generate_manual(0, 20))[0]
    res = simulate_tool_responses(chunk, random.Random(1))
    assert len(res) == 5 and len({r["name"] for r in res}) == 5
    assert all(r["response"].startswith(f"Called the Unity tool {r['name']} and got a response: ") for r in res)
    assert res == simulate_tool_responses(chunk, random.Random(1))


def test_template_conversations_four_sections_and_tools(synth):
    data, out = synth
    convs = data["conversations"]
    assert len(convs) == 6 and data["dropped"] == 0
    for c in convs:
        text = c.to_text()
        pos = [text.index(h) for h in SECTIONS]
        assert pos == sorted(pos)
        assert any(tools_mentioned(t) for _, t in c.turns)
        assert all(w in ("Trainee", "Trainer") for w, _ in c.turns)
        assert "##" not in " ".join(t for _, t in c.turns)  # section titles were dropped
        assert c.turns[-2][0] == "Trainee" and "feedback" in c.turns[-3][1]
    files = sorted((out / "conversations").glob("*.txt"))
    back = parse_conversation_file(files[0].read_text(), str(files[0]))
    assert back.turns and back.entities and back.vlm
    with pytest.raises(LatheError, match="missing section '### Entity'"):
        parse_conversation_file("### Guidelines\nx\n### Conversation\nTrainer: hi\n", "f.txt")
    stats = data["stats"]
    assert stats["conversations"] == stats["with_tool_calls"] == 6
    assert stats["tool_mentions"] == sum(stats["tool_mentions_by_tool"].values()) >= 30
    assert set(stats["tool_mentions_by_tool"]) == set(TOOL_NAMES)


def test_template_tool_responses_follow_the_dialogue_state():
    chunk = chunk_manual(generate_manual(4, 10))[0]
    for seed in range(6):
        raw = template_dialogue(chunk, random.Random(seed))
        for line in raw.splitlines():
            if "I used GetCurrentStep." in line:
                k = int(line.split("step ")[1].split(" ")[0])
                title = [ln for ln in raw.splitlines()[:raw.splitlines().index(line)] if ln.startswith("## Step")]
                assert title[-1].startswith(f"## Step {k}:")


def test_postprocess_tolerates_generator_noise():
    raw = ("Sure! Here it is.\n### Conversation:\n## Step 1\n**Trainee:** Where does it go?\n"
           "trainer: Put it on the base.\nThen press it.\n\nTRAINEE: ok\n### Notes\nignored")
    c = postprocess(raw, "g", ["brick 2x4"], [])
    assert c.turns == [("Trainee", "Where does it go?"), ("Trainer", "Put it on the base. Then press it."),
                       ("Trainee", "ok")]


def test_llm_engine_and_regeneration():
    chunk = chunk_manual(generate_manual(0, 10))[0]
    no_tool = "### Conversation\nTrainee: hi\nTrainer: hello"
    with_tool = "### Conversation\nTrainee: next?\nTrainer: I called NextStep and we are at step 2."
    llm = ReplayLLM([no_tool, no_tool, with_tool])
    conv, attempts = generate_conversation(chunk, random.Random(0), llm)
    assert attempts == 3 and conv.turns[-1][1].startswith("I called NextStep")
    sys, user = llm.prompts[0]
    assert "Trainee" in sys["content"] and "- GoToStep(step: integer): " in sys["content"]
    assert "### Guidelines:\nSummary: build steps 1 to 10" in user["content"]
    assert user["content"].endswith("### Conversation:") and "The trainee intends to" in user["content"]
    conv, attempts = generate_conversation(chunk, random.Random(0), ReplayLLM([no_tool]))
    assert conv is None and attempts == 3
    assert llm_messages(chunk, [])[1]["content"].count("Step ") >= 10


def _conv():
    return Conversation("Summary: s\nStep 1: put it", [("Trainer", "Welcome."), ("Trainer", "Step 1 first."),
                                                       ("Trainee", "Next?"), ("Trainer", "I used NextStep."),
                                                       ("Trainee", "Where?"), ("Trainer", "Here.")],
                        ["brick 2x4"], [("[detection] brick 2x4", "<p>brick 2x4</p> {<1><2><3><4>}")])


def test_v1_rows_are_history_joined_by_newline():
    rows = v1_rows(_conv())
    lines = _conv().lines()
    assert rows[0] == {"input": lines[0], "output": "Step 1 first."}
    assert rows[-1] == {"input": "\n".join(lines[:5]), "output": "Here."}
    assert len(rows) == 3  # the opening trainer line has no history


def test_v2_rows_merge_trainer_lines_and_keep_boxes_out_of_history():
    rows = v2_rows(_conv())
    assert all(set(r) == {"instruction", "input", "output", "history"} for r in rows)
    assert rows[0]["instruction"] == "### Guidelines: Summary: s Step 1: put it"
    assert rows[0]["output"] == "Welcome. Step 1 first." and rows[0]["history"] == []
    assert rows[1] == {"instruction": "Next?", "input": "", "output": "I used NextStep.",
                       "history": [[rows[0]["instruction"], "Welcome. Step 1 first."]]}
    assert rows[3]["instruction"] == "[detection] brick 2x4" and len(rows[3]["history"]) == 3
    p = v2_prompt(rows[2])
    assert "### Context:\nTrainee: ### Guidelines" in p and p.endswith("Trainee: Where?\n\n### Response:\n")


def test_splits_are_reproducible_and_match_hf_datasets(synth):
    data, out = synth
    v2 = data["v2"]
    n = len(v2["train"]) + len(v2["test"])
    assert len(v2["test"]) == -(-n * 2 // 10)  # ceil(0.2 n)
    again = lego_synthetic(0, n_manuals=3, steps_per_manual=20)
    assert again["v2"] == v2 and again["v1"] == data["v1"]
    v1 = data["v1"]
    m = len(v1["train"]) + len(v1["validation"])
    assert len(v1["validation"]) == -(-m // 10)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(50))}).train_test_split(test_size=0.2, seed=42)
    train, test = hf_split(50, 0.2, 42)
    assert ds["train"]["i"] == train and ds["test"]["i"] == test
    rows = load_v2(out / "v2" / "train.jsonl")
    assert rows == v2["train"]
    assert load_v1(out / "v1" / "test.jsonl") == v1["test"]


def test_loaders_read_the_published_layouts(tmp_path):
    pub = [{"instruction": "How do I start?", "input": "", "output": "Call StartAssemble.",
            "history": [["### Guidelines: build it", "Welcome!"]]},
           {"instruction": "Next", "input": "", "output": "NextStep done.", "history": []}]
    (tmp_path / "v2.json").write_text(json.dumps(pub))
    assert load_v2(tmp_path / "v2.json") == pub
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(pub), tmp_path / "train-00000-of-00001.parquet")
    assert load_v2(tmp_path / "train-00000-of-00001.parquet") == pub
    (tmp_path / "v1.jsonl").write_text(json.dumps({"input": "Trainee: hi", "output": "Hello"}) + "\n")
    assert load_v1(tmp_path / "v1.jsonl") == [{"input": "Trainee: hi", "output": "Hello"}]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    with pytest.raises(LatheError, match=r"bad.jsonl: row 1: expected a string field 'input'"):
        load_v2(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text(json.dumps({"instruction": "x", "input": "", "output": "y",
                                                     "history": [["only one"]]}) + "\n")
    with pytest.raises(LatheError, match="history must be a list"):
        load_v2(tmp_path / "bad2.jsonl")
