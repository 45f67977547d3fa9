"""The Gradio console: Jobs, Tune, Runs, Services (and the Assistant when one is attached).

A thin client: jobs go to the cluster through the Jobs API (the same call as `lathe submit`),
Serve status comes from the dashboard, the assistant is reached over its WebSocket. Nothing here
trains or loads a model. Every handler turns an error into one line in the page.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lathe.platform.errors import LatheError
from lathe.ui import jobs as J
from lathe.ui import runs as R
from lathe.ui import services as S


@dataclass
class Console:
    """What the console talks to. `assistant` is an object with `turn(session, text)` and
    `step(session, tool)` (see lathe.ui.assistant), or None to leave the tab out."""

    jobs: J.JobsAPI
    dashboard: str
    configs_root: Path = Path("configs")
    runs_root: Path = Path("runs")
    links: dict[str, str] = field(default_factory=dict)   # name -> URL, shown on the Services tab
    assistant: Any = None


def one_line(e: BaseException) -> str:
    if isinstance(e, LatheError):
        return f"error: {e}"
    text = str(e).strip().splitlines()
    return f"error: {type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def guarded(n_out: int, error_index: int) -> Callable:
    """A handler that never raises into Gradio: its error becomes one line at output `error_index`
    (the other outputs are left unchanged)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            import gradio as gr

            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - shown to the user as one line, never a traceback
                out = [gr.skip()] * n_out
                out[error_index] = one_line(e)
                return tuple(out) if n_out > 1 else out[0]

        return wrapper

    return deco


def _progress_html(view: J.JobView | None) -> str:
    if view is None:
        return ""
    pct = int(round((view.progress or 0) * 100))
    bar = f'<progress max="100" value="{pct}" style="width:100%"></progress>' if view.progress is not None else ""
    extra = f" — {view.progress_text}" if view.progress_text else ""
    run = f"<br>run: <code>{view.run_dir}</code>" if view.run_dir else ""
    return f'<div id="job-status"><b>{view.status}</b> {pct if view.progress is not None else ""}' \
           f'{"%" if view.progress is not None else ""}{extra}{bar}{run}</div>'


def _table(rows: list[dict]):
    """A results Dataframe update: one column per key seen in any row."""
    import gradio as gr

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return gr.Dataframe(value={"headers": cols or ["(no results yet)"],
                               "data": [[r.get(c) for c in cols] for r in rows] or [[""]]})


def build(console: Console):
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no calls home
    import gradio as gr

    with gr.Blocks(title="lathe console", analytics_enabled=False) as demo:
        gr.Markdown("# lathe console")
        with gr.Tabs():
            if console.assistant is not None:
                from lathe.ui.assistant import assistant_tab

                assistant_tab(console.assistant, demo)
            _jobs_tab(console, demo)
            _tune_tab(console, demo)
            _runs_tab(console, demo)
            _services_tab(console, demo)
    return demo


