"""Pluggable vision back ends for the two AR tools.

Interface (spec section 4.4):
    detect(image, query) -> [{"label": str, "box": [x1, y1, x2, y2]}]   (boxes on a 0..100 grid)
    check_step(frames, step_text) -> {"ok": bool, "reason": str}
Back ends: `SceneStateChecker` (default: answers from the simulator's real scene state),
`StubVision` (fixed detections, for clients with nothing attached), and `HFVisionBackend`
(any local Hugging Face vision-language model directory, prompted MiniGPT-v2 style).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from lathe.platform.errors import LatheError

_BOX = re.compile(r"\{<(\d+)><(\d+)><(\d+)><(\d+)>\}")
_LABELLED = re.compile(r"<p>(.*?)</p>\s*((?:\{<\d+><\d+><\d+><\d+>\})+)")


class VisionBackend(Protocol):
    def detect(self, image: Any, query: str) -> list[dict]: ...

    def check_step(self, frames: list[Any], step_text: str) -> dict: ...


def parse_boxes(text: str, default_label: str = "object") -> list[dict]:
    """MiniGPT-v2 output '<p>label</p> {<x1><y1><x2><y2>}...' -> detections (0..100 grid, clipped)."""
    out = []
    spans = list(_LABELLED.finditer(text))
    groups = [(m.group(1).strip(), m.group(2)) for m in spans] or [(default_label, text)]
    for label, boxes in groups:
        for b in _BOX.finditer(boxes):
            x1, y1, x2, y2 = (min(100, int(v)) for v in b.groups())
            out.append({"label": label, "box": [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]})
    return out


class StubVision:
    """Fixed answers: one detection of whatever is asked for, and every step judged fine."""

    name = "stub"

    def detect(self, image, query: str) -> list[dict]:
        label = re.sub(r"^\[[a-z-]+\]\s*", "", query).strip() or "object"
        return [{"label": label, "box": [40, 40, 60, 60]}]

    def check_step(self, frames, step_text: str) -> dict:
        return {"ok": True, "reason": "the stub vision back end accepts every step"}


class SceneStateChecker:
    """Answers from the simulator's scene: which pieces the current step needs (with their boxes on
    the model's top view), and whether the placed bricks match the manual up to the current step."""

    name = "scene_state"

    def __init__(self, simulator):
        self.sim = simulator

    def detect(self, image, query: str) -> list[dict]:
        from lathe.data.lego import box_of, extent_of

        sim = self.sim
        if sim.manual is None:
            return StubVision().detect(image, query)
        step = sim.manual.step(sim.current_step)
        wanted = re.sub(r"^\[[a-z-]+\]\s*", "", query or "").strip().lower()
        ext = extent_of(sim.manual.bricks_up_to(sim.current_step))
        hits = [b for b in step.bricks if not wanted or wanted in b.name or b.piece in wanted or wanted in b.piece]
        return [{"label": b.name, "box": box_of(b, ext)} for b in (hits or step.bricks)]

    def check_step(self, frames, step_text: str) -> dict:
        sim = self.sim
        if sim.manual is None:
            return {"ok": True, "reason": "no manual geometry to compare against"}
        want = sim.manual.bricks_up_to(sim.current_step)
        have = list(sim.placed)
        missing = [b for b in want if b not in have]
        extra = [b for b in have if b not in want]
        if not missing and not extra:
            return {"ok": True, "reason": f"all {len(want)} pieces up to step {sim.current_step} are in place"}
        parts = []
        if missing:
            parts.append("missing " + ", ".join(sorted({b.name for b in missing})))
        if extra:
            parts.append("not in the manual yet: " + ", ".join(sorted({b.name for b in extra})))
        return {"ok": False, "reason": "; ".join(parts)}


class HFVisionBackend:
    """Any local HF image-text-to-text model (e.g. a MiniGPT-v2-style or Qwen2-VL checkpoint dir).

    Loaded lazily on first use; prompted with the task token ('[detection] <query>') and parsed
    for '{<x1><y1><x2><y2>}' boxes. Generation follows the reference: temperature 0.6, 500 new tokens.
    """

    name = "hf"

    def __init__(self, path: str, max_new_tokens: int = 500, temperature: float = 0.6,
                 trust_remote_code: bool = False):
        from pathlib import Path

        if not (Path(path) / "config.json").is_file():
            raise LatheError(f"vision.path: {path} is not a Hugging Face model directory (no config.json)")
        self.path, self.max_new_tokens, self.temperature = path, max_new_tokens, temperature
        self.trust_remote_code = trust_remote_code
        self._model = self._proc = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self._proc = AutoProcessor.from_pretrained(self.path, local_files_only=True,
                                                       trust_remote_code=self.trust_remote_code)
            self._model = AutoModelForImageTextToText.from_pretrained(
                self.path, local_files_only=True, use_safetensors=True, trust_remote_code=self.trust_remote_code)
            self._model.eval()
        return self._model, self._proc

    def _generate(self, image, prompt: str) -> str:
        import torch

        model, proc = self._load()
        inputs = proc(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=self.temperature > 0,
                                 temperature=self.temperature)
        new = out[0, inputs["input_ids"].shape[1]:]
        return proc.decode(new, skip_special_tokens=True)

    def detect(self, image, query: str) -> list[dict]:
        prompt = query if query.startswith("[") else f"[detection] {query}"
        return parse_boxes(self._generate(image, prompt), default_label=query)

    def check_step(self, frames, step_text: str) -> dict:
        if not frames:
            return {"ok": False, "reason": "no headset frames were uploaded"}
        text = self._generate(frames[-1], f"[vqa] Was this step done correctly: {step_text}? Answer yes or no.")
        ok = text.strip().lower().startswith("yes")
        return {"ok": ok, "reason": text.strip()[:200]}


def make_vision(kind: str, simulator=None, path: str | None = None):
    """'scene_state' (default), 'stub', or 'hf' with a model dir."""
    if kind == "scene_state":
        return SceneStateChecker(simulator)
    if kind == "stub":
        return StubVision()
    if kind == "hf":
        if not path:
            raise LatheError("vision: kind 'hf' needs vision.path (a local model directory)")
        return HFVisionBackend(path)
    raise LatheError(f"vision.kind: {kind!r} is not one of scene_state, stub, hf")
