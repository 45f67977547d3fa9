"""`lathe agents run`: runs a method with a chosen model, prints the metric table, writes the
trajectories and metrics; bad input is one error line."""

from __future__ import annotations

import json

import pytest

from lathe.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_agents_run_scores_the_oracle_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["agents", "run", "--method", "conagents", "--model", "oracle", "--tasks", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| conagents | oracle | 2 | 100.00 | 100.00 |" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["success"] == 100.0 and metrics["path"] == 100.0 and metrics["tasks"] == 2
    trajs = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajs) == 2 and all(t["success"] == 1.0 and t["answer"] == t["gold"] for t in trajs)

    assert main(["agents", "run", "--method", "genground", "--model", "oracle", "--tasks", "2", "--knowledge",
                 "simulation", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["acc"] == 100.0


def test_agents_run_with_a_model_directory(tmp_path, capsys):
    """A local model dir (here a tiny random model) runs through the in-process client."""
    from lathe.data import multihop as mh
    from lathe.platform.zoo import build_tiny, save_pretrained, train_tokenizer

    rows, passages = mh.generate(0)
    tok = train_tokenizer([p["text"] for p in passages] + [r["question"] for r in rows], vocab_size=256)
    save_pretrained(build_tiny("tiny-1m", vocab_size=len(tok), seed=0), tok, tmp_path / "m")
    out = tmp_path / "run"
    assert main(["agents", "run", "--method", "rtr", "--model", str(tmp_path / "m"), "--tasks", "1",
                 "--out", str(out)]) == 0
    (t,) = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert t["llm_calls"] == 1 and t["documents"] and "| rtr |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--task-file", "{bad}"], "not a RestBench task file"),
    (["--model", "no-such-model"], "is not oracle, distilled, base"),
    (["--task-file", "{real}"], "needs synthetic tasks"),
    (["--tasks", "0"], "--tasks: must be >= 1"),
])
def test_agents_run_bad_input_is_one_line(tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": 1}))
    real = tmp_path / "tmdb.json"  # published bare-list layout: no answers, no gold plans
    real.write_text(json.dumps([{"query": "Who directed Alien?", "solution": ["GET /search/movie"]}]))
    argv = [a.format(bad=bad, real=real) for a in argv]
    assert main(["agents", "run", "--method", "conagents", "--model", "oracle", "--out", str(tmp_path / "o")]
                + argv if "--model" not in argv else ["agents", "run", "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lathe: error:") and message in err[0], err
