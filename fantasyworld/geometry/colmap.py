"""COLMAP text models: ``cameras.txt``, ``images.txt``, ``points3D.txt``.

Conventions of the files: ``images.txt`` stores ``QW QX QY QZ TX TY TZ``, the
**world-to-camera** rotation as a scalar-first quaternion and the translation, OpenCV axes;
``cameras.txt`` stores pixel intrinsics of the listed camera models. Read into and written
from the internal convention of :mod:`fantasyworld.geometry.cameras`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fantasyworld.errors import CAMERA_COLUMNS, DataError
from fantasyworld.geometry.camera_sequence import CameraSequence, read_text
from fantasyworld.geometry.cameras import make_intrinsics, resize_intrinsics
from fantasyworld.geometry.rotation import mat_to_quat, quat_to_mat, wxyz_to_xyzw, xyzw_to_wxyz

__all__ = ["ColmapCamera", "ColmapImage", "ColmapModel", "read_colmap_text", "write_colmap_text"]

_COLMAP_PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8,
                  "FULL_OPENCV": 12, "SIMPLE_RADIAL_FISHEYE": 4, "RADIAL_FISHEYE": 5, "OPENCV_FISHEYE": 8}


_SINGLE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def K(self) -> np.ndarray:
        """Pinhole part as ``(3, 3)`` pixel intrinsics (COLMAP already uses the corner
        convention: the centre of the top-left pixel is ``(0.5, 0.5)``). Distortion
        parameters are ignored."""
        p = self.params
        if self.model in _SINGLE_FOCAL:
            return make_intrinsics(p[0], p[0], p[1], p[2])
        return make_intrinsics(p[0], p[1], p[2], p[3])


@dataclass
class ColmapImage:
    image_id: int
    qvec_wxyz: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray  # (N, 2) keypoints, corner convention
    point3d_ids: np.ndarray  # (N,) int64, -1 for none

    def w2c(self) -> np.ndarray:
        """``(4, 4)`` world-to-camera (COLMAP stores w2c with OpenCV axes)."""
        out = np.eye(4)
        out[:3, :3] = quat_to_mat(wxyz_to_xyzw(torch.from_numpy(self.qvec_wxyz))).numpy()
        out[:3, 3] = self.tvec
        return out


@dataclass
class ColmapModel:
    """A COLMAP text model: cameras by id, images by id, points3D by id
    (``xyz (3,)``, ``rgb (3,) uint8``, ``error``, ``track`` ``(M, 2)`` image_id/point2D_idx)."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points3d: dict[int, dict]

    def to_sequence(self, height: int | None = None, width: int | None = None) -> CameraSequence:
        """Images sorted by name -> :class:`CameraSequence` (w2c, pixel K, names).

        With ``height, width`` the intrinsics are rescaled from each camera's own
        resolution to ``(height, width)``; otherwise they stay at the camera's resolution.
        """
        imgs = sorted(self.images.values(), key=lambda im: im.name)
        w2c = np.stack([im.w2c() for im in imgs])
        ks = []
        for im in imgs:
            cam = self.cameras[im.camera_id]
            k = cam.K()
            if height is not None and width is not None:
                k = resize_intrinsics(k, (cam.height, cam.width), (height, width))
            ks.append(k)
        k = np.stack(ks)
        return CameraSequence(w2c=w2c, K=k, names=[im.name for im in imgs])


def _colmap_lines(path: Path) -> list[str]:
    return [ln.rstrip("\n") for ln in read_text(path).splitlines() if not ln.startswith("#")]


