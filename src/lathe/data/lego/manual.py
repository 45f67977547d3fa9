"""Manuals: ordered steps of one or more bricks with text, in the spec's JSON layout.

Layout (LEGO-MRTA, spec section 3), one manual per JSON object:
    {"manual_id": str, "manual_type": "lego",
     "instructions": [{"instruction_id": int, "text": str, "img_url": str,
                       "entities": [str, ...],                       # optional (VLM-augmented)
                       "VLM": {"img_path", "task_label", "query", "MiniGPTv2_output"},  # optional
                       "bricks": [{"piece", "colour", "x", "y", "z", "rot"}, ...]}]}   # optional, lathe
`bricks` is lathe's addition: the geometry of the step. Crawled manuals have none and load as
text-only manuals; manuals with bricks are checked for overlaps and floating bricks on load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lathe.data.lego.bricks import Brick
from lathe.data.lego.validity import assembly_problems
from lathe.platform.errors import LatheError

TASK_LABELS = ("[detection]", "[detection-collect]", "None")
_STEP_KEYS = {"instruction_id", "text", "img_url", "entities", "VLM", "bricks"}
_TOP_KEYS = {"manual_id", "manual_type", "instructions", "title"}
_VLM_KEYS = {"img_path", "task_label", "query", "MiniGPTv2_output"}


def task_label(text: str) -> str:
    """Spec rule: steps starting with 'Find' -> [detection], 'Collect' -> [detection-collect]."""
    t = text.lstrip()
    if t.startswith("Find"):
        return "[detection]"
    if t.startswith("Collect"):
        return "[detection-collect]"
    return "None"


@dataclass
class Step:
    instruction_id: int
    text: str
    img_url: str = ""
    bricks: tuple[Brick, ...] = ()
    entities: list[str] = field(default_factory=list)
    vlm: dict | None = None

    def to_json(self) -> dict:
        row = {"instruction_id": self.instruction_id, "text": self.text, "img_url": self.img_url}
        if self.entities:
            row["entities"] = list(self.entities)
        if self.vlm is not None:
            row["VLM"] = dict(self.vlm)
        if self.bricks:
            row["bricks"] = [b.to_json() for b in self.bricks]
        return row


@dataclass
class Manual:
    manual_id: str
    steps: list[Step]
    title: str = ""
    manual_type: str = "lego"

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def step(self, k: int) -> Step:
        """Step k, 1-based."""
        if not 1 <= k <= len(self.steps):
            raise LatheError(f"manual {self.manual_id!r}: no step {k} (1..{len(self.steps)})")
        return self.steps[k - 1]

    def bricks_up_to(self, k: int) -> list[Brick]:
        """Every brick placed in steps 1..k."""
        return [b for s in self.steps[:max(0, k)] for b in s.bricks]

    def entities(self) -> list[str]:
        """Theme entities of all steps, first-seen order, deduplicated."""
        seen: dict[str, None] = {}
        for s in self.steps:
            for e in s.entities:
                seen.setdefault(e, None)
        return list(seen)

    def to_json(self) -> dict:
        out = {"manual_id": self.manual_id, "manual_type": self.manual_type,
               "instructions": [s.to_json() for s in self.steps]}
        if self.title:
            out["title"] = self.title
        return out

    def problems(self) -> list[str]:
        return [str(p) for p in assembly_problems([s.bricks for s in self.steps])]


def manual_from_json(obj: dict, source: str = "manual") -> Manual:
    """Parse one manual object; errors name the source, the manual and the step."""
    if not isinstance(obj, dict):
        raise LatheError(f"{source}: a manual must be a JSON object")
    mid = obj.get("manual_id")
    if not isinstance(mid, (str, int)) or str(mid) == "":
        raise LatheError(f"{source}: missing manual_id")
    mid = str(mid)
    where = f"{source}: manual {mid!r}"
    extra = set(obj) - _TOP_KEYS
    if extra:
        raise LatheError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    if obj.get("manual_type", "lego") != "lego":
        raise LatheError(f"{where}: manual_type must be 'lego' (got {obj.get('manual_type')!r})")
    rows = obj.get("instructions")
    if not isinstance(rows, list) or not rows:
        raise LatheError(f"{where}: instructions must be a non-empty list")
    steps = []
    for n, row in enumerate(rows, 1):
        at = f"{where}: step {n}"
        if not isinstance(row, dict):
            raise LatheError(f"{at}: an instruction must be an object")
        extra = set(row) - _STEP_KEYS
        if extra:
            raise LatheError(f"{at}: unknown key(s) {', '.join(sorted(extra))}")
        iid, text = row.get("instruction_id", n), row.get("text")
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise LatheError(f"{at}: instruction_id must be an integer (got {iid!r})")
        if not isinstance(text, str) or not text.strip():
            raise LatheError(f"{at}: text must be a non-empty string")
        bricks = []
        for b in row.get("bricks") or []:
            try:
                bricks.append(Brick.from_json(b))
            except LatheError as e:
                raise LatheError(f"{at}: {e}") from None
        entities = row.get("entities")
        if entities is None:
            entities = list(dict.fromkeys(b.name for b in bricks))
        elif not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
            raise LatheError(f"{at}: entities must be a list of strings")
        vlm = row.get("VLM")
        if vlm is not None:
            if not isinstance(vlm, dict) or set(vlm) - _VLM_KEYS:
                raise LatheError(f"{at}: VLM must be an object with keys {', '.join(sorted(_VLM_KEYS))}")
            if vlm.get("task_label", "None") not in TASK_LABELS:
                raise LatheError(f"{at}: VLM.task_label must be one of {', '.join(TASK_LABELS)}")
        steps.append(Step(iid, text, str(row.get("img_url", "")), tuple(bricks), list(entities), vlm))
    problems = assembly_problems([s.bricks for s in steps])
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LatheError(f"{where}: {problems[0]}{more}")
    return Manual(mid, steps, str(obj.get("title", "")))


def load_manuals(path: str | Path) -> list[Manual]:
    """Manuals from a JSON file (one object, or a list), a JSONL file, or a directory of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise LatheError(f"{path}: no .json manuals in this directory")
        return [m for f in files for m in load_manuals(f)]
    if not path.is_file():
        raise LatheError(f"{path}: no such manual file")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            objs = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            objs = data if isinstance(data, list) else [data]
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return [manual_from_json(o, str(path)) for o in objs]


def load_manual(path: str | Path) -> Manual:
    ms = load_manuals(path)
    if len(ms) != 1:
        raise LatheError(f"{path}: expected one manual, found {len(ms)}")
    return ms[0]


def save_manuals(manuals: Iterable[Manual], out_dir: str | Path) -> list[Path]:
    """One `<manual_id>.json` per manual."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in manuals:
        p = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', m.manual_id)}.json"
        p.write_text(json.dumps(m.to_json(), indent=1))
        paths.append(p)
    return paths
