"""The assembly scene of a manual step, built with open3d: bricks with studs in their colours,
the step's new bricks highlighted, exploded view, zoom and orientation from the simulator state.

Outputs: a GLB of the whole view (for the WebXR client and Gradio's Model3D), a *diff* between two
views (a GLB of only the bricks that appeared, plus ids removed, highlights, moved bricks and the
root transform), and an offscreen PNG through open3d's renderer (the console's image and the
"vision" input of VQA pairs).

Units and axes: glTF is metres, Y up. A stud is `PITCH` metres (4x a real brick, so a model is a
comfortable size in a headset); lattice (x, y, z) maps to glTF (x, z, -y). Brick ids are the
brick's index in the manual's brick order, so ids are stable across steps.

Caching: each brick's mesh is built once per manual; each view's GLB and PNG are cached by the
view's key, so revisiting a step rebuilds nothing.
"""

from __future__ import annotations

import atexit
import base64
import math
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from lathe.xr_bridge.glb import Material, Part, write_glb

PITCH = 0.032                  # metres per stud (4x LEGO's 8 mm)
PLATE_H = PITCH * 0.4          # a plate is 3.2 mm on an 8 mm pitch
STUD_R = PITCH * 0.3
STUD_H = PITCH * 0.2125
STUD_SEGMENTS = 12
EXPLODE_UP = 1.6               # exploded view: extra height per plate of elevation
EXPLODE_OUT = 0.6              # and outward push, as a fraction of the distance from the centre

# sRGB of the lexicon's colours (LEGO's published colour values, rounded).
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "bright red": (0.706, 0.0, 0.0), "bright yellow": (0.98, 0.784, 0.039),
    "bright blue": (0.0, 0.341, 0.651), "bright green": (0.0, 0.522, 0.169), "white": (0.957, 0.957, 0.957),
    "black": (0.106, 0.165, 0.204), "dark bluish grey": (0.392, 0.353, 0.298),
    "light bluish grey": (0.643, 0.659, 0.635), "reddish brown": (0.373, 0.192, 0.035),
    "tan": (0.847, 0.733, 0.522), "bright orange": (0.839, 0.475, 0.137), "dark red": (0.447, 0.0, 0.071),
}
UNKNOWN_RGB = (0.55, 0.55, 0.55)
HIGHLIGHT_EMISSIVE = (0.9, 0.55, 0.0)
HIGHLIGHT_LINE = (1.0, 0.45, 0.0)


def colour_rgb(name: str) -> tuple[float, float, float]:
    return COLOUR_RGB.get(" ".join(str(name).lower().split()), UNKNOWN_RGB)


def _quaternion(yaw_deg: float, pitch_deg: float) -> tuple[float, float, float, float]:
    """xyzw of a yaw about +Y followed by a pitch about +X (q = q_yaw * q_pitch)."""
    y, p = math.radians(yaw_deg) / 2, math.radians(pitch_deg) / 2
    qy = (0.0, math.sin(y), 0.0, math.cos(y))
    qp = (math.sin(p), 0.0, 0.0, math.cos(p))
    x1, y1, z1, w1 = qy
    x2, y2, z2, w2 = qp
    return (w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2, w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2, w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2)


def _rotation_matrix(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return ry @ rx


@dataclass(frozen=True)
class View:
    """What one frame shows. `visible`/`highlight` are brick ids; `poses` each visible brick's
    node translation (rounded, so equal states compare equal)."""

    step: int
    n_steps: int
    visible: tuple[int, ...]
    highlight: tuple[int, ...]
    exploded: bool
    zoom: float
    yaw: int
    pitch: int
    poses: tuple[tuple[float, float, float], ...]

    @property
    def key(self) -> tuple:
        return (self.visible, self.highlight, self.exploded, self.zoom, self.yaw, self.pitch)

    def state(self) -> dict:
        return {"current_step": self.step, "n_steps": self.n_steps, "remaining": self.n_steps - self.step,
                "exploded": self.exploded, "zoom": self.zoom, "orientation": {"yaw": self.yaw, "pitch": self.pitch},
                "bricks": len(self.visible), "highlight": list(self.highlight)}


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, build):
        if key in self:
            self.move_to_end(key)
            return self[key], False
        value = build()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value, True