def read_colmap_text(model_dir: str | Path) -> ColmapModel:
    """Read ``cameras.txt``, ``images.txt`` and (if present) ``points3D.txt``.

    File convention: ``images.txt`` holds ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``
    (world-to-camera, scalar-first quaternion, OpenCV axes) followed by a line of
    ``X Y POINT3D_ID`` triplets; pixel coordinates use the corner convention.
    """
    model_dir = Path(model_dir)
    cameras: dict[int, ColmapCamera] = {}
    cam_path = model_dir / "cameras.txt"
    for ln in _colmap_lines(cam_path):
        parts = ln.split()
        if not parts:
            continue
        model = parts[1]
        params = np.asarray([float(x) for x in parts[4:]])
        expected = _COLMAP_PARAMS.get(model)
        if expected is not None and len(params) != expected:
            raise DataError(cam_path, CAMERA_COLUMNS, f"camera {parts[0]}: {model} needs {expected} params")
        cameras[int(parts[0])] = ColmapCamera(int(parts[0]), model, int(parts[2]), int(parts[3]), params)
    images: dict[int, ColmapImage] = {}
    img_path = model_dir / "images.txt"
    lines = _colmap_lines(img_path)
    i = 0
    while i < len(lines):
        parts = lines[i].split()
        if not parts:
            i += 1
            continue
        if len(parts) < 10:
            raise DataError(img_path, CAMERA_COLUMNS, f"image line has {len(parts)} fields, expected 10")
        pts = lines[i + 1].split() if i + 1 < len(lines) else []
        arr = np.asarray([float(x) for x in pts]).reshape(-1, 3) if pts else np.zeros((0, 3))
        image = ColmapImage(
            image_id=int(parts[0]),
            qvec_wxyz=np.asarray([float(x) for x in parts[1:5]]),
            tvec=np.asarray([float(x) for x in parts[5:8]]),
            camera_id=int(parts[8]),
            name=" ".join(parts[9:]),
            xys=arr[:, :2],
            point3d_ids=arr[:, 2].astype(np.int64),
        )
        images[image.image_id] = image
        i += 2
    points: dict[int, dict] = {}
    pts_path = model_dir / "points3D.txt"
    if pts_path.exists():
        for ln in _colmap_lines(pts_path):
            parts = ln.split()
            if not parts:
                continue
            track = np.asarray([int(x) for x in parts[8:]], dtype=np.int64).reshape(-1, 2)
            points[int(parts[0])] = {
                "xyz": np.asarray([float(x) for x in parts[1:4]]),
                "rgb": np.asarray([int(x) for x in parts[4:7]], dtype=np.uint8),
                "error": float(parts[7]),
                "track": track,
            }
    return ColmapModel(cameras, images, points)


_COLMAP_CAMERAS_HEADER = ("# Camera list with one line of data per camera:\n"
                          "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                          "# Number of cameras: {n}\n")
_COLMAP_IMAGES_HEADER = ("# Image list with two lines of data per image:\n"
                         "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                         "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                         "# Number of images: {n}, mean observations per image: 0\n")
_COLMAP_POINTS_HEADER = ("# 3D point list with one line of data per point:\n"
                         "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                         "# Number of points: {n}, mean track length: 0\n")


def write_colmap_text(
    model_dir: str | Path,
    w2c: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    names: list[str] | None = None,
    points: np.ndarray | None = None,
    colors: np.ndarray | None = None,
) -> None:
    """Write a COLMAP text model (one PINHOLE camera per frame, empty 2D tracks).

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera, OpenCV axes. K: ``(T, 3, 3)`` or ``(3, 3)`` pixel
            intrinsics (corner convention, which COLMAP shares); camera ``i+1`` belongs to
            image ``i+1``.
        names: image names (default ``frame_0000.png`` ...).
        points, colors: optional ``(N, 3)`` world points and uint8 colours for points3D.txt
            (point ids ``1..N``, reprojection error 0, empty tracks; grey without colours).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    w2c = np.asarray(w2c, dtype=np.float64)
    t = len(w2c)
    k = np.broadcast_to(np.asarray(K, dtype=np.float64), (t, 3, 3))
    names = names or [f"frame_{i:04d}.png" for i in range(t)]
    quat = xyzw_to_wxyz(mat_to_quat(torch.from_numpy(w2c[:, :3, :3]))).numpy()  # (T, 4) wxyz, qw >= 0
    cams = [f"{i + 1} PINHOLE {width} {height} {k[i, 0, 0]:.12g} {k[i, 1, 1]:.12g} {k[i, 0, 2]:.12g} "
            f"{k[i, 1, 2]:.12g}\n" for i in range(t)]
    (model_dir / "cameras.txt").write_text(_COLMAP_CAMERAS_HEADER.format(n=t) + "".join(cams))
    imgs = []
    for i in range(t):
        vals = " ".join(f"{v:.12g}" for v in (*quat[i], *w2c[i, :3, 3]))
        imgs.append(f"{i + 1} {vals} {i + 1} {names[i]}\n\n")  # empty POINTS2D line
    (model_dir / "images.txt").write_text(_COLMAP_IMAGES_HEADER.format(n=t) + "".join(imgs))
    pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = 0 if pts is None else len(pts)
    with open(model_dir / "points3D.txt", "w") as fh:
        fh.write(_COLMAP_POINTS_HEADER.format(n=n))
        if n:
            cols = np.full((n, 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8).reshape(-1, 3)
            ids = np.arange(1, n + 1, dtype=np.float64)
            rows = np.column_stack([ids, pts, cols.astype(np.float64), np.zeros(n)])
            np.savetxt(fh, rows, fmt=["%d", "%.9g", "%.9g", "%.9g", "%d", "%d", "%d", "%g"])  # vectorised
