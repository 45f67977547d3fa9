"""Seeded generator of valid assemblies and their manuals (fictional sets).

Each step places one brick ("Find ...", "Attach ...") or several of the same piece
("Collect ..."). A brick's position is drawn so its footprint overlaps the model built so
far; it then rests on the highest brick under its footprint (a height map), so it can
neither overlap nor float. The result is re-checked with `assembly_problems`.
"""

from __future__ import annotations

import random

from lathe.data.lego.bricks import COLOURS, ROTATIONS, SIZES, Brick
from lathe.data.lego.manual import Manual, Step, task_label
from lathe.data.lego.validity import assembly_problems

_BASES = [("plate", 4, 6), ("plate", 6, 6), ("plate", 4, 8), ("plate", 6, 8)]
_SET_WORDS = ["Harbour", "Rocket", "Lighthouse", "Tractor", "Castle", "Robot", "Windmill", "Garage", "Bridge",
              "Tower", "Submarine", "Cabin", "Crane", "Dragon", "Train", "Market", "Observatory", "Station"]
_SET_ADJ = ["Little", "Mighty", "Sunny", "Arctic", "Desert", "River", "Galactic", "Old", "Tiny", "Red"]
_NUM = {2: "two", 3: "three", 4: "four"}


def box_of(brick: Brick, extent: tuple[int, int, int, int]) -> list[int]:
    """Top-down box of a brick on the 0..100 grid of the model's extent (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = extent
    sx, sy = brick.size
    w, h = max(1, x1 - x0), max(1, y1 - y0)

    def nx(v):
        return int(round(100 * (v - x0) / w))

    def ny(v):
        return int(round(100 * (v - y0) / h))

    return [nx(brick.x), ny(brick.y), nx(brick.x + sx), ny(brick.y + sy)]


def extent_of(bricks) -> tuple[int, int, int, int]:
    cells = [c for b in bricks for c in b.footprint()] or [(0, 0)]
    xs, ys = [c[0] for c in cells], [c[1] for c in cells]
    return min(xs) - 1, min(ys) - 1, max(xs) + 2, max(ys) + 2


def _heights(bricks) -> dict[tuple[int, int], int]:
    hm: dict[tuple[int, int], int] = {}
    for b in bricks:
        for c in b.footprint():
            hm[c] = max(hm.get(c, 0), b.top)
    return hm


def _place(rng: random.Random, placed: list[Brick], kind: str, w: int, d: int, colour: str,
           tries: int = 200) -> Brick | None:
    hm = _heights(placed)
    cells = list(hm)
    for _ in range(tries):
        rot = rng.choice(ROTATIONS)
        probe = Brick(kind, w, d, colour, 0, 0, 0, rot)
        sx, sy = probe.size
        ax, ay = rng.choice(cells)  # a stud the new brick must cover
        x, y = ax - rng.randrange(sx), ay - rng.randrange(sy)
        foot = Brick(kind, w, d, colour, x, y, 0, rot).footprint()
        z = max(hm.get(c, 0) for c in foot)
        if z == 0 or z > 24:  # must rest on the model; keep builds a sensible height
            continue
        return Brick(kind, w, d, colour, x, y, z, rot)
    return None


def _where(b: Brick, placed: list[Brick]) -> str:
    below = [p for p in placed if p.top == b.z and p.footprint() & b.footprint()]
    on = f"on top of the {below[-1].name}" if below else "on the model"
    turn = f", turned {b.rot} degrees" if b.rot else ""
    return f"{on}, at stud ({b.x}, {b.y}){turn}"


def generate_manual(seed: int, n_steps: int = 40, manual_id: str | None = None,
                    collect_rate: float = 0.2, find_rate: float = 0.5) -> Manual:
    """A valid manual of `n_steps` steps; same seed, same manual."""
    rng = random.Random(seed)
    title = f"{rng.choice(_SET_ADJ)} {rng.choice(_SET_WORDS)}"
    manual_id = manual_id or f"lathe-{seed:05d}"
    kind, w, d = rng.choice(_BASES)
    base = Brick(kind, w, d, rng.choice(COLOURS), 0, 0, 0, 0)
    placed = [base]
    steps = [_step(1, f"Find a {base.name} and lay it down as the base of the {title}.", [base], manual_id,
                   placed)]
    while len(steps) < n_steps:
        kind = "plate" if rng.random() < 0.4 else "brick"
        w, d = (int(v) for v in rng.choice(SIZES).split("x"))
        colour = rng.choice(COLOURS)
        count = rng.choice((2, 3)) if rng.random() < collect_rate else 1
        new: list[Brick] = []
        for _ in range(count):
            b = _place(rng, placed + new, kind, w, d, colour)
            if b is None:
                break
            new.append(b)
        if not new:
            continue
        if len(new) > 1:
            plural = f"{new[0].colour} {new[0].kind}s {new[0].piece.split()[1]}"
            where = "; ".join(_where(b, placed + new[:i]) for i, b in enumerate(new))
            text = f"Collect {_NUM[len(new)]} {plural} and attach them: {where}."
        else:
            verb = "Find a" if rng.random() < find_rate else "Attach a"
            text = f"{verb} {new[0].name} {_where(new[0], placed)}."
        steps.append(_step(len(steps) + 1, text, new, manual_id, placed + new))
        placed += new
    problems = assembly_problems([s.bricks for s in steps])
    assert not problems, problems  # by construction; a failure here is a generator bug
    return Manual(manual_id, steps, title)


def _step(k: int, text: str, bricks: list[Brick], manual_id: str, scene: list[Brick]) -> Step:
    label = task_label(text)
    entities = list(dict.fromkeys(b.name for b in bricks))
    img = f"images/{manual_id}/step_{k:03d}.png"
    if label == "None":
        vlm = {"img_path": img, "task_label": "None", "query": "", "MiniGPTv2_output": ""}
    else:
        ext = extent_of(scene)
        boxes = "".join("{<%d><%d><%d><%d>}" % tuple(box_of(b, ext)) for b in bricks)
        vlm = {"img_path": img, "task_label": label, "query": f"{label} {entities[0]}",
               "MiniGPTv2_output": f"<p>{entities[0]}</p> {boxes}"}
    return Step(k, text, f"synthetic://{manual_id}/step_{k:03d}.png", tuple(bricks), entities, vlm)


def generate_manuals(seed: int, n_manuals: int, steps_per_manual: int) -> list[Manual]:
    return [generate_manual(seed * 100_003 + i, steps_per_manual, f"lathe-{seed}-{i:03d}") for i in range(n_manuals)]
