"""The run's step manifest: which steps finished, when, and what they produced (checkpoint
paths, files). Written atomically after every step, so a run killed at any point resumes from
the last finished step and never recomputes one."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable


class Manifest:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"steps": {}, "order": [], "attempts": 0}
        if path.is_file():
            self.data = json.loads(path.read_text())
        self.data["attempts"] = self.data.get("attempts", 0) + 1
        self.resumed = bool(self.data["steps"])
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def done(self, name: str) -> bool:
        return name in self.data["steps"]

    def out(self, name: str) -> Any:
        return self.data["steps"][name]["out"]

    def finish(self, name: str, out: Any, seconds: float) -> None:
        with self.lock:
            self.data["steps"][name] = {"out": out, "finished_at": time.time(), "seconds": seconds,
                                        "attempt": self.data["attempts"]}
            self.data["order"].append(name)
            self._write()

    def step(self, name: str, fn: Callable[[], Any], before: Callable[[str], None] | None = None) -> Any:
        """`fn()`'s result, computed once: a finished step returns its recorded output."""
        if self.done(name):
            return self.out(name)
        if before is not None:
            before(name)
        t0 = time.perf_counter()
        out = fn()
        self.finish(name, out, time.perf_counter() - t0)
        return out