class ManualScene:
    """Scene builder for one manual (any object with `.steps[i].bricks`, `.n_steps`, `.manual_id`).
    Thread-safe; meshes and per-view outputs are cached."""

    def __init__(self, manual, cache_size: int = 256):
        self.manual = manual
        self.bricks: list[Any] = []
        self.brick_step: list[int] = []
        for k, step in enumerate(manual.steps, 1):
            for b in step.bricks:
                self.bricks.append(b)
                self.brick_step.append(k)
        self._ids_by_step: dict[int, list[int]] = {}
        for i, k in enumerate(self.brick_step):
            self._ids_by_step.setdefault(k, []).append(i)
        # Centre on the finished model's footprint, so the build does not jump as it grows.
        if self.bricks:
            xs = [c for b in self.bricks for c in (b.x, b.x + b.size[0])]
            ys = [c for b in self.bricks for c in (b.y, b.y + b.size[1])]
            top = max(b.top for b in self.bricks)
            self.centre = np.array([(min(xs) + max(xs)) / 2 * PITCH, 0.0, -(min(ys) + max(ys)) / 2 * PITCH])
            half = max(max(xs) - min(xs), max(ys) - min(ys)) * PITCH / 2
            self.radius = float(math.hypot(half * math.sqrt(2), top * PLATE_H)) or PITCH
        else:
            self.centre, self.radius = np.zeros(3), PITCH * 4
        self._lock = threading.RLock()
        self._meshes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._shapes: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._glb = _LRU(cache_size)
        self._png = _LRU(max(16, cache_size // 4))
        self._diffs = _LRU(cache_size)
        self.stats = {"mesh_builds": 0, "glb_builds": 0, "png_renders": 0}

    # --- views -----------------------------------------------------------------------------
    def view(self, state: dict) -> View:
        """The view of a simulator state (`AssemblySimulator.state()` or the same keys)."""
        n = int(state.get("n_steps", self.manual.n_steps))
        step = max(0, min(int(state.get("current_step", 1)), self.manual.n_steps))
        visible = tuple(i for i, k in enumerate(self.brick_step) if k <= step)
        new = set(self._ids_by_step.get(step, []))
        named = {" ".join(str(h).lower().split()) for h in state.get("highlights", ()) or ()}
        if named:  # HighlightCorrectComponents / object recognition name pieces; light those that are shown
            new |= {i for i in visible if self.bricks[i].name in named or self.bricks[i].piece in named}
        exploded = bool(state.get("exploded", False))
        orient = state.get("orientation") or {}
        zoom = round(float(state.get("zoom", 1.0)), 4)
        poses = tuple(self._pose(i, exploded) for i in visible)
        return View(step, n, visible, tuple(sorted(new)), exploded, zoom, int(orient.get("yaw", 0)) % 360,
                    int(orient.get("pitch", 0)) % 360, poses)

    def view_of_step(self, step: int, **state) -> View:
        return self.view({"current_step": step, "n_steps": self.manual.n_steps, **state})

    def _pose(self, i: int, exploded: bool) -> tuple[float, float, float]:
        b = self.bricks[i]
        t = np.array([b.x * PITCH, b.z * PLATE_H, -b.y * PITCH]) - self.centre
        if exploded:
            sx, sy = b.size
            mid = t + np.array([sx * PITCH / 2, 0.0, -sy * PITCH / 2])
            t = t + np.array([mid[0] * EXPLODE_OUT, b.z * PLATE_H * EXPLODE_UP, mid[2] * EXPLODE_OUT])
        return tuple(round(float(v), 6) for v in t)

    # --- meshes ----------------------------------------------------------------------------
    def _shape(self, sx: int, sy: int, height: int):
        """Box plus studs of a sx x sy footprint, local origin at the brick's min corner (open3d)."""
        key = (sx, sy, height)
        if key in self._shapes:
            return self._shapes[key]
        import open3d as o3d

        h = height * PLATE_H
        mesh = o3d.geometry.TriangleMesh.create_box(width=sx * PITCH, height=h, depth=sy * PITCH)
        mesh.translate((0.0, 0.0, -sy * PITCH))
        # A box from open3d shares corner vertices between faces; split them for flat shading.
        tri = np.asarray(mesh.triangles)
        verts = np.asarray(mesh.vertices)[tri.reshape(-1)]
        box = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts),
                                        o3d.utility.Vector3iVector(np.arange(len(verts)).reshape(-1, 3)))
        box.compute_triangle_normals()
        box_n = np.repeat(np.asarray(box.triangle_normals), 3, axis=0)
        stud_v, stud_n, stud_t = _stud()
        pos, nrm, tri = [np.asarray(box.vertices)], [box_n], [np.asarray(box.triangles)]
        offset = len(pos[0])
        for i in range(sx):
            for j in range(sy):  # one stud mesh from open3d, tiled over the footprint
                pos.append(stud_v + np.array([(i + 0.5) * PITCH, h, -(j + 0.5) * PITCH]))
                nrm.append(stud_n)
                tri.append(stud_t + offset)
                offset += len(stud_v)
        out = (np.concatenate(pos).astype(np.float32), np.concatenate(nrm).astype(np.float32),
               np.concatenate(tri).astype(np.int64))
        self._shapes[key] = out
        self.stats["mesh_builds"] += 1
        return out

    def brick_mesh(self, i: int):
        """(positions, normals, triangles) of brick i in its node's frame."""
        with self._lock:
            if i not in self._meshes:
                b = self.bricks[i]
                self._meshes[i] = self._shape(b.size[0], b.size[1], b.height)
            return self._meshes[i]

    def o3d_mesh(self, i: int, pose: tuple[float, float, float]):
        import open3d as o3d

        pos, nrm, tri = self.brick_mesh(i)
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(pos.astype(np.float64) + np.array(pose)),
                                      o3d.utility.Vector3iVector(tri.astype(np.int32)))
        m.vertex_normals = o3d.utility.Vector3dVector(nrm.astype(np.float64))
        m.paint_uniform_color(colour_rgb(self.bricks[i].colour))
        return m

    # --- GLB ------------------------------------------------------------------------------
    def _materials(self, ids, highlight) -> dict[str, Material]:
        out = {}
        for i in ids:
            c = self.bricks[i].colour
            key = f"{c}+highlight" if i in highlight else c
            out[key] = Material((*colour_rgb(c), 1.0), HIGHLIGHT_EMISSIVE if i in highlight else (0.0, 0.0, 0.0))
        return out

    def _parts(self, view: View, ids) -> list[Part]:
        hl = set(view.highlight)
        pose = dict(zip(view.visible, view.poses))
        parts = []
        for i in ids:
            pos, nrm, tri = self.brick_mesh(i)
            b = self.bricks[i]
            parts.append(Part(f"brick-{i:03d}", pos, nrm, tri, f"{b.colour}+highlight" if i in hl else b.colour,
                              pose[i], {"id": i, "step": self.brick_step[i], "name": b.name,
                                        "highlight": i in hl}))
        return parts

    def _root(self, view: View) -> dict:
        return {"scale": view.zoom, "yaw": view.yaw, "pitch": view.pitch}

    def _glb_of(self, view: View, ids) -> bytes:
        return write_glb(self._parts(view, ids), self._materials(ids, set(view.highlight)),
                         root_scale=view.zoom, root_rotation=_quaternion(view.yaw, view.pitch),
                         root_extras={"manual_id": getattr(self.manual, "manual_id", ""), **view.state()})

    def glb(self, view: View) -> bytes:
        """The whole view as GLB bytes (cached per view)."""
        with self._lock:
            data, built = self._glb.get_or(view.key, lambda: self._glb_of(view, view.visible))
            if built:
                self.stats["glb_builds"] += 1
            return data

    def full_frame(self, view: View) -> dict:
        """Payload of a `scene` frame that replaces the client's scene."""
        return {"kind": "full", "glb": base64.b64encode(self.glb(view)).decode("ascii"), "state": view.state(),
                "highlight": list(view.highlight), "root": self._root(view), "step_text": self.step_text(view.step)}

    def diff_frame(self, old: View, new: View) -> dict:
        """`_diff` cached per (old, new) pair: clients moving through the same steps share it."""
        with self._lock:
            out, _ = self._diffs.get_or((old.key, new.key), lambda: self._diff(old, new))
            return out

    def _diff(self, old: View, new: View) -> dict:
        """Payload that turns a client showing `old` into `new`: a GLB of the bricks that appeared
        (omitted when none did), ids that disappeared, the highlight set, moved bricks, the root."""
        old_pose = dict(zip(old.visible, old.poses))
        new_pose = dict(zip(new.visible, new.poses))
        added = [i for i in new.visible if i not in old_pose]
        out: dict[str, Any] = {"kind": "diff", "state": new.state(), "highlight": list(new.highlight),
                               "remove": [i for i in old.visible if i not in new_pose], "root": self._root(new),
                               "step_text": self.step_text(new.step)}
        moved = {str(i): list(p) for i, p in new_pose.items() if i in old_pose and old_pose[i] != p}
        if moved:
            out["poses"] = moved
        if added:
            data = write_glb(self._parts(new, added), self._materials(added, set(new.highlight)))
            out["glb"] = base64.b64encode(data).decode("ascii")
        return out

    def step_text(self, step: int) -> str:
        if 1 <= step <= self.manual.n_steps:
            return self.manual.steps[step - 1].text
        return ""

    # --- PNG ------------------------------------------------------------------------------
    def png(self, view: View, width: int = 640, height: int = 480) -> bytes:
        """An offscreen render of the view through open3d (cached per view and size)."""
        key = (view.key, width, height)
        with self._lock:
            if key in self._png:
                self._png.move_to_end(key)
                return self._png[key]
        # Meshes first, in this thread: the render thread must not wait on this scene's lock.
        meshes = [self.o3d_mesh(i, pose) for i, pose in zip(view.visible, view.poses)]
        data = _RENDER_POOL.submit(_render_now, self, view, meshes, width, height).result()
        with self._lock:
            self._png.get_or(key, lambda: data)
            self.stats["png_renders"] += 1
        return data


