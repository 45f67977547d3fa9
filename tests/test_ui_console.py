"""The Gradio console: its pure pieces (schema form, overrides, log parsing, runs), and the page in
Debian's chromium through Playwright: a chat turn changes the scene image, a bad override shows the
config error's one line, and (slow) a tiny sft job submitted from the Jobs tab finishes with its table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
SCRIPT = [["^Observation:", json.dumps({"action": "Final Answer", "action_input": "Here is the next step."})],
          ["next", json.dumps({"action": "NextStep", "action_input": {}})],
          [".", json.dumps({"action": "Final Answer", "action_input": "Hello."})]]


# --- pure pieces ---------------------------------------------------------------------------------

def test_form_rows_and_overrides_roundtrip():
    from lathe.platform.config import load_config
    from lathe.ui.jobs import form_rows, overrides_from_form

    cfg = load_config(ROOT / "configs/sft/tiny_demo.yaml")
    rows = form_rows(cfg)
    keys = [r[0] for r in rows]
    assert "train.lr" in keys and "model.preset" in keys and "job" not in keys and "tune" not in keys
    lr = next(r for r in rows if r[0] == "train.lr")
    assert float(lr[1]) == 3.0e-3 and "float" in lr[2]
    edited = [list(r) for r in rows]
    next(r for r in edited if r[0] == "train.lr")[1] = "0.003"          # same value, other spelling
    next(r for r in edited if r[0] == "train.max_steps")[1] = "12"
    next(r for r in edited if r[0] == "name")[1] = "true"               # a string that YAML reads as a bool
    ov = overrides_from_form(rows, edited, "ray.num_workers=1")
    assert ov == ["name=true", "train.max_steps=12", "ray.num_workers=1"]
    # the form's own text always reads back to the resolved value
    again = load_config(ROOT / "configs/sft/tiny_demo.yaml", [f"{k}={v}" for k, v, *_ in rows if v != "null"])
    assert again.model_dump() == cfg.model_dump()


def test_bad_override_is_one_line_before_any_cluster(tmp_path):
    from lathe.platform.errors import ConfigError
    from lathe.ui.jobs import JobsAPI

    api = JobsAPI("http://127.0.0.1:9", working_dir=ROOT, runs_root=tmp_path)
    with pytest.raises(ConfigError) as e:
        api.submit(str(ROOT / "configs/sft/tiny_demo.yaml"), ["train.lrr=1"])
    assert "unknown key 'train.lrr'; did you mean 'train.lr'?" in str(e.value) and "\n" not in str(e.value)
    ov = api.prepare(str(ROOT / "configs/sft/tiny_demo.yaml"), [])
    assert ov == [f"output_root={tmp_path.resolve()}"]  # runs land where the Runs tab looks


def test_log_parsing():
    from lathe.ui.jobs import clean_log, parse_markdown_table, parse_progress

    # the weight-loading bar after training is not the job's progress
    log = ("lathe: sft 'x' -> /tmp/runs/x-1\nsft[full]:  10%|#  | 2/20 [00:01<00:09, 1.9step/s]\rsft[full]:  50%|## "
           "| 10/20 [00:05<00:05, 1.31s/step]\nLoading weights: 100%|###| 38/38 [00:00<00:00, 6112.50it/s]\n"
           "| steps | final_loss |\n|---|---|\n| 20 | 1.25 |\n\nreport: /tmp/runs/x-1/report.md\n")
    assert parse_progress(log) == (0.5, "10/20 steps")
    assert parse_markdown_table(log) == [{"steps": "20", "final_loss": "1.25"}]
    assert "2/20" not in clean_log(log)
    assert parse_progress("no bar here") == (None, "")


def test_results_table_update_renders_every_column():
    """The Jobs and Tune tabs show a finished job's results through this update (a wrong Dataframe
    keyword once made every refresh after SUCCEEDED fail, so the page never left RUNNING)."""
    from lathe.ui.app import _table

    update = _table([{"steps": 4, "final_loss": 5.5}, {"steps": 8, "eval_loss": 5.0}])
    assert update.value["headers"] == ["steps", "final_loss", "eval_loss"]
    assert update.value["data"] == [[4, 5.5, None], [8, None, 5.0]]


def test_shipped_configs_and_runs(tmp_path):
    from lathe.platform.config import load_config
    from lathe.platform.runstore import RunDir
    from lathe.ui.jobs import shipped_configs
    from lathe.ui.runs import list_runs, run_details, trials

    jobs = shipped_configs(ROOT / "configs")
    assert any(p.endswith("sft/tiny_demo.yaml") for p in jobs)
    assert not any("/serve/" in p for p in jobs)
    sweeps = shipped_configs(ROOT / "configs", tune=True)
    assert sweeps and all("tune" in Path(p).read_text() for p in sweeps)
    cfg = load_config(ROOT / "configs/sft/tiny_tune.yaml", [f"output_root={tmp_path}"])
    run = RunDir.create(cfg)
    trial = RunDir.create(cfg, root=run.path / "trials")
    trial.log_metrics([{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}])
    rows, series = trials(run.path, "loss")
    assert rows == [{"train.lr": 1e-3, "train.batch_size": 16, "loss": 2.5, "steps": 2, "state": "running"}]
    assert list(series.values()) == [([1, 2], [3.0, 2.5])]
    run.log_metrics([{"step": 1, "loss": 2.0, "note": "x"}])
    run.write_results({"final_loss": 2.0})
    listed = list_runs(tmp_path)
    assert [r["run"] for r in listed][:1] == [run.path.name] or run.path.name in [r["run"] for r in listed]
    d = run_details(run.path)
    assert d["metrics_columns"] == ["step", "loss"] and d["metrics_rows"] == [[1, 2.0]]
    assert d["results"] == {"final_loss": 2.0} and "job: sft" in d["config"]


# --- the page ------------------------------------------------------------------------------------

def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    if not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make install)")
    pytest.importorskip("playwright.sync_api")
    from lathe.ui.launch import launch

    runs = tmp_path_factory.mktemp("runs")
    cfg = tmp_path_factory.mktemp("cfg") / "lego.yaml"
    cfg.write_text("job: serve\nlego:\n  manual_steps: 8\n  llm:\n    backend: scripted\n    script: "
                   + json.dumps(SCRIPT) + "\n")
    # An unreachable Jobs API: this fixture checks what needs no cluster (the slow test starts one).
    handle = launch(address="http://127.0.0.1:9", port=0, assistant_config=str(cfg), configs_root=ROOT / "configs",
                    runs_root=runs, working_dir=ROOT, quiet=True)
    yield handle
    handle.stop()


def _open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def _wait_reply(page, text: str, timeout_ms: int) -> None:
    """Wait for the assistant's reply; on a timeout, fail with what the console's error line shows
    (a hang once took 300 s in a full run and said nothing about why)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text).wait_for(timeout=timeout_ms)
    except PlaywrightTimeout:
        err = page.locator("#assistant-error")
        shown = err.inner_text(timeout=5_000) if err.count() else "(no error element)"
        raise AssertionError(f"no {text!r} after {timeout_ms // 1000} s; the console's error line: {shown!r}") from None


