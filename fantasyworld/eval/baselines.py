"""Trivial baselines that every geometry prediction must beat.

All three get the same alignment as the model's predictions in
:func:`fantasyworld.eval.evaluate.score_clip`, so they are as strong as an information-free
guess can be:

``constant_depth``
    The same depth at every pixel of every frame. Under the per-sequence median alignment
    this becomes the ground-truth median everywhere; under least-squares scale and shift,
    the ground-truth mean.
``identity_poses``
    Every camera at the identity (no motion, no rotation): its pairwise rotation error is
    exactly the ground-truth relative rotation, and its ATE after Sim(3) alignment is the
    spread of the ground-truth camera centres around their mean.
``plane_points``
    One fronto-parallel plane: each frame's pixels unprojected at depth 1 through the
    ground-truth intrinsics with the identity pose (so every frame gives the same plane),
    then Sim(3)-aligned like the model's point map.
"""

from __future__ import annotations

import numpy as np

from fantasyworld.geometry.cameras import unproject_depth

__all__ = ["BASELINE_DESCRIPTIONS", "constant_depth", "identity_poses", "plane_points"]

BASELINE_DESCRIPTIONS = {
    "constant_depth": "one depth for every pixel of the clip (median-aligned: the ground-truth median)",
    "identity_poses": "every camera at the identity (no rotation, no motion)",
    "plane_points": "one fronto-parallel plane (pixels at depth 1, identity pose, true intrinsics), Sim(3)-aligned",
}


def constant_depth(shape: tuple[int, ...]) -> np.ndarray:
    """Depth of ones, ``shape`` e.g. ``(T, H, W)`` float64."""
    return np.ones(shape, dtype=np.float64)


def identity_poses(num_frames: int) -> np.ndarray:
    """``(T, 4, 4)`` identity world-to-camera matrices."""
    return np.tile(np.eye(4), (num_frames, 1, 1))


def plane_points(intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(T, H, W, 3)`` points of the plane ``z = 1`` seen through ``intrinsics`` ``(T, 3, 3)``."""
    k = np.asarray(intrinsics, dtype=np.float64)
    depth = np.ones((k.shape[0], height, width))
    return unproject_depth(depth, identity_poses(k.shape[0]), k)
