"""A bounded per-client send queue that never drops utterances and never sends a stale scene.

Text frames (ai, tool_call, error, ...) go out in order and are never dropped. A scene update is
a *mark*, not a frame: at most one mark waits in the queue, and the frame is built when the
writer reaches it, from the client's last sent view to the newest one. A client that reads
slowly therefore skips the scene states it could not keep up with (counted in `dropped`), and
what it does get is always current and applies to what it has. A client that falls more than
`max_text` text frames behind is disconnected (code 4008) rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Awaitable, Callable

CLOSE_TOO_SLOW = 4008


class SendQueue:
    def __init__(self, send: Callable[[str], Awaitable[None]], build_scene: Callable[[float], str | None],
                 max_text: int = 256, on_overflow: Callable[[], Awaitable[None]] | None = None):
        self._send, self._build_scene = send, build_scene
        self.max_text, self.on_overflow = max_text, on_overflow
        self._items: collections.deque = collections.deque()
        self._texts = 0
        self._scene_pending = False
        self._scene_t = 0.0
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = 0        # scene states skipped because a newer one superseded them
        self.sent_scenes = 0
        self.sent_texts = 0
        self._task = asyncio.get_running_loop().create_task(self._writer())

    async def put_text(self, text: str) -> None:
        if self.closed:
            return
        if self._texts >= self.max_text:
            self.closed = True
            if self.on_overflow is not None:
                await self.on_overflow()
            return
        self._items.append(("text", text))
        self._texts += 1
        self._wake.set()

    def mark_scene(self, t: float | None = None) -> None:
        """The scene changed at time t (seconds since the epoch); must run on the loop's thread."""
        if self.closed:
            return
        self._scene_t = time.time() if t is None else t
        if self._scene_pending:
            self.dropped += 1
            return
        self._scene_pending = True
        self._items.append(("scene", None))
        self._wake.set()

    async def _writer(self) -> None:
        try:
            while not self.closed:
                if not self._items:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                kind, text = self._items.popleft()
                if kind == "text":
                    self._texts -= 1
                    await self._send(text)
                    self.sent_texts += 1
                else:
                    self._scene_pending = False
                    frame = self._build_scene(self._scene_t)
                    if frame is not None:
                        await self._send(frame)
                        self.sent_scenes += 1
        except Exception:  # the socket went away: stop quietly, the session lives on
            self.closed = True

    async def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self._items and not self.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self.closed = True
        self._wake.set()
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
