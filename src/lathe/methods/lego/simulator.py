"""`AssemblySimulator`: the offline, deterministic stand-in for the Unity LEGO app.

It holds the real scene state: current step, placed bricks, exploded view, zoom, orientation,
highlights. `call(name, args)` runs one of the 18 tools, changes that state as the spec says and
returns the wrapped observation ('Called the Unity tool <Name> and got a response: ...'). It
never raises on model output: unknown tools and bad arguments come back as error observations.

Other code (the XR bridge, the serve app) watches it through `subscribe(fn)`: fn(event) runs
after every tool call and state change with {"type", "tool"?, "args"?, "text"?, "state"}.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from lathe.data.lego import Brick, Manual
from lathe.methods.lego.tools import BY_NAME, ToolArgError, validate_args, wrap

ZOOM_FACTOR, ZOOM_MIN, ZOOM_MAX = 1.25, 0.25, 4.0


@dataclass
class ToolResult:
    name: str
    args: dict
    text: str         # the tool's own response text
    ok: bool          # False for unknown tools / invalid arguments

    @property
    def observation(self) -> str:
        return wrap(self.name, self.text)


class AssemblySimulator:
    """Scene state of one assembly. `manual` gives step texts and geometry; without one,
    `n_steps` generic steps (10 per chunk in the reference)."""

    def __init__(self, manual: Manual | None = None, n_steps: int | None = None, fault_rate: float = 0.0,
                 seed: int = 0, vision=None):
        if manual is None and n_steps is None:
            n_steps = 10
        if n_steps is not None and n_steps < 1:
            raise ValueError("n_steps must be at least 1")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be in [0, 1]")
        self.manual = manual
        self.n_steps = n_steps if n_steps is not None else manual.n_steps
        self.fault_rate = fault_rate
        self.rng = random.Random(seed)
        if vision is None:
            from lathe.methods.lego.vision import SceneStateChecker

            vision = SceneStateChecker(self)
        self.vision = vision
        self.frames: dict[float, Any] = {}  # uploaded headset frames by timestamp
        self._listeners: list[Callable[[dict], None]] = []
        self.history: list[ToolResult] = []
        self.reset()

    # ---- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.current_step = 1
        self.started = False
        self.finished = False
        self.exploded = False
        self.zoom = 1.0
        self.orientation = {"yaw": 0, "pitch": 0}
        self.highlights: list[str] = []
        self.shown_pieces: list[str] = []
        self.replays = 0
        self.placed: list[Brick] = self._expected()

    @property
    def remaining(self) -> int:
        return self.n_steps - self.current_step

    def _expected(self) -> list[Brick]:
        return self.manual.bricks_up_to(self.current_step) if self.manual is not None else []

    def step_text(self, k: int | None = None) -> str:
        k = self.current_step if k is None else k
        if self.manual is not None and k <= self.manual.n_steps:
            return self.manual.step(k).text
        return f"step {k} of the assembly"

    def step_pieces(self, k: int | None = None) -> list[str]:
        k = self.current_step if k is None else k
        if self.manual is None or k > self.manual.n_steps:
            return []
        return list(dict.fromkeys(b.name for b in self.manual.step(k).bricks)) or list(self.manual.step(k).entities)

    def state(self) -> dict:
        """JSON-serialisable snapshot of the scene."""
        return {"current_step": self.current_step, "n_steps": self.n_steps, "remaining": self.remaining,
                "started": self.started, "finished": self.finished, "exploded": self.exploded,
                "zoom": round(self.zoom, 4), "orientation": dict(self.orientation),
                "highlights": list(self.highlights), "shown_pieces": list(self.shown_pieces),
                "placed": [b.to_json() for b in self.placed],
                "manual_id": self.manual.manual_id if self.manual is not None else None}

    def set_step(self, k: int) -> None:
        """Move to step k from outside (a client's `step_state` event); out of range is clamped."""
        self._goto(max(1, min(self.n_steps, int(k))))
        self._emit({"type": "state"})

    def place(self, brick: Brick) -> None:
        """A brick the trainee placed (AR); the vision checker compares these with the manual."""
        self.placed.append(brick)
        self._emit({"type": "state"})

    def remove(self, brick: Brick) -> None:
        self.placed.remove(brick)
        self._emit({"type": "state"})

    def subscribe(self, fn: Callable[[dict], None]) -> Callable[[], None]:
        """Call fn(event) after each change; returns an unsubscribe function."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _emit(self, event: dict) -> None:
        event["state"] = self.state()
        for fn in list(self._listeners):
            fn(event)

    def _goto(self, k: int) -> None:
        self.current_step = k
        self.placed = self._expected()
        self.highlights, self.shown_pieces = [], []

    # ---- tools ---------------------------------------------------------------------------
    def call(self, name: str, args: dict | None = None) -> str:
        """Run tool `name`; the wrapped observation string."""
        return self.execute(name, args).observation

    def execute(self, name: str, args: dict | None = None) -> ToolResult:
        try:
            clean = validate_args(name, args)
        except ToolArgError as e:
            res = ToolResult(name, args if isinstance(args, dict) else {}, f"Error: {e}", False)
        else:
            text = getattr(self, "_t_" + name)(**clean)
            res = ToolResult(name, clean, text, True)
        self.history.append(res)
        self._emit({"type": "tool", "tool": res.name, "args": res.args, "text": res.text, "ok": res.ok})
        return res

    def _pieces_text(self, k: int) -> str:
        pieces = self.step_pieces(k)
        return ", ".join(pieces) if pieces else "the pieces shown in the manual"

    def _t_StartAssemble(self) -> str:
        self.started, self.finished, self.exploded = True, False, False
        self._goto(1)
        return f"The assembly has started at step 1 of {self.n_steps}: {self.step_text(1)}"

    def _t_NextStep(self) -> str:
        if self.current_step >= self.n_steps:
            return f"You are already at the final step ({self.n_steps} of {self.n_steps})."
        self._goto(self.current_step + 1)
        return f"Moved on to step {self.current_step} of {self.n_steps}: {self.step_text()}"

    def _t_FrontStep(self) -> str:
        if self.current_step <= 1:
            return "You are already at the first step (1 of %d)." % self.n_steps
        self._goto(self.current_step - 1)
        return f"Went back to step {self.current_step} of {self.n_steps}: {self.step_text()}"

    def _t_GoToStep(self, step: int) -> str:
        if not 1 <= step <= self.n_steps:
            return f"Step {step} is not a valid step; choose a step from 1 to {self.n_steps}."
        self._goto(step)
        return f"Jumped to step {step} of {self.n_steps}: {self.step_text()}"

    def _t_Explode(self) -> str:
        if self.exploded:
            return "The model is already shown in an exploded view."
        self.exploded = True
        return "The model is now shown in an exploded view, with its pieces pulled apart."

    def _t_Recover(self) -> str:
        if not self.exploded:
            return "The model is not exploded; it is already shown assembled."
        self.exploded = False
        return "The exploded view is undone; the model is shown assembled again."

    def _t_FinishedVideo(self) -> str:
        self.finished = True
        return "The assembly is finished; playing the video of the completed model."

    def _t_ReShow(self) -> str:
        self.replays += 1
        return f"Replaying step {self.current_step}: {self.step_text()}"

    def _t_Enlarge(self) -> str:
        if self.zoom >= ZOOM_MAX:
            return f"The object is already at the largest zoom ({ZOOM_MAX:g}x)."
        self.zoom = min(ZOOM_MAX, self.zoom * ZOOM_FACTOR)
        return f"Zoomed in: the object is now shown bigger, at {self.zoom:.2f}x."

    def _t_Shrink(self) -> str:
        if self.zoom <= ZOOM_MIN:
            return f"The object is already at the smallest zoom ({ZOOM_MIN:g}x)."
        self.zoom = max(ZOOM_MIN, self.zoom / ZOOM_FACTOR)
        return f"Zoomed out: the object is now shown smaller, at {self.zoom:.2f}x."

    def _t_Rotate(self, direction: str) -> str:
        if direction == "None":
            return "The object was not rotated (direction None)."
        turn = {"Left": ("yaw", -90), "Right": ("yaw", 90), "Up": ("pitch", 90), "Down": ("pitch", -90)}
        axis, deg = turn[direction]
        self.orientation[axis] = (self.orientation[axis] + deg) % 360
        return (f"Rotated the object {direction}; it now faces yaw {self.orientation['yaw']} degrees, "
                f"pitch {self.orientation['pitch']} degrees.")

    def _t_ShowPieces(self, piece_name: str | None = None) -> str:
        pieces = self.step_pieces()
        if piece_name:
            want = " ".join(piece_name.lower().split())
            pool = self.manual.entities() if self.manual is not None else []
            hits = [p for p in pool if want in p]
            if not hits:
                self.shown_pieces = pieces
                return (f"No piece named '{piece_name}' is in this manual; step {self.current_step} needs "
                        f"{self._pieces_text(self.current_step)}.")
            self.shown_pieces = hits
            return f"Showing the candidate pieces matching '{piece_name}': {', '.join(hits)}."
        self.shown_pieces = pieces
        return f"Showing the pieces for step {self.current_step}: {self._pieces_text(self.current_step)}."

    def _t_HighlightCorrectComponents(self) -> str:
        self.highlights = self.step_pieces()
        where = ""
        if self.manual is not None and self.current_step <= self.manual.n_steps:
            spots = [f"{b.name} at stud ({b.x}, {b.y}), height {b.z}" for b in self.manual.step(self.current_step).bricks]
            where = " Attachment points: " + "; ".join(spots) + "." if spots else ""
        return f"Highlighted the correct pieces for step {self.current_step}: " \
               f"{self._pieces_text(self.current_step)}.{where}"

    def _t_GetCurrentStep(self) -> str:
        return f"You are at step {self.current_step} of {self.n_steps}, with {self.remaining} steps remaining."

    def _t_GetRemainingStep(self) -> str:
        return f"There are {self.remaining} steps remaining after step {self.current_step} of {self.n_steps}."

    def _t_CheckStepStatusVR(self) -> str:
        if self.fault_rate and self.rng.random() < self.fault_rate:
            return (f"The assembly sequence does not match the manual at step {self.current_step}: incorrect. "
                    f"Check {self._pieces_text(self.current_step)}.")
        return f"The assembly sequence matches the manual up to step {self.current_step}: correct."

    def _frames(self, stamps: list[float] | None) -> list:
        if stamps:
            return [self.frames[s] for s in stamps if s in self.frames]
        return [self.frames[max(self.frames)]] if self.frames else []

    def _t_APICallObjectRecognitionAR(self, current_stamps: list[float] | None = None) -> str:
        frames = self._frames(current_stamps)
        pieces = self.step_pieces()
        query = "[detection] " + (", ".join(pieces) if pieces else "lego pieces")
        found = self.vision.detect(frames[-1] if frames else None, query)
        if not found:
            return "No LEGO pieces were recognised in the headset view."
        self.highlights = list(dict.fromkeys(d["label"] for d in found))
        spots = "; ".join(f"{d['label']} at {list(d['box'])}" for d in found)
        return f"Recognised and highlighted {len(found)} piece(s) in the headset view: {spots}."

    def _t_APICallCheckStepStatusAR(self, current_stamps: list[float] | None = None) -> str:
        verdict = self.vision.check_step(self._frames(current_stamps), self.step_text())
        if verdict.get("ok"):
            return f"Step {self.current_step} looks done correctly in the headset view ({verdict.get('reason', '')})."
        return f"Step {self.current_step} does not look right in the headset view: {verdict.get('reason', '')}."


def tool_names() -> list[str]:
    return list(BY_NAME)
