"""Binary glTF 2.0 (``.glb``) scenes: the fused coloured point cloud and camera frustums.

Written with numpy alone (no mesh library), read by trimesh, Blender, three.js-based web
viewers and Gradio's ``Model3D``.

Scene layout (node names are what readers such as ``trimesh.load`` report):

* one root node ``opencv_to_gltf`` whose matrix is ``diag(1, -1, -1, 1)``. Everything below
  it is stored in **our world frame** (the first predicted camera, OpenCV axes: x right,
  y down, z forward), so the stored arrays equal the in-memory ones; the root turns that
  into glTF's y-up, camera-looking-down--z view, so the scene opens upright;
* ``points``: a ``POINTS`` primitive, ``POSITION`` float32 ``(N, 3)`` and ``COLOR_0``
  uint8 RGBA ``(N, 4)`` (alpha 255), unlit (``KHR_materials_unlit``);
* one node per camera and per frustum set, ``<set>_camera_<t:03d>`` (``predicted``,
  ``requested``, ``ground_truth``): a ``LINES`` primitive of 16 vertices (8 segments:
  centre to the four image corners, then the image rectangle) at depth
  ``frustum_depth`` in front of the camera, in world coordinates, one colour per set.

The image corners are the pixel-grid corners ``(0, 0), (W, 0), (W, H), (0, H)`` unprojected
with the pixel intrinsics (corner pixel convention, :mod:`fantasyworld.geometry.cameras`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fantasyworld.geometry.cameras import invert_se3

__all__ = ["DEFAULT_GLB_MAX_POINTS", "FRUSTUM_COLORS", "FrustumSet", "frustum_depth", "frustum_lines", "write_glb"]

#: Size cap of the point cloud written to a GLB (a seeded uniform subsample above it).
DEFAULT_GLB_MAX_POINTS = 100_000
#: RGB colour per frustum set name.
FRUSTUM_COLORS = {"predicted": (214, 39, 40), "requested": (31, 119, 180), "ground_truth": (44, 160, 44)}
#: ``diag(1, -1, -1)``: OpenCV camera/world axes -> glTF (y up, cameras look down -z).
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0, 1.0])

_GLB_MAGIC, _GLB_VERSION = 0x46546C67, 2  # b"glTF"
_CHUNK_JSON, _CHUNK_BIN = 0x4E4F534A, 0x004E4942  # b"JSON", b"BIN\0"
_FLOAT, _UBYTE = 5126, 5121
_ARRAY_BUFFER = 34962
_MODE_POINTS, _MODE_LINES = 0, 1


@dataclass
class FrustumSet:
    """One camera trajectory drawn as frustums.

    Attributes:
        name: set name (``predicted``, ``requested``, ``ground_truth``), the node prefix.
        w2c: ``(T, 4, 4)`` world-to-camera, OpenCV axes, in the scene's world frame.
        intrinsics: ``(T, 3, 3)`` pixel intrinsics at ``height x width``.
        height, width: image size in pixels.
        color: RGB uint8 triple (default: :data:`FRUSTUM_COLORS` of ``name``, else grey).
    """

    name: str
    w2c: np.ndarray
    intrinsics: np.ndarray
    height: int
    width: int
    color: tuple[int, int, int] | None = None

    def rgb(self) -> tuple[int, int, int]:
        return self.color or FRUSTUM_COLORS.get(self.name, (128, 128, 128))


def frustum_depth(xyz: np.ndarray | None, w2c: np.ndarray) -> float:
    """A frustum depth that fits the scene: 0.1 x the median distance of the points to the
    first camera centre, else 0.1 x the camera path's extent, else 0.1 (scene units)."""
    centres = invert_se3(np.asarray(w2c, dtype=np.float64))[:, :3, 3]
    if xyz is not None and len(xyz):
        dist = np.linalg.norm(np.asarray(xyz, dtype=np.float64) - centres[0], axis=-1)
        dist = dist[np.isfinite(dist)]
        if len(dist) and np.median(dist) > 0:
            return 0.1 * float(np.median(dist))
    extent = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 0.0
    return 0.1 * extent if extent > 0 else 0.1


def frustum_lines(w2c: np.ndarray, intrinsics: np.ndarray, height: int, width: int, depth: float) -> np.ndarray:
    """Frustum wireframes ``(T, 16, 3)`` float32 in world coordinates: 8 segments per camera
    (vertex pairs): centre to each image corner at z-depth ``depth``, then the four image edges.

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera (OpenCV axes).
        intrinsics: ``(T, 3, 3)`` pixel intrinsics at ``height x width``.
    """
    w2c = np.asarray(w2c, dtype=np.float64)
    k = np.asarray(intrinsics, dtype=np.float64)
    uv = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])  # (4, 2) grid corners
    x = (uv[None, :, 0] - k[:, None, 0, 2]) / k[:, None, 0, 0] * depth  # (T, 4)
    y = (uv[None, :, 1] - k[:, None, 1, 2]) / k[:, None, 1, 1] * depth
    corners = np.stack([x, y, np.full_like(x, depth)], -1)  # (T, 4, 3) camera coordinates
    c2w = invert_se3(w2c)
    corners = np.einsum("tij,tkj->tki", c2w[:, :3, :3], corners) + c2w[:, None, :3, 3]  # (T, 4, 3) world
    centre = np.broadcast_to(c2w[:, None, :3, 3], corners.shape)
    nxt = np.roll(corners, -1, axis=1)
    rays = np.stack([centre, corners], 2)  # (T, 4, 2, 3)
    edges = np.stack([corners, nxt], 2)  # (T, 4, 2, 3)
    return np.concatenate([rays, edges], 1).reshape(len(w2c), 16, 3).astype(np.float32)


