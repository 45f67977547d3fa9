"""Is an assembly buildable? No overlaps; every brick after the first is connected to and
supported by bricks placed before it (or in the same step, earlier in its list).

Contact means stud contact: one brick's top face meets the other's bottom face over at
least one stud. A brick above the ground with no such contact is floating; a brick on the
ground touching nothing is disconnected from the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from lathe.data.lego.bricks import Brick
from lathe.platform.errors import LatheError


@dataclass(frozen=True)
class Problem:
    step: int        # 1-based step number
    index: int       # 0-based brick index inside the step
    brick: Brick
    message: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.brick.name} at ({self.brick.x}, {self.brick.y}, {self.brick.z}): {self.message}"


def _touches(a: Brick, b: Brick) -> bool:
    """Stud contact between a and b (either on top of the other)."""
    if a.top != b.z and b.top != a.z:
        return False
    return bool(a.footprint() & b.footprint())


def assembly_problems(steps: Sequence[Iterable[Brick]]) -> list[Problem]:
    """All problems of an assembly given as bricks per step (empty list: valid)."""
    placed: list[Brick] = []
    occupied: dict[tuple[int, int, int], Brick] = {}
    problems: list[Problem] = []
    for s, bricks in enumerate(steps, 1):
        for i, b in enumerate(bricks):
            clash = next((occupied[c] for c in sorted(b.cells()) if c in occupied), None)
            if clash is not None:
                problems.append(Problem(s, i, b, f"overlaps {clash.name} placed at "
                                                 f"({clash.x}, {clash.y}, {clash.z})"))
                continue
            if placed and not any(_touches(b, p) for p in placed):
                what = "floating: nothing below or above it" if b.z > 0 else \
                    "not connected to the bricks placed before it"
                problems.append(Problem(s, i, b, what))
                continue
            if not placed and b.z > 0:
                problems.append(Problem(s, i, b, "floating: the first brick must stand on the ground (z=0)"))
                continue
            placed.append(b)
            occupied.update({c: b for c in b.cells()})
    return problems


def is_valid_assembly(steps: Sequence[Iterable[Brick]]) -> bool:
    return not assembly_problems(steps)


def check_assembly(steps: Sequence[Iterable[Brick]], manual_id: str = "assembly") -> None:
    """Raise LatheError naming the manual, the step and the problem of the first bad brick."""
    problems = assembly_problems(steps)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LatheError(f"manual {manual_id!r}: {problems[0]}{more}")
