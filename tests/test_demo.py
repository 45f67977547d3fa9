"""`lathe demo --no-serve` (what `make demo DEMO_ARGS=--no-serve` runs): the pipeline's wiring, with
tiny models standing in for SmolLM2 and its fine-tune so the test takes seconds."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_pipeline_writes_data_a_comparison_table_and_a_plot(tmp_path, monkeypatch, capsys):
    # broken versions caught: a step skipped (no data export, no report), the base and the fine-tune
    # scored as the same model, or scores recomputed instead of read from the cache on the second run
    from lathe import demo
    from lathe.data import qa
    from lathe.platform import pretrained
    from lathe.platform.zoo import build_tiny, save_pretrained, train_tokenizer

    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in qa.generate(64, 0)], vocab_size=400)
    base = save_pretrained(build_tiny("tiny-1m", vocab_size=len(tok), seed=0), tok, tmp_path / "base" / "m")
    tuned = save_pretrained(build_tiny("tiny-1m", vocab_size=len(tok), seed=1), tok, tmp_path / "tuned" / "m")
    monkeypatch.setattr("lathe.jobs.lego_assistant.assistant_dir", lambda show_progress=True: tuned)
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda name, root=None: base)
    monkeypatch.setattr(demo, "N_MANUALS", 2)
    monkeypatch.setattr(demo, "STEPS", 10)

    assert demo.run(serve=False, limit=4, output_root=str(tmp_path / "runs")) == 0
    run_dir = next((tmp_path / "runs").glob("demo-*"))
    assert (run_dir / "data" / "v2" / "train.jsonl").is_file() and (run_dir / "data" / "manuals").is_dir()
    report = (run_dir / "report.md").read_text()
    assert "SmolLM2-135M-Instruct (few-shot)" in report and "+ MELoRA fine-tune" in report
    assert (run_dir / "lego_metrics.png").stat().st_size > 1000
    cached = json.loads((tuned.parent / "demo_eval-4-48.json").read_text())
    assert set(cached) == {"SmolLM2-135M-Instruct (few-shot)", "+ MELoRA fine-tune"}
    assert all(set(v) >= {"tool_acc", "theme_acc", "bleu", "rougeL"} for v in cached.values())

    def boom(*a, **k):
        raise AssertionError("the second run must read the cached scores")

    monkeypatch.setattr("lathe.eval.lego.evaluate_rows", boom)
    assert demo.run(serve=False, limit=4, output_root=str(tmp_path / "runs2")) == 0
    assert "+ MELoRA fine-tune" in capsys.readouterr().out


def test_demo_is_a_lathe_subcommand():
    from lathe.cli import build_parser

    args = build_parser().parse_args(["demo", "--no-serve", "--limit", "3"])
    assert args.no_serve and args.limit == 3 and callable(args.fn)
