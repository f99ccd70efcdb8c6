"""Plücker ray embeddings for camera conditioning (SPEC section 3.4).

Each pixel gets the 6-vector ``(o x d, d)``: ``o`` the camera centre and ``d`` the unit
direction of the ray through the pixel centre, both in the (relative) world frame.
Pixel centres are at ``(u + 0.5, v + 0.5)`` (corner convention, see
:mod:`fantasyworld.geometry.cameras`); intrinsics are in pixels at ``(height, width)``.
"""

from __future__ import annotations

import torch

from fantasyworld.geometry.cameras import invert_se3


def plucker_rays(
    w2c: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    relative_to_first: bool = True,
    legacy_official_intrinsics: bool = False,
) -> torch.Tensor:
    """Per-pixel Plücker coordinates.

    Args:
        w2c: ``(B, T, 4, 4)`` world-to-camera, OpenCV axes.
        K: ``(B, T, 3, 3)`` pixel intrinsics at ``(height, width)``.
        height, width: output resolution ``H, W``.
        relative_to_first: express every pose relative to frame 0 first
            (``c2w_rel[t] = w2c[0] @ c2w[t]``, so frame 0 is the identity and its rays
            start at the origin), as the official FantasyWorld and CameraCtrl do.
        legacy_official_intrinsics: reproduce the official release's bug of multiplying
            already-pixel intrinsics by ``W`` (fx, cx) and ``H`` (fy, cy) a second time.
            Only for running released official weights; never for training.

    Returns:
        ``(B, T, 6, H, W)`` in the dtype of ``w2c``: channels 0-2 are ``o x d`` (moment),
        channels 3-5 the unit direction ``d``.
    """
    batch, frames = w2c.shape[:2]
    dtype = w2c.dtype
    K = K.to(dtype)
    if relative_to_first:
        c2w = w2c[:, :1] @ invert_se3(w2c)  # (B, T, 4, 4): w2c[0] @ c2w[t]
    else:
        c2w = invert_se3(w2c)
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    cx, cy = K[..., 0, 2], K[..., 1, 2]
    if legacy_official_intrinsics:
        fx, cx = fx * width, cx * width
        fy, cy = fy * height, cy * height
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=w2c.device) + 0.5,
        torch.arange(width, dtype=dtype, device=w2c.device) + 0.5,
        indexing="ij",
    )  # (H, W) each
    x = (u[None, None] - cx[..., None, None]) / fx[..., None, None]  # (B, T, H, W)
    y = (v[None, None] - cy[..., None, None]) / fy[..., None, None]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, T, H, W, 3)
    dirs_cam = dirs_cam / dirs_cam.norm(dim=-1, keepdim=True)
    rot = c2w[..., :3, :3]  # (B, T, 3, 3)
    dirs = torch.einsum("btij,bthwj->bthwi", rot, dirs_cam)  # (B, T, H, W, 3)
    origin = c2w[..., :3, 3][:, :, None, None, :].expand_as(dirs)
    moment = torch.linalg.cross(origin, dirs, dim=-1)
    rays = torch.cat([moment, dirs], dim=-1)  # (B, T, H, W, 6)
    return rays.permute(0, 1, 4, 2, 3).reshape(batch, frames, 6, height, width)
