"""The 18 XR tools, their schemas, and the AssemblySimulator's state transitions."""

from __future__ import annotations

import pytest

from lathe.data.lego import Brick, generate_manual
from lathe.methods.lego import TOOL_NAMES, AssemblySimulator, ToolArgError, validate_args
from lathe.methods.lego.tools import TOOLS
from lathe.methods.lego.vision import HFVisionBackend, SceneStateChecker, StubVision, parse_boxes

SPEC_NAMES = ["StartAssemble", "NextStep", "FrontStep", "Explode", "Recover", "FinishedVideo", "ReShow", "Enlarge",
              "Shrink", "GoToStep", "Rotate", "ShowPieces", "HighlightCorrectComponents", "GetCurrentStep",
              "GetRemainingStep", "CheckStepStatusVR", "APICallObjectRecognitionAR", "APICallCheckStepStatusAR"]
PREFIX = "Called the Unity tool {} and got a response: "


def test_registry_has_exactly_the_18_names_and_schemas_validate():
    assert list(TOOL_NAMES) == SPEC_NAMES
    for t in TOOLS:
        s = t.schema()["function"]
        assert s["name"] == t.name and s["parameters"]["type"] == "object" and s["description"].endswith(".")
    assert validate_args("GoToStep", {"step": 3}) == {"step": 3}
    for bad in ({"step": "3"}, {"step": 2.5}, {"step": True}, {}, {"step": 0}, {"StepNum": 3}):
        with pytest.raises(ToolArgError, match="GoToStep"):
            validate_args("GoToStep", bad)
    for d in ("Up", "Down", "Left", "Right", "None"):
        assert validate_args("Rotate", {"direction": d}) == {"direction": d}
    for bad in ("up", "Forward", 1):
        with pytest.raises(ToolArgError, match="direction"):
            validate_args("Rotate", {"direction": bad})
    assert validate_args("ShowPieces", None) == {} and validate_args("ShowPieces", {"piece_name": "x"})
    assert validate_args("APICallCheckStepStatusAR", {"current_stamps": [1, 2.5]}) == {"current_stamps": [1, 2.5]}
    with pytest.raises(ToolArgError, match=r"current_stamps\[1\]"):
        validate_args("APICallCheckStepStatusAR", {"current_stamps": [1, "a"]})
    with pytest.raises(ToolArgError, match="unknown argument"):
        validate_args("NextStep", {"step": 1})
    with pytest.raises(ToolArgError, match="unknown tool 'nextstep'"):
        validate_args("nextstep", {})


def test_spec_acceptance_sequence_n10():
    sim = AssemblySimulator(n_steps=10)
    sim.call("StartAssemble")
    for _ in range(3):
        sim.call("NextStep")
    out = sim.call("GetCurrentStep")
    assert out.startswith(PREFIX.format("GetCurrentStep")) and "step 4 of 10" in out and "6 steps remaining" in out
    assert sim.current_step == 4 and sim.remaining == 6
    out = sim.call("GoToStep", {"step": 11})
    assert "not a valid step" in out and sim.current_step == 4
    sim.call("GoToStep", {"step": 1})
    out = sim.call("FrontStep")
    assert "already at the first step" in out and sim.current_step == 1
    sim.call("GoToStep", {"step": 10})
    assert "already at the final step" in sim.call("NextStep") and sim.current_step == 10
    assert "0 steps remaining" in sim.call("GetRemainingStep")


def test_every_response_is_wrapped_and_errors_do_not_raise():
    sim = AssemblySimulator(manual=generate_manual(2, 10))
    args = {"GoToStep": {"step": 2}, "Rotate": {"direction": "Left"}}
    for name in SPEC_NAMES:
        out = sim.call(name, args.get(name))
        assert out.startswith(PREFIX.format(name)) and len(out) > len(PREFIX.format(name)) + 5
    assert sim.call("Dance").startswith(PREFIX.format("Dance") + "Error: unknown tool")
    res = sim.execute("GoToStep", {"step": "two"})
    assert not res.ok and "Error" in res.text and sim.current_step == 2