_STUD = None


def _stud():
    """One stud (an open3d cylinder standing on y=0), its vertex normals and triangles."""
    global _STUD
    if _STUD is None:
        import open3d as o3d

        c = o3d.geometry.TriangleMesh.create_cylinder(STUD_R, STUD_H, resolution=STUD_SEGMENTS, split=1)
        c.rotate(o3d.geometry.get_rotation_matrix_from_xyz((-math.pi / 2, 0.0, 0.0)), center=(0, 0, 0))
        c.translate((0.0, STUD_H / 2, 0.0))
        c.compute_vertex_normals()
        _STUD = (np.asarray(c.vertices), np.asarray(c.vertex_normals), np.asarray(c.triangles))
    return _STUD


# --- offscreen rendering -------------------------------------------------------------------------
# Filament's renderer is costly to create (seconds) and bound to the thread that made it (it aborts
# the process if destroyed from another): one per size, created, used and destroyed by one daemon
# thread; an atexit hook has that thread drop them before the interpreter exits.
_RENDERERS: dict[tuple[int, int], Any] = {}


class _RenderThread:
    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lathe-o3d-render", daemon=True)
        self._thread.start()
        atexit.register(self._shutdown)

    def _run(self):
        while True:
            fn, args, fut = self._jobs.get()
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, args, fut))
        return fut

    def _shutdown(self):
        if _RENDERERS:
            try:
                self.submit(_RENDERERS.clear).result(timeout=30)
            except Exception:
                pass


