"""Fused coloured point clouds: confidence filtering, size cap, vectorised PLY I/O.

World frame: the predicted cameras' world, i.e. the **first predicted camera's frame**
(OpenCV axes: x right, y down, z forward), the frame the model's point maps and
``w2c`` use. Units: the model's normalised scene scale (mean point distance ~1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from fantasyworld.geometry.cameras import unproject_pixels

#: Default cap on the number of fused points (PLY and COLMAP points3D).
DEFAULT_MAX_POINTS = 200_000
#: Default confidence filter: drop the lowest 50% (VGGT's demo default). The heads'
#: confidences (``1 + exp``) have no absolute scale, so a percentile is used.
DEFAULT_CONF_PERCENTILE = 50.0
CLOUD_SOURCES = ("depth", "points")


@dataclass
class PointCloud:
    """``xyz`` ``(N, 3)`` float32, ``rgb`` ``(N, 3)`` uint8, ``conf`` ``(N,)`` float32 and
    ``index`` ``(N, 3)`` int64 ``(t, v, u)``: the frame, row and column each point came from."""

    xyz: np.ndarray
    rgb: np.ndarray
    conf: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def fuse_point_cloud(
    video: np.ndarray,
    conf: np.ndarray,
    *,
    world_points: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    w2c: np.ndarray | None = None,
    intrinsics: np.ndarray | None = None,
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
) -> PointCloud:
    """Fuse every frame's pixels into one coloured cloud.

    Either ``world_points`` ``(T, H, W, 3)`` (the point head) or ``depth`` ``(T, H, W)``
    z-depth with ``w2c`` ``(T, 4, 4)`` and pixel ``intrinsics`` ``(T, 3, 3)`` (the kept pixels
    unprojected by :func:`~fantasyworld.geometry.cameras.unproject_pixels`) gives the positions.

    Args:
        video: ``(T, H, W, 3)`` uint8 frames (colours).
        conf: ``(T, H, W)`` confidence of the chosen source.
        conf_percentile: keep pixels whose confidence is at or above this percentile of
            all finite confidences (0 keeps everything finite).
        max_points: cap; above it a seeded uniform subsample (without replacement, in
            pixel order) is kept.
        seed: subsampling seed (numpy ``default_rng``).
    """
    t, h, w = conf.shape
    conf = np.asarray(conf, dtype=np.float32)
    finite = np.isfinite(conf)
    if world_points is not None:
        finite &= np.isfinite(world_points).all(-1)
    else:
        if depth is None or w2c is None or intrinsics is None:
            raise ValueError("give world_points, or depth with w2c and intrinsics")
        finite &= np.isfinite(depth) & (depth > 0)
    keep = finite
    if conf_percentile > 0 and finite.any():
        thr = np.percentile(conf[finite], conf_percentile)
        keep = finite & (conf >= thr)
    flat = np.flatnonzero(keep.reshape(-1))
    if len(flat) > max_points:
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(flat, size=max_points, replace=False))
    ti, vi, ui = np.unravel_index(flat, (t, h, w))
    if world_points is not None:
        xyz = np.asarray(world_points, dtype=np.float64)[ti, vi, ui]
    else:
        xyz = unproject_pixels(ti, vi, ui, depth, w2c, intrinsics)
    return PointCloud(
        xyz=xyz.astype(np.float32),
        rgb=np.asarray(video)[ti, vi, ui].astype(np.uint8),
        conf=conf[ti, vi, ui],
        index=np.stack([ti, vi, ui], -1).astype(np.int64),
    )


def generation_cloud(video: np.ndarray, geo: dict[str, np.ndarray], w2c: np.ndarray | None,
                     intrinsics: np.ndarray | None, source: str, conf_percentile: float, max_points: int,
                     seed: int) -> PointCloud | None:
    """The coloured cloud of one generation: ``source="depth"`` unprojects the depth with the
    predicted cameras (w2c ``(T, 4, 4)``, K ``(T, 3, 3)``), ``"points"`` takes the point maps;
    None when the heads it needs did not run. ``geo`` holds the head outputs of one sample as
    numpy (``depth``/``depth_conf`` ``(T, H, W)``, ``world_points`` ``(T, H, W, 3)`` ...)."""
    if source == "depth" and "depth" in geo and w2c is not None:
        return fuse_point_cloud(video, geo["depth_conf"], depth=geo["depth"], w2c=w2c, intrinsics=intrinsics,
                                conf_percentile=conf_percentile, max_points=max_points, seed=seed)
    if source == "points" and "world_points" in geo:
        return fuse_point_cloud(video, geo["world_points_conf"], world_points=geo["world_points"],
                                conf_percentile=conf_percentile, max_points=max_points, seed=seed)
    return None


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray | None = None) -> None:
    """Binary little-endian PLY with one ``vertex`` element: ``x y z`` float32,
    ``red green blue`` uint8 and (if given) ``confidence`` float32. Written in one
    vectorised call (structured array), not point by point."""
    n = len(xyz)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if conf is not None:
        fields.append(("confidence", "f4"))
    vertex = np.empty(n, dtype=fields)
    xyz = np.asarray(xyz, dtype=np.float32).reshape(n, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(n, 3)
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if conf is not None:
        vertex["confidence"] = np.asarray(conf, dtype=np.float32).reshape(n)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(xyz (N, 3) float32, rgb (N, 3) uint8, confidence (N,) or None)`` from a PLY."""
    vertex = PlyData.read(str(path))["vertex"].data
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1).astype(np.float32)
    rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1).astype(np.uint8)
    conf = np.asarray(vertex["confidence"], dtype=np.float32) if "confidence" in vertex.dtype.names else None
    return xyz, rgb, conf