def test_each_tool_changes_state_as_specified():
    m = generate_manual(5, 10)
    sim = AssemblySimulator(manual=m)
    sim.call("GoToStep", {"step": 5})
    sim.call("StartAssemble")
    assert sim.current_step == 1 and sim.started and sim.placed == m.bricks_up_to(1)
    sim.call("NextStep")
    assert sim.current_step == 2 and sim.placed == m.bricks_up_to(2)
    sim.call("FrontStep")
    assert sim.current_step == 1
    sim.call("GoToStep", {"step": 7})
    assert sim.current_step == 7 and sim.placed == m.bricks_up_to(7)
    sim.call("Explode")
    assert sim.exploded
    sim.call("Recover")
    assert not sim.exploded
    z = sim.zoom
    sim.call("Enlarge")
    assert sim.zoom == pytest.approx(z * 1.25)  # Enlarge makes it bigger
    sim.call("Shrink")
    sim.call("Shrink")
    assert sim.zoom == pytest.approx(z / 1.25)
    sim.call("Rotate", {"direction": "Right"})
    sim.call("Rotate", {"direction": "Up"})
    assert sim.orientation == {"yaw": 90, "pitch": 90}
    sim.call("Rotate", {"direction": "Left"})
    sim.call("Rotate", {"direction": "None"})
    assert sim.orientation == {"yaw": 0, "pitch": 90}
    sim.call("ReShow")
    assert sim.replays == 1
    need = list(dict.fromkeys(b.name for b in m.step(7).bricks))
    out = sim.call("ShowPieces")
    assert sim.shown_pieces == need and need[0] in out
    kind = m.step(3).bricks[0].piece
    sim.call("ShowPieces", {"piece_name": kind})
    assert sim.shown_pieces and all(kind in p for p in sim.shown_pieces)
    sim.call("HighlightCorrectComponents")
    assert sim.highlights == need
    assert "step 7 of 10" in sim.call("GetCurrentStep") and "3 steps remaining" in sim.call("GetRemainingStep")
    assert "correct" in sim.call("CheckStepStatusVR")
    sim.highlights = []
    out = sim.call("APICallObjectRecognitionAR")
    assert sim.highlights == need and need[0] in out
    assert "looks done correctly" in sim.call("APICallCheckStepStatusAR")
    sim.place(Brick("brick", 1, 1, "tan", 50, 50, 0))  # a stray piece the manual does not have
    out = sim.call("APICallCheckStepStatusAR", {"current_stamps": []})
    assert "does not look right" in out and "tan brick 1x1" in out
    sim.call("FinishedVideo")
    assert sim.finished
    assert sim.state()["current_step"] == 7 and sim.state()["exploded"] is False


def test_fault_injection_and_events():
    sim = AssemblySimulator(n_steps=10, fault_rate=1.0)
    assert "incorrect" in sim.call("CheckStepStatusVR")
    assert "incorrect" not in AssemblySimulator(n_steps=10).call("CheckStepStatusVR")
    events = []
    stop = sim.subscribe(events.append)
    sim.call("NextStep")
    sim.set_step(9)
    stop()
    sim.call("NextStep")
    assert [e["type"] for e in events] == ["tool", "state"]
    assert events[0]["tool"] == "NextStep" and events[0]["state"]["current_step"] == 2
    assert events[1]["state"]["current_step"] == 9


def test_vision_back_ends():
    assert parse_boxes("<p>red brick 2x4</p> {<10><20><30><140>}{<5><6><1><2>}") == [
        {"label": "red brick 2x4", "box": [10, 20, 30, 100]}, {"label": "red brick 2x4", "box": [1, 2, 5, 6]}]
    assert parse_boxes("{<1><2><3><4>}", "q") == [{"label": "q", "box": [1, 2, 3, 4]}]
    assert StubVision().detect(None, "[detection] plate 1x2") == [{"label": "plate 1x2", "box": [40, 40, 60, 60]}]
    sim = AssemblySimulator(manual=generate_manual(4, 6), vision=StubVision())
    assert "[40, 40, 60, 60]" in sim.call("APICallObjectRecognitionAR")
    checker = SceneStateChecker(AssemblySimulator(manual=generate_manual(4, 6)))
    checker.sim.call("GoToStep", {"step": 3})
    dets = checker.detect(None, "")
    assert [d["label"] for d in dets] == [b.name for b in checker.sim.manual.step(3).bricks]
    assert all(0 <= v <= 100 for d in dets for v in d["box"])
    checker.sim.placed = checker.sim.placed[:-1]
    verdict = checker.check_step([], "")
    assert not verdict["ok"] and "missing" in verdict["reason"]
    with pytest.raises(Exception, match="not a Hugging Face model directory"):
        HFVisionBackend("/nonexistent")
