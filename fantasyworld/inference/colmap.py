"""COLMAP text model of a generation, in the layout 3D Gaussian splatting tools read.

Layout (``gaussian-splatting``'s ``train.py -s <root>``, nerfstudio's ``colmap`` format)::

    <root>/images/frame_0000.png ...          the generated frames
    <root>/sparse/0/cameras.txt               one PINHOLE camera per frame
    <root>/sparse/0/images.txt                two lines per image (the second, the 2D
                                              points, is left empty)
    <root>/sparse/0/points3D.txt              the fused coloured cloud, empty tracks

Conventions (COLMAP's documented text format, https://colmap.github.io/format.html):
``images.txt`` stores ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` with the
**world-to-camera** rotation as a scalar-first unit quaternion and translation, OpenCV
axes; ``cameras.txt`` ``CAMERA_ID PINHOLE WIDTH HEIGHT fx fy cx cy`` in pixels with the
corner pixel convention (the centre of the top-left pixel is (0.5, 0.5)), which is also
ours, so intrinsics are written unchanged. PINHOLE is the model 3DGS accepts (undistorted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasyworld.geometry.rotation import mat_to_quat, xyzw_to_wxyz

_CAMERAS_HEADER = ("# Camera list with one line of data per camera:\n"
                   "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                   "# Number of cameras: {n}\n")
_IMAGES_HEADER = ("# Image list with two lines of data per image:\n"
                  "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                  "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                  "# Number of images: {n}, mean observations per image: 0\n")
_POINTS_HEADER = ("# 3D point list with one line of data per point:\n"
                  "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                  "# Number of points: {n}, mean track length: 0\n")


def frame_names(num_frames: int) -> list[str]:
    """Image names ``frame_0000.png`` ... used in ``images.txt`` and ``images/``."""
    return [f"frame_{i:04d}.png" for i in range(num_frames)]


def write_colmap_model(
    model_dir: str | Path,
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    height: int,
    width: int,
    names: list[str] | None = None,
    xyz: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
) -> None:
    """Write ``cameras.txt``, ``images.txt`` and ``points3D.txt`` into ``model_dir``.

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera, OpenCV axes.
        intrinsics: ``(T, 3, 3)`` pixel intrinsics at ``(height, width)``; camera ``i+1``
            belongs to image ``i+1``.
        names: image names (default :func:`frame_names`).
        xyz, rgb: ``(N, 3)`` float world points and uint8 colours (point ids ``1..N``,
            reprojection error 0, empty tracks).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    w2c = np.asarray(w2c, dtype=np.float64)
    k = np.asarray(intrinsics, dtype=np.float64)
    t = len(w2c)
    names = names or frame_names(t)
    quat = xyzw_to_wxyz(mat_to_quat(torch.from_numpy(w2c[:, :3, :3]))).numpy()  # (T, 4) wxyz, qw >= 0
    cams = [f"{i + 1} PINHOLE {width} {height} {k[i, 0, 0]:.10g} {k[i, 1, 1]:.10g} {k[i, 0, 2]:.10g} "
            f"{k[i, 1, 2]:.10g}\n" for i in range(t)]
    (model_dir / "cameras.txt").write_text(_CAMERAS_HEADER.format(n=t) + "".join(cams))
    imgs = []
    for i in range(t):
        vals = " ".join(f"{v:.12g}" for v in (*quat[i], *w2c[i, :3, 3]))
        imgs.append(f"{i + 1} {vals} {i + 1} {names[i]}\n\n")  # empty POINTS2D line
    (model_dir / "images.txt").write_text(_IMAGES_HEADER.format(n=t) + "".join(imgs))
    n = 0 if xyz is None else len(xyz)
    with open(model_dir / "points3D.txt", "w") as fh:
        fh.write(_POINTS_HEADER.format(n=n))
        if n:
            cols = np.zeros((n, 3), np.uint8) + 128 if rgb is None else np.asarray(rgb, dtype=np.uint8)
            ids = np.arange(1, n + 1, dtype=np.float64)
            flat = np.column_stack([ids, np.asarray(xyz, dtype=np.float64), cols.astype(np.float64), np.zeros(n)])
            np.savetxt(fh, flat, fmt=["%d", "%.9g", "%.9g", "%.9g", "%d", "%d", "%d", "%g"])


def write_gaussian_splatting_scene(
    root: str | Path,
    video: np.ndarray,
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    xyz: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
) -> Path:
    """Write ``root/images/*.png`` (``video`` ``(T, H, W, 3)`` uint8) and the text model in
    ``root/sparse/0``; returns the model directory."""
    root = Path(root)
    t, h, w = video.shape[:3]
    names = frame_names(t)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, frame in zip(names, video):
        Image.fromarray(np.ascontiguousarray(frame)).save(root / "images" / name)
    model_dir = root / "sparse" / "0"
    write_colmap_model(model_dir, w2c, intrinsics, h, w, names, xyz, rgb)
    return model_dir
