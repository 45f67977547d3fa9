"""A minimal glTF 2.0 binary (GLB) writer: one node and one mesh per part, shared materials,
named nodes with `extras`, and a root node that carries the view's scale and rotation.

open3d builds the meshes but writes one merged mesh per file and cannot read its own GLB back,
so the container is written here (json + struct); trimesh reads it in the tests.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class Part:
    name: str
    positions: np.ndarray          # (n, 3) float32, node-local
    normals: np.ndarray            # (n, 3) float32
    indices: np.ndarray            # (m, 3) integer triangles
    material: str                  # key into the materials table
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Material:
    rgba: tuple[float, float, float, float]
    emissive: tuple[float, float, float] = (0.0, 0.0, 0.0)
    roughness: float = 0.55


def write_glb(parts: list[Part], materials: dict[str, Material], root_name: str = "model",
              root_scale: float = 1.0, root_rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0),
              root_extras: dict | None = None) -> bytes:
    """GLB bytes: scene -> root node (scale, rotation quaternion xyzw) -> one child node per part."""
    blob = bytearray()
    views, accessors = [], []

    def add_view(data: bytes, target: int) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": target})
        blob.extend(data)
        return len(views) - 1

    def add_accessor(arr: np.ndarray, ctype: int, kind: str, target: int, bounds: bool = False) -> int:
        acc = {"bufferView": add_view(arr.tobytes(), target), "componentType": ctype,
               "count": int(arr.shape[0]) if kind != "SCALAR" else int(arr.size), "type": kind}
        if bounds:
            acc["min"] = [float(v) for v in arr.min(axis=0)]
            acc["max"] = [float(v) for v in arr.max(axis=0)]
        accessors.append(acc)
        return len(accessors) - 1

    used = list(dict.fromkeys(p.material for p in parts))
    mat_index = {name: i for i, name in enumerate(used)}
    gl_materials = []
    for name in used:
        m = materials[name]
        entry = {"name": name, "pbrMetallicRoughness": {"baseColorFactor": [float(c) for c in m.rgba],
                                                          "metallicFactor": 0.0, "roughnessFactor": m.roughness}}
        if any(m.emissive):
            entry["emissiveFactor"] = [float(c) for c in m.emissive]
        gl_materials.append(entry)

    meshes, nodes = [], [{"name": root_name, "children": [], "scale": [root_scale] * 3,
                          "rotation": [float(q) for q in root_rotation], "extras": root_extras or {}}]
    for p in parts:
        pos = np.ascontiguousarray(p.positions, dtype=np.float32)
        nrm = np.ascontiguousarray(p.normals, dtype=np.float32)
        idx = np.asarray(p.indices).reshape(-1)
        if len(pos) < 65536:
            idx_acc = add_accessor(idx.astype(np.uint16), _USHORT, "SCALAR", _ELEMENT_ARRAY_BUFFER)
        else:
            idx_acc = add_accessor(idx.astype(np.uint32), _UINT, "SCALAR", _ELEMENT_ARRAY_BUFFER)
        prim = {"attributes": {"POSITION": add_accessor(pos, _FLOAT, "VEC3", _ARRAY_BUFFER, bounds=True),
                               "NORMAL": add_accessor(nrm, _FLOAT, "VEC3", _ARRAY_BUFFER)},
                "indices": idx_acc, "material": mat_index[p.material], "mode": 4}
        meshes.append({"name": p.name, "primitives": [prim]})
        nodes.append({"name": p.name, "mesh": len(meshes) - 1,
                      "translation": [float(t) for t in p.translation], "extras": p.extras})
        nodes[0]["children"].append(len(nodes) - 1)
    if not nodes[0]["children"]:
        del nodes[0]["children"]
    while len(blob) % 4:
        blob.append(0)
    doc = {"asset": {"version": "2.0", "generator": "lathe.xr_bridge"}, "scene": 0,
           "scenes": [{"nodes": [0]}], "nodes": nodes}
    if meshes:
        doc.update(meshes=meshes, materials=gl_materials, accessors=accessors, bufferViews=views,
                   buffers=[{"byteLength": len(blob)}])
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js
    if meshes:
        chunks += struct.pack("<II", len(blob), 0x004E4942) + bytes(blob)
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks
