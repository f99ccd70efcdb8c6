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
from PIL import Image

from fantasyworld.geometry.camera_io import write_colmap_text


def frame_names(num_frames: int) -> list[str]:
    """Image names ``frame_0000.png`` ... used in ``images.txt`` and ``images/``."""
    return [f"frame_{i:04d}.png" for i in range(num_frames)]


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
    write_colmap_text(model_dir, w2c, intrinsics, h, w, names, points=xyz, colors=rgb)
    return model_dir