_RENDER_POOL = _RenderThread()


def _render_now(scene: ManualScene, view: View, meshes: list, width: int, height: int) -> bytes:
    import tempfile

    import open3d as o3d
    from open3d.visualization import rendering

    r = _RENDERERS.get((width, height))
    if r is None:
        r = _RENDERERS[(width, height)] = rendering.OffscreenRenderer(width, height)
    r.scene.clear_geometry()
    r.scene.set_background([0.95, 0.95, 0.97, 1.0])
    r.scene.scene.set_sun_light([-0.4, -1.0, -0.6], [1.0, 1.0, 1.0], 90000)
    r.scene.scene.enable_sun_light(True)
    rot = _rotation_matrix(view.yaw, view.pitch) * view.zoom
    hl = set(view.highlight)
    for i, m in zip(view.visible, meshes):
        m.transform(_affine(rot))
        mat = rendering.MaterialRecord()
        mat.shader = "defaultLit"
        mat.base_color = [*colour_rgb(scene.bricks[i].colour), 1.0]
        r.scene.add_geometry(f"b{i}", m, mat)
        if i in hl:  # an outline, since the lit shader has no glow
            box = o3d.geometry.LineSet.create_from_axis_aligned_bounding_box(m.get_axis_aligned_bounding_box())
            box.paint_uniform_color(HIGHLIGHT_LINE)
            line = rendering.MaterialRecord()
            line.shader, line.line_width = "unlitLine", 3.0
            r.scene.add_geometry(f"h{i}", box, line)
    d = scene.radius * 2.6
    eye = np.array([0.8, 0.75, 1.0]) / np.linalg.norm([0.8, 0.75, 1.0]) * d
    r.setup_camera(45.0, [0.0, scene.radius * 0.15, 0.0], eye.tolist(), [0.0, 1.0, 0.0])
    img = r.render_to_image()
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        o3d.io.write_image(f.name, img)
        return open(f.name, "rb").read()


def _affine(m3: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m3
    return out


def write_step_images(manual, out_dir, width: int = 448, height: int = 448) -> list:
    """Render every step to `<out_dir>/<manual_id>/step_<k:03d>.png` (the layout of the synthetic
    manuals' img_url), for VQA pairs; returns the paths."""
    from pathlib import Path

    scene = ManualScene(manual)
    root = Path(out_dir) / str(manual.manual_id)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(1, manual.n_steps + 1):
        p = root / f"step_{k:03d}.png"
        p.write_bytes(scene.png(scene.view_of_step(k), width, height))
        paths.append(p)
    return paths
