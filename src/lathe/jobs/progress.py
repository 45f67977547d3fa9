"""Live metrics from Ray workers to the driver: a small actor that rank 0 pushes to.

Works the same on a laptop and on a cluster (no shared filesystem needed). The driver
polls it to drive a progress bar and to append metrics.jsonl while training runs.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import ray


@ray.remote(num_cpus=0)
class MetricsSink:
    def __init__(self) -> None:
        self.records: list[dict] = []
        self.total_steps = 0

    def set_total(self, total: int) -> None:
        self.total_steps = total

    def push(self, record: dict) -> None:
        self.records.append(record)

    def push_many(self, records: list[dict]) -> None:
        self.records.extend(records)

    def since(self, index: int) -> tuple[list[dict], int]:
        return self.records[index:], self.total_steps


class Poller:
    """Calls `on_records(new_records, total_steps)` from a background thread until stopped."""

    def __init__(self, sink, on_records: Callable[[list[dict], int], None], interval: float = 0.5):
        self.sink, self.on_records, self.interval = sink, on_records, interval
        self._index = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        try:
            new, total = ray.get(self.sink.since.remote(self._index), timeout=10)
        except Exception:  # the sink is best-effort; a missed poll is retried
            return
        self._index += len(new)
        if new or total:
            self.on_records(new, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()  # whatever arrived after the last tick
        time.sleep(0)
