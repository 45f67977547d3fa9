"""The scene of each manual step: GLB (read back with trimesh) with the right bricks and the step's
new bricks highlighted, diffs that rebuild the next step and are much smaller, caching, explode /
zoom / rotation, and an offscreen PNG through open3d."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("open3d")


@pytest.fixture(scope="module")
def scene():
    from lathe.data.lego import generate_manual
    from lathe.xr_bridge.scene import ManualScene

    return ManualScene(generate_manual(3, 20))


def _load(glb: bytes):
    return trimesh.load(io.BytesIO(glb), file_type="glb")


def _ids(tm_scene) -> set[int]:
    return {int(name.split("-")[1]) for name in tm_scene.geometry}


def _highlighted(tm_scene) -> set[int]:
    out = set()
    for name, g in tm_scene.geometry.items():
        emissive = getattr(g.visual.material, "emissiveFactor", None)
        if emissive is not None and np.asarray(emissive).sum() > 0:
            out.add(int(name.split("-")[1]))
    return out


def test_each_step_glb_has_its_bricks_and_highlights_the_new_ones(scene):
    manual = scene.manual
    for k in range(1, manual.n_steps + 1):
        tm = _load(scene.glb(scene.view_of_step(k)))
        expected = sum(len(s.bricks) for s in manual.steps[:k])
        assert len(tm.geometry) == expected, f"step {k}"
        new = {i for i, step in enumerate(scene.brick_step) if step == k}
        assert _highlighted(tm) == new, f"step {k}"
        # the highlighted bricks are exactly the step's bricks (same pieces and colours)
        names = sorted(scene.bricks[i].name for i in new)
        assert names == sorted(b.name for b in manual.steps[k - 1].bricks)
    # studs: a 2x4 brick's mesh has more triangles than a 1x1's, and bricks stack (later ones higher)
    tm = _load(scene.glb(scene.view_of_step(manual.n_steps)))
    assert tm.bounds[1][1] > tm.bounds[0][1]


def test_geometry_matches_the_lattice(scene):
    from lathe.xr_bridge.scene import PITCH, PLATE_H, STUD_H

    i = 0
    b = scene.bricks[i]
    pos, _, tri = scene.brick_mesh(i)
    sx, sy = b.size
    size = pos.max(axis=0) - pos.min(axis=0)
    assert size[0] == pytest.approx(sx * PITCH, abs=1e-6)
    assert size[2] == pytest.approx(sy * PITCH, abs=1e-6)
    assert size[1] == pytest.approx(b.height * PLATE_H + STUD_H, abs=1e-6)   # body plus studs on top
    one_stud = scene._shape(1, 1, b.height)[2].shape[0] - 12                   # a box is 12 triangles
    assert tri.shape[0] == 12 + sx * sy * one_stud


def test_diff_rebuilds_next_step_and_is_10x_smaller_at_step_20(scene):
    import json

    v19, v20 = scene.view_of_step(19), scene.view_of_step(20)
    diff = scene.diff_frame(v19, v20)
    full = scene.full_frame(v20)
    added = _ids(_load(base64.b64decode(diff["glb"]))) if "glb" in diff else set()
    assert (set(v19.visible) - set(diff["remove"])) | added == set(v20.visible)
    assert set(diff["highlight"]) == set(v20.highlight)
    assert len(json.dumps(full)) >= 10 * len(json.dumps(diff))
    back = scene.diff_frame(v20, v19)  # going back removes the step's bricks and adds none
    assert set(back["remove"]) == set(v20.visible) - set(v19.visible) and "glb" not in back


def test_explode_zoom_rotate_change_the_view(scene):
    base = scene.view_of_step(10)
    exploded = scene.view_of_step(10, exploded=True)
    assert exploded.poses != base.poses
    d = scene.diff_frame(base, exploded)
    assert d["poses"] and not d["remove"] and "glb" not in d
    tm = _load(scene.glb(exploded))
    assert tm.bounds[1][1] - tm.bounds[0][1] > _load(scene.glb(base)).bounds[1][1] - _load(scene.glb(base)).bounds[0][1]
    zoomed = scene.view_of_step(10, zoom=1.5625, orientation={"yaw": 90, "pitch": 0})
    frame = scene.full_frame(zoomed)
    assert frame["root"] == {"scale": 1.5625, "yaw": 90, "pitch": 0}
    extent = lambda t: float(np.ptp(t.bounds, axis=0).max())  # noqa: E731
    assert extent(_load(scene.glb(zoomed))) == pytest.approx(1.5625 * extent(_load(scene.glb(base))), rel=1e-3)


def test_step_change_costs_no_rebuild(scene):
    for k in (4, 5, 6):
        scene.glb(scene.view_of_step(k))
    before = dict(scene.stats)
    for k in (6, 5, 4, 5):
        scene.glb(scene.view_of_step(k))
    assert scene.stats["mesh_builds"] == before["mesh_builds"]
    assert scene.stats["glb_builds"] == before["glb_builds"]


def test_simulator_state_drives_the_view():
    from lathe.data.lego import generate_manual
    from lathe.methods.lego import AssemblySimulator
    from lathe.xr_bridge.scene import ManualScene

    manual = generate_manual(1, 6)
    sim = AssemblySimulator(manual=manual)
    scene = ManualScene(manual)
    sim.call("NextStep")
    sim.call("Explode")
    sim.call("Enlarge")
    v = scene.view(sim.state())
    assert v.step == 2 and v.exploded and v.zoom == pytest.approx(1.25)
    assert set(v.highlight) == {i for i, s in enumerate(scene.brick_step) if s == 2}


def test_offscreen_png(scene):
    from PIL import Image

    png = scene.png(scene.view_of_step(3), 160, 120)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert img.shape == (120, 160, 3)
    background = np.array([242, 242, 247])
    assert (np.abs(img - background).sum(axis=2) > 30).mean() > 0.02   # something was drawn
    orange = (img[..., 0] > 200) & (img[..., 1] > 60) & (img[..., 1] < 170) & (img[..., 2] < 80)
    assert orange.sum() > 0                                           # the highlight outline
    again = scene.png(scene.view_of_step(3), 160, 120)
    assert again == png and scene.stats["png_renders"] == 1           # cached