class _Builder:
    """Accumulates buffer views, accessors, meshes and nodes of one GLB."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []
        self.meshes: list[dict] = []
        self.nodes: list[dict] = []
        self.materials: list[dict] = []

    def _view(self, data: np.ndarray) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        raw = np.ascontiguousarray(data).tobytes()
        self.views.append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(raw),
                           "target": _ARRAY_BUFFER})
        self.blob.extend(raw)
        return len(self.views) - 1

    def accessor(self, data: np.ndarray, normalized: bool = False) -> int:
        """An accessor over ``data`` ``(N, C)`` float32 or uint8 (C = 3 -> VEC3, 4 -> VEC4)."""
        ctype = _FLOAT if data.dtype == np.float32 else _UBYTE
        acc = {"bufferView": self._view(data), "componentType": ctype, "count": int(len(data)),
               "type": f"VEC{data.shape[1]}"}
        if normalized:
            acc["normalized"] = True
        if ctype == _FLOAT:  # POSITION needs bounds
            acc["min"] = data.min(0).astype(float).tolist() if len(data) else [0.0] * data.shape[1]
            acc["max"] = data.max(0).astype(float).tolist() if len(data) else [0.0] * data.shape[1]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def node(self, name: str, xyz: np.ndarray, rgba: np.ndarray, mode: int, material: int) -> int:
        attrs = {"POSITION": self.accessor(np.asarray(xyz, dtype=np.float32)),
                 "COLOR_0": self.accessor(np.asarray(rgba, dtype=np.uint8), normalized=True)}
        self.meshes.append({"name": name, "primitives": [{"attributes": attrs, "mode": mode, "material": material}]})
        self.nodes.append({"name": name, "mesh": len(self.meshes) - 1})
        return len(self.nodes) - 1

    def material(self, name: str) -> int:
        self.materials.append({"name": name, "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                                                                      "metallicFactor": 0.0, "roughnessFactor": 1.0},
                               "extensions": {"KHR_materials_unlit": {}}})
        return len(self.materials) - 1

    def write(self, path: Path, children: list[int]) -> None:
        root = {"name": "opencv_to_gltf", "matrix": OPENCV_TO_GLTF.T.reshape(-1).tolist(), "children": children}
        self.nodes.append(root)
        doc = {
            "asset": {"version": "2.0", "generator": "fantasyworld"},
            "extensionsUsed": ["KHR_materials_unlit"],
            "scene": 0, "scenes": [{"name": "fantasyworld", "nodes": [len(self.nodes) - 1]}],
            "nodes": self.nodes, "meshes": self.meshes, "materials": self.materials,
            "accessors": self.accessors, "bufferViews": self.views,
            "buffers": [{"byteLength": len(self.blob)}],
        }
        js = json.dumps(doc, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        blob = bytes(self.blob) + b"\0" * (-len(self.blob) % 4)
        total = 12 + 8 + len(js) + 8 + len(blob)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(struct.pack("<III", _GLB_MAGIC, _GLB_VERSION, total))
            f.write(struct.pack("<II", len(js), _CHUNK_JSON) + js)
            f.write(struct.pack("<II", len(blob), _CHUNK_BIN) + blob)


def write_glb(
    path: str | Path,
    xyz: np.ndarray | None,
    rgb: np.ndarray | None,
    frustums: Sequence[FrustumSet] = (),
    *,
    max_points: int = DEFAULT_GLB_MAX_POINTS,
    seed: int = 0,
    depth: float | None = None,
) -> dict[str, int]:
    """Write the scene (module docstring) to ``path``.

    Args:
        xyz: ``(N, 3)`` points in the world frame (OpenCV axes), or None for cameras only.
        rgb: ``(N, 3)`` uint8 colours.
        frustums: camera sets to draw.
        max_points: above this a seeded uniform subsample (numpy ``default_rng(seed)``,
            kept in input order) is written.
        depth: frustum depth in scene units (default :func:`frustum_depth` of the points
            and the first set's cameras).

    Returns:
        ``{"points": written point count, "<set>": frustum count per set}``.
    """
    b = _Builder()
    children: list[int] = []
    info: dict[str, int] = {"points": 0}
    if xyz is not None and len(xyz):
        xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(xyz) > max_points:
            keep = np.sort(np.random.default_rng(seed).choice(len(xyz), size=max_points, replace=False))
            xyz, rgb = xyz[keep], rgb[keep]
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
        children.append(b.node("points", xyz, rgba, _MODE_POINTS, b.material("points")))
        info["points"] = len(xyz)
    if frustums:
        if depth is None:
            depth = frustum_depth(xyz, frustums[0].w2c)
        mat = b.material("cameras")
        for fs in frustums:
            lines = frustum_lines(fs.w2c, fs.intrinsics, fs.height, fs.width, depth)
            rgba = np.tile(np.array([*fs.rgb(), 255], np.uint8), (16, 1))
            for t, seg in enumerate(lines):
                children.append(b.node(f"{fs.name}_camera_{t:03d}", seg, rgba, _MODE_LINES, mat))
            info[fs.name] = len(lines)
    b.write(Path(path), children)
    return info
