"""`lathe tune`: Ray Tune over any job. The config's `tune:` section names the search space
(dotted config keys), the metric, mode, samples and scheduler (ASHA by default)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from lathe.platform.config import JobConfig, SearchDim, set_dotted, validate
from lathe.platform.errors import ConfigError
from lathe.platform.registry import lookup
from lathe.platform.runstore import RunDir, markdown_table, plot_curves


def search_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    from ray import tune

    def dim(d: SearchDim):
        return {"choice": lambda: tune.choice(d.values), "grid": lambda: tune.grid_search(d.values),
                "uniform": lambda: tune.uniform(d.low, d.high), "loguniform": lambda: tune.loguniform(d.low, d.high),
                "randint": lambda: tune.randint(int(d.low), int(d.high))}[d.type]()

    return {key: dim(d) for key, d in space.items()}


def trial_config(base: dict, params: dict[str, Any], source: str) -> JobConfig:
    data = copy.deepcopy(base)
    data.pop("tune", None)
    for key, value in params.items():
        set_dotted(data, key.split("."), value)
    return validate(data, source)


def check_space(cfg: JobConfig, source: str) -> None:
    """Every searched key must exist in the job's config (typos fail before any trial runs)."""
    base = cfg.model_dump(mode="json")
    for key, dim in cfg.tune.space.items():
        sample = dim.values[0] if dim.values else dim.low
        try:
            trial_config(base, {key: sample}, source)
        except ConfigError as e:
            raise ConfigError(f"{source}: tune.space.{key}: {str(e).split(': ', 1)[-1]}") from None


def run_tune(cfg: JobConfig, run: RunDir, source: str) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune is None:
        raise ConfigError(f"{source}: no 'tune:' section (search space, metric, mode) to tune with")
    check_space(cfg, source)
    t = cfg.tune
    base = cfg.model_dump(mode="json")
    job_cls = lookup("job", cfg.job)
    trials_root = run.path / "trials"
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

    def trainable(params: dict) -> None:
        trial_cfg = trial_config(base, params, source)
        trial_run = RunDir.create(trial_cfg, root=trials_root)

        last: dict = {}

        def forward(record: dict) -> None:
            numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            last.update(numeric)
            if t.metric in record:  # ASHA compares trials on intermediate values of the metric
                tune.report(numeric)

        results = job_cls().run(trial_cfg, trial_run, forward=forward, show_progress=False)
        # The final report carries the job's results over the last training record, so a
        # metric that only training logs (e.g. loss) is still there at the end.
        final = {**last, **{k: v for k, v in results.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)}}
        final["run_dir"] = str(trial_run.path)
        tune.report(final)

    scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=t.grace_period, max_t=100_000)
                 if t.scheduler == "asha" else FIFOScheduler())
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": t.cpus_per_trial}),
        param_space=search_space(t.space),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                    max_concurrent_trials=t.max_concurrent, scheduler=scheduler),
        run_config=tune.RunConfig(name="tune", storage_path=str(run.path / "tune"), verbose=1),
    )
    grid = tuner.fit()
    rows = []
    for res in grid:
        if res.metrics is None:
            continue
        row = {k: res.config.get(k) for k in t.space}
        row[t.metric] = res.metrics.get(t.metric)
        row["iterations"] = res.metrics.get("training_iteration")
        row["status"] = "error" if res.error else "ok"
        rows.append(row)
    rows.sort(key=lambda r: (r[t.metric] is None, (r[t.metric] or 0) * (1 if t.mode == "min" else -1)))
    best = grid.get_best_result(metric=t.metric, mode=t.mode, scope="last")
    best_params = {k: best.config.get(k) for k in t.space}
    series = {}
    for i, res in enumerate(grid):
        df = res.metrics_dataframe
        if df is not None and t.metric in df and "step" in df:
            sub = df[df["step"].notna() & df[t.metric].notna()]
            label = ", ".join(f"{k.split('.')[-1]}={res.config.get(k):.3g}" if isinstance(res.config.get(k), float)
                              else f"{k.split('.')[-1]}={res.config.get(k)}" for k in t.space)
            series[label or f"trial {i}"] = (sub["step"].tolist(), sub[t.metric].tolist())
    plots = []
    if series:
        plots.append(plot_curves(run.path / "plots" / "tune.png", series, xlabel="step", ylabel=t.metric,
                                 title=f"{cfg.name}: {t.metric} per trial"))
    results = {"metric": t.metric, "mode": t.mode, "best_config": best_params,
               "best_value": best.metrics.get(t.metric) if best.metrics else None, "trials": rows}
    run.write_results(results)
    run.write_report(f"tune: {cfg.name}", [("Best", f"`{best_params}` -> {t.metric} = {results['best_value']}"),
                                           ("Trials", markdown_table(rows))], plots)
    return results