def _jobs_tab(console: Console, demo) -> None:
    import gradio as gr

    configs = J.shipped_configs(console.configs_root)
    with gr.Tab("Jobs", id="jobs"):
        with gr.Row():
            config = gr.Dropdown(configs, value=J.default_config(configs), label="config", elem_id="jobs-config")
            reload_btn = gr.Button("reset form", scale=0)
        form = gr.Dataframe(headers=J.FORM_COLUMNS, label="overrides (edit the value column)", interactive=True,
                            static_columns=[0, 2, 3], elem_id="jobs-form", max_height=360, wrap=True)
        base = gr.State([])
        extra = gr.Textbox(label="more overrides (key.sub=value, space-separated)", elem_id="jobs-extra",
                           placeholder="train.max_steps=20 ray.num_workers=1")
        with gr.Row():
            submit_btn = gr.Button("submit", variant="primary", elem_id="jobs-submit")
            stop_btn = gr.Button("stop", variant="stop", elem_id="jobs-stop")
        error = gr.Markdown(elem_id="jobs-error")
        job_id = gr.Textbox(label="job id", interactive=False, elem_id="jobs-id")
        status = gr.HTML(elem_id="jobs-status")
        results = gr.Dataframe(label="results", interactive=False, elem_id="jobs-results")
        logs = gr.Textbox(label="log (last 60 lines)", lines=12, max_lines=12, interactive=False, autoscroll=True,
                          elem_id="jobs-logs")
        with gr.Accordion("jobs on this cluster", open=False):
            listing = gr.Dataframe(headers=["id", "status", "entrypoint"], interactive=False)
            list_btn = gr.Button("refresh list", scale=0)
        timer = gr.Timer(1.5)

    @guarded(3, 2)
    def load_form(path):
        if not path:
            return [], [], ""
        from lathe.platform.config import load_config

        rows = J.form_rows(load_config(path))
        return rows, rows, ""

    @guarded(2, 1)
    def do_submit(path, rows, before, more):
        if not path:
            raise LatheError("pick a config first")
        after = rows.values.tolist() if hasattr(rows, "values") else rows
        overrides = J.overrides_from_form(before, after, more or "")
        jid = console.jobs.submit(path, overrides)
        return jid, f"submitted `{jid}`: lathe run {path} {' '.join(overrides)}"

    @guarded(4, 3)
    def refresh(jid):
        if not jid:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        view = console.jobs.view(jid)
        msg = f"error: {view.message}" if view.message else gr.skip()
        table = _table(view.results) if view.results else gr.skip()
        return _progress_html(view), view.log_tail, table, msg

    @guarded(1, 0)
    def do_stop(jid):
        if not jid:
            raise LatheError("no job to stop")
        return f"stop requested for `{jid}`" if console.jobs.stop(jid) else f"`{jid}` is not running"

    @guarded(2, 1)
    def do_list():
        return [[r["id"], r["status"], r["entrypoint"]] for r in console.jobs.list()] or [["", "", ""]], ""

    config.change(load_form, config, [form, base, error])
    reload_btn.click(load_form, config, [form, base, error])
    submit_btn.click(do_submit, [config, form, base, extra], [job_id, error])
    stop_btn.click(do_stop, job_id, error)
    timer.tick(refresh, job_id, [status, logs, results, error])
    list_btn.click(do_list, None, [listing, error])
    demo.load(load_form, config, [form, base, error])


def _tune_tab(console: Console, demo) -> None:
    import gradio as gr

    configs = J.shipped_configs(console.configs_root, tune=True)
    plot_dir = Path(tempfile.mkdtemp(prefix="lathe-ui-plots-"))
    with gr.Tab("Tune", id="tune"):
        config = gr.Dropdown(configs, value=J.default_config(configs), label="sweep config (has a tune: section)",
                             elem_id="tune-config")
        extra = gr.Textbox(label="overrides (key.sub=value, space-separated)", elem_id="tune-extra",
                           placeholder="tune.num_samples=2")
        with gr.Row():
            submit_btn = gr.Button("launch sweep", variant="primary", elem_id="tune-submit")
            stop_btn = gr.Button("stop", variant="stop")
        error = gr.Markdown(elem_id="tune-error")
        job_id = gr.Textbox(label="job id", interactive=False)
        status = gr.HTML()
        trials = gr.Dataframe(label="trials", interactive=False, elem_id="tune-trials")
        plot = gr.Image(label="metric per trial", type="filepath", interactive=False)
        logs = gr.Textbox(label="log (last 60 lines)", lines=8, max_lines=8, interactive=False, autoscroll=True)
        timer = gr.Timer(2.0)

    @guarded(2, 1)
    def do_submit(path, more):
        if not path:
            raise LatheError("pick a sweep config first")
        overrides = J.overrides_from_form([], [], more or "")
        jid = console.jobs.submit(path, overrides, command="tune")
        return jid, f"submitted `{jid}`: lathe tune {path} {' '.join(overrides)}"

    @guarded(5, 4)
    def refresh(jid, path):
        if not jid:
            return (gr.skip(),) * 5
        view = console.jobs.view(jid)
        metric = "loss"
        if path:
            from lathe.platform.config import load_config

            cfg = load_config(path)
            metric = cfg.tune.metric if cfg.tune else metric
        rows, series = R.trials(view.run_dir, metric) if view.run_dir and Path(view.run_dir).is_dir() else ([], {})
        image = gr.skip()
        if any(xs for xs, _ in series.values()):
            from lathe.platform.runstore import plot_curves

            image = str(plot_curves(plot_dir / f"{jid}.png", {k: v for k, v in series.items() if v[0]},
                                    xlabel="step", ylabel=metric, title=f"{metric} per trial"))
        msg = f"error: {view.message}" if view.message else gr.skip()
        return (_progress_html(view), _table(rows) if rows else gr.skip(), image, view.log_tail, msg)

    @guarded(1, 0)
    def do_stop(jid):
        if not jid:
            raise LatheError("no sweep to stop")
        return f"stop requested for `{jid}`" if console.jobs.stop(jid) else f"`{jid}` is not running"

    submit_btn.click(do_submit, [config, extra], [job_id, error])
    stop_btn.click(do_stop, job_id, error)
    timer.tick(refresh, [job_id, config], [status, trials, plot, logs, error])