def test_console_chat_changes_scene_and_bad_override_shows_error(console):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(console.console_url)
            img = page.locator("#assistant-image img")
            img.wait_for(timeout=400_000)  # the first offscreen render compiles shaders
            before = img.get_attribute("src")
            page.locator("#assistant-say textarea").fill("go to the next step")
            page.locator("#assistant-send").click()
            _wait_reply(page, "Here is the next step.", 300_000)
            page.wait_for_function(f"document.querySelector('#assistant-image img') && "
                                   f"document.querySelector('#assistant-image img').src !== {json.dumps(before)}",
                                   timeout=300_000)
            page.wait_for_function("document.querySelector('#assistant-calls').innerText.includes('NextStep')",
                                   timeout=30_000)   # the turn's tool calls
            sid = next(iter(console.bridge.assistant.sessions))
            assert console.bridge.assistant.sessions[sid].sim.current_step == 2
            # Jobs tab: a bad override shows the config error's one line, no traceback
            _open_tab(page, "Jobs")
            page.locator("#jobs-extra textarea").fill("train.lrr=1")
            page.locator("#jobs-submit").click()
            err = page.locator("#jobs-error")
            err.get_by_text("did you mean 'train.lr'?").wait_for(timeout=60_000)
            assert "Traceback" not in err.inner_text()
        finally:
            browser.close()


@pytest.mark.slow
def test_console_submits_tiny_sft_job_and_shows_results(tmp_path):
    """A real Ray head owned by the console; the job runs there through the Jobs API."""
    if not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    from lathe.ui.launch import launch

    handle = launch(port=0, with_assistant=False, configs_root=ROOT / "configs", runs_root=tmp_path, working_dir=ROOT,
                    quiet=True)
    try:
        with sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(handle.console_url)
                page.locator("#jobs-extra textarea").fill(
                    "train.max_steps=4 ray.num_workers=1 data.synthetic_size=64 name=ui-test")
                page.locator("#jobs-submit").click()
                page.locator("#jobs-status").get_by_text("SUCCEEDED").wait_for(timeout=600_000)
                page.locator("#jobs-results").get_by_text("final_loss").wait_for(timeout=60_000)
            finally:
                browser.close()
        runs = [p for p in tmp_path.iterdir() if p.name.startswith("ui-test-")]
        assert runs and (runs[0] / "results.json").is_file()
    finally:
        handle.stop()


def test_the_jobs_dropdown_starts_on_the_tiny_demo():
    """A new config directory sorting first (configs/agents/...) must not become the first submit."""
    from lathe.ui.jobs import default_config, shipped_configs

    configs = shipped_configs(ROOT / "configs")
    assert default_config(configs).endswith("sft/tiny_demo.yaml")
    assert default_config(shipped_configs(ROOT / "configs", tune=True)).endswith("sft/tiny_tune.yaml")
    assert default_config(["b.yaml", "a.yaml"]) == "b.yaml" and default_config([]) is None
