"""LEGO bricks on the stud lattice: pieces, colours, positions, 90-degree rotations.

Units: x and y count studs; z counts plate heights (a plate is 1 high, a brick 3), so a
brick on a plate sits at z=1. A piece's footprint is w x d studs; a rotation of 90 or 270
degrees swaps w and d. Positions are integers: the footprint's minimum corner.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from lathe.platform.errors import LatheError

HEIGHTS = {"brick": 3, "plate": 1}  # in plate units

COLOURS = ("bright red", "bright yellow", "bright blue", "bright green", "white", "black",
           "dark bluish grey", "light bluish grey", "reddish brown", "tan", "bright orange", "dark red")
SIZES = ("1x1", "1x2", "1x3", "1x4", "1x6", "2x2", "2x3", "2x4", "2x6", "4x4", "4x6")
ROTATIONS = (0, 90, 180, 270)

_PIECE = re.compile(r"^\s*(brick|plate)\s+(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)


def piece_name(kind: str, w: int, d: int) -> str:
    """Canonical piece name, e.g. 'brick 2x4' (smaller side first, as sets list them)."""
    a, b = sorted((w, d))
    return f"{kind} {a}x{b}"


def parse_piece(text: str) -> tuple[str, int, int]:
    """'brick 2x4' -> ('brick', 2, 4); an unknown piece raises LatheError."""
    m = _PIECE.match(text)
    if not m:
        raise LatheError(f"unknown piece {text!r} (expected '<brick|plate> <w>x<d>', e.g. 'brick 2x4')")
    kind, w, d = m.group(1).lower(), int(m.group(2)), int(m.group(3))
    if not (1 <= w <= 16 and 1 <= d <= 16):
        raise LatheError(f"unknown piece {text!r}: sizes run from 1 to 16 studs")
    return kind, w, d


@dataclass(frozen=True)
class Brick:
    """One placed piece. `kind` is 'brick' or 'plate'; (w, d) its unrotated stud size."""

    kind: str
    w: int
    d: int
    colour: str
    x: int = 0
    y: int = 0
    z: int = 0
    rot: int = 0

    def __post_init__(self):
        if self.kind not in HEIGHTS:
            raise LatheError(f"unknown piece kind {self.kind!r} (known: {', '.join(HEIGHTS)})")
        if self.rot not in ROTATIONS:
            raise LatheError(f"rotation {self.rot!r}: must be one of {ROTATIONS}")
        if self.z < 0:
            raise LatheError(f"z={self.z}: bricks cannot go below the ground (z=0)")

    @property
    def piece(self) -> str:
        return piece_name(self.kind, self.w, self.d)

    @property
    def name(self) -> str:
        """The theme entity: colour + piece, e.g. 'bright yellow brick 2x4'."""
        return f"{self.colour} {self.piece}"

    @property
    def height(self) -> int:
        return HEIGHTS[self.kind]

    @property
    def size(self) -> tuple[int, int]:
        """Footprint (along x, along y) after rotation."""
        return (self.d, self.w) if self.rot in (90, 270) else (self.w, self.d)

    @property
    def top(self) -> int:
        return self.z + self.height

    def footprint(self) -> set[tuple[int, int]]:
        sx, sy = self.size
        return {(self.x + i, self.y + j) for i in range(sx) for j in range(sy)}

    def cells(self) -> set[tuple[int, int, int]]:
        """Occupied lattice cells (x, y, plate layer)."""
        return {(x, y, z) for x, y in self.footprint() for z in range(self.z, self.top)}

    def to_json(self) -> dict:
        return {"piece": f"{self.kind} {self.w}x{self.d}",
                "colour": self.colour, "x": self.x, "y": self.y, "z": self.z, "rot": self.rot}

    @classmethod
    def from_json(cls, row: dict) -> "Brick":
        if not isinstance(row, dict):
            raise LatheError("a brick must be an object {piece, colour, x, y, z, rot}")
        unknown = set(row) - {"piece", "colour", "color", "x", "y", "z", "rot"}
        if unknown:
            raise LatheError(f"brick: unknown field(s) {', '.join(sorted(unknown))}")
        kind, w, d = parse_piece(str(row.get("piece", "")))
        colour = row.get("colour", row.get("color"))
        if not isinstance(colour, str) or not colour.strip():
            raise LatheError(f"brick {row.get('piece')!r}: missing colour")
        vals = {}
        for k in ("x", "y", "z", "rot"):
            v = row.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, int):
                raise LatheError(f"brick {row.get('piece')!r}: {k} must be an integer (got {v!r})")
            vals[k] = v
        return cls(kind, w, d, colour.strip().lower(), **vals)

    def asdict(self) -> dict:
        return asdict(self)


def lexicon(colours=COLOURS, kinds=tuple(HEIGHTS), sizes=SIZES) -> list[str]:
    """The colour x type x size lexicon of theme entities ('bright yellow brick 2x4', ...)."""
    return [f"{c} {k} {s}" for c in colours for k in kinds for s in sizes]


def piece_lexicon(kinds=tuple(HEIGHTS), sizes=SIZES) -> list[str]:
    """Piece names without colour ('brick 2x4', 'plate 1x2', ...)."""
    return [f"{k} {s}" for k in kinds for s in sizes]
