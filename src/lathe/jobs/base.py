"""What every job shares: the `Job` interface and the driver-side reporter.

A job is registered under kind "job" with its config class. `lathe run` validates the
config, creates the run directory, starts (or joins) Ray and calls `Job.run`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, ClassVar

from lathe.platform.config import JobConfig
from lathe.platform.runstore import RunDir


class Reporter:
    """Driver-side sink for live training metrics: progress bar, metrics.jsonl, Tune."""

    def __init__(self, run: RunDir, desc: str = "train", show: bool = True,
                 forward: Callable[[dict], None] | None = None):
        self.run, self.desc, self.show, self.forward = run, desc, show, forward
        self._bar = None

    def __call__(self, records: list[dict], total: int) -> None:
        if self.show and self._bar is None and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.run.log_metrics(records)
        for r in records:
            if self._bar is not None and "step" in r and "loss" in r:
                self._bar.n = r["step"]
                self._bar.set_postfix(loss=f"{r['loss']:.4f}", refresh=False)
                self._bar.refresh()
            if self.forward is not None and "loss" in r:
                self.forward(r)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Job:
    """Subclass, set `Config`, implement `run`; register with `@register("job", name)`."""

    Config: ClassVar[type[JobConfig]] = JobConfig

    def run(self, cfg: Any, run: RunDir, forward: Callable[[dict], None] | None = None,
            show_progress: bool = True) -> dict:
        """Do the work, write results/report into `run`, return the results dict.

        `forward(record)` receives each training record (Tune uses it for early stopping).
        """
        raise NotImplementedError
