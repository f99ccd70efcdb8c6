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

One oracle is scored beside them. It reads the ground truth, so it is **not** a baseline
to beat but a ceiling:

``token_depth``
    The ground-truth depth at the geometry branch's token resolution: the mean over the
    valid pixels of each :data:`TOKEN_PIXELS` x :data:`TOKEN_PIXELS` cell of each frame,
    bilinearly upsampled back to the pixels. The branch reads one token per such cell, so
    a depth that is a smooth function of the tokens can at best match this field: the
    constant depth's AbsRel over the oracle's is the largest baseline / model ratio such a
    model can reach at that resolution, and the gap between the model and the oracle is
    the part that resolution does not explain.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fantasyworld.geometry.cameras import unproject_depth

__all__ = ["BASELINE_DESCRIPTIONS", "ORACLE_DESCRIPTIONS", "TOKEN_PIXELS", "constant_depth", "identity_poses",
           "plane_points", "token_depth"]

#: Pixels per geometry token along each axis: the VAE's 8x spatial compression times the
#: DiT's 2x2 patch.
TOKEN_PIXELS = 8 * 2

BASELINE_DESCRIPTIONS = {
    "constant_depth": "one depth for every pixel of the clip (median-aligned: the ground-truth median)",
    "identity_poses": "every camera at the identity (no rotation, no motion)",
    "plane_points": "one fronto-parallel plane (pixels at depth 1, identity pose, true intrinsics), Sim(3)-aligned",
}
ORACLE_DESCRIPTIONS = {
    "token_depth": f"depth at token resolution from ground truth: the mean of each {TOKEN_PIXELS}x{TOKEN_PIXELS}-pixel "
                   "cell's valid ground-truth depth, bilinearly upsampled (uses the ground truth: not a baseline, the "
                   "ceiling of the depth ratio for a model whose depth is a smooth function of its tokens)",
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


def token_depth(depth: np.ndarray, valid: np.ndarray, block: int = TOKEN_PIXELS) -> np.ndarray:
    """The token-resolution depth oracle (module docstring) of one clip.

    Args:
        depth: ground-truth depth ``(T, H, W)``, ``H`` and ``W`` multiples of ``block``;
            its invalid pixels may hold anything (0, inf, NaN).
        valid: ``(T, H, W)`` bool, the pixels that count.
        block: cell size in pixels.

    Returns:
        ``(T, H, W)`` float64, finite: each cell's mean valid depth, upsampled with
        ``F.interpolate(mode="bilinear", align_corners=False)`` (exact at the cell centres,
        linear between them, constant beyond the outer centres). A cell without a valid
        pixel takes the mean of its non-empty neighbours among the 8 around it, repeated
        outward until every cell has a value, so the upsampling blends valid depth only with
        nearby depth; a frame without a valid pixel takes the clip's valid median (1 when the
        clip has none).
    """
    ok = torch.from_numpy(np.asarray(valid, dtype=bool)).to(torch.float64)[:, None]  # (T, 1, H, W)
    d = torch.from_numpy(np.where(np.asarray(valid, dtype=bool), np.asarray(depth, dtype=np.float64), 0.0))[:, None]
    t, _, h, w = d.shape
    if h % block or w % block:
        raise ValueError(f"depth {h}x{w} is not a multiple of the {block}-pixel cells")
    count = F.avg_pool2d(ok, block)  # (T, 1, h / block, w / block): valid share of each cell
    cells = F.avg_pool2d(d, block) / count.clamp_min(1e-12)
    filled = count > 0
    for _ in range(max(cells.shape[-2:])):  # grow the non-empty cells outward, one ring per pass
        if bool(filled.all()):
            break
        have = filled.to(torch.float64)
        near = F.avg_pool2d(have, 3, 1, 1)  # the divisor 9 cancels in the ratio below
        grown = F.avg_pool2d(cells * have, 3, 1, 1) / near.clamp_min(1e-12)
        cells = torch.where(filled, cells, grown)
        filled = filled | (near > 0)
    empty_frames = ~filled.flatten(1).any(1)  # (T,) frames without any valid pixel
    if bool(empty_frames.any()):
        vals = np.asarray(depth, dtype=np.float64)[np.asarray(valid, dtype=bool)]
        cells[empty_frames] = float(np.median(vals)) if vals.size else 1.0
    return F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