def _runs_tab(console: Console, demo) -> None:
    import gradio as gr

    with gr.Tab("Runs", id="runs"):
        with gr.Row():
            pick = gr.Dropdown([], label="run", elem_id="runs-pick", scale=4)
            refresh_btn = gr.Button("refresh", scale=0, elem_id="runs-refresh")
        error = gr.Markdown(elem_id="runs-error")
        with gr.Tabs():
            with gr.Tab("report"):
                report = gr.Markdown(elem_id="runs-report")
            with gr.Tab("plots"):
                plots = gr.Gallery(columns=2, height=420, elem_id="runs-plots")
            with gr.Tab("metrics"):
                metrics = gr.Dataframe(interactive=False, elem_id="runs-metrics")
            with gr.Tab("config"):
                config = gr.Code(language="yaml", elem_id="runs-config")
            with gr.Tab("results"):
                results = gr.JSON(elem_id="runs-results")

    @guarded(2, 1)
    def do_list():
        rows = R.list_runs(console.runs_root)
        choices = [(f"{r['run']}  ({r['job']}, {r['state']})", r["path"]) for r in rows]
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None), \
            "" if rows else f"no runs under {console.runs_root} yet"

    @guarded(6, 5)
    def show(path):
        if not path:
            return (gr.skip(),) * 5 + ("",)
        d = R.run_details(path)
        table = {"headers": d["metrics_columns"] or ["(no metrics)"], "data": d["metrics_rows"] or [[""]]}
        return d["report"], d["plots"], gr.Dataframe(**table), d["config"], d["results"], ""

    refresh_btn.click(do_list, None, [pick, error])
    pick.change(show, pick, [report, plots, metrics, config, results, error])
    demo.load(do_list, None, [pick, error])


def _services_tab(console: Console, demo) -> None:
    import gradio as gr

    with gr.Tab("Services", id="services"):
        gr.Markdown("\n".join(f"- **{k}**: <{v}>" for k, v in console.links.items()) or
                            "(this console started no services)", elem_id="services-links")
        table = gr.Dataframe(headers=S.COLUMNS, interactive=False, elem_id="services-table")
        note = gr.Markdown(elem_id="services-note")
        refresh_btn = gr.Button("refresh", scale=0)

    @guarded(2, 1)
    def do_refresh():
        rows, msg = S.serve_rows(console.dashboard)
        return (rows or [[""] * len(S.COLUMNS)]), msg

    refresh_btn.click(do_refresh, None, [table, note])
    demo.load(do_refresh, None, [table, note])
