"""VGGT's ``absT_quaR_FoV`` camera encoding (``as_homogeneous`` and ``relative_to_first``
are :mod:`fantasyworld.geometry.cameras`'s, importable from here too).

Conventions (the same as VGGT's ``vggt/utils/pose_enc.py`` and FantasyWorld's camera head):

- Extrinsics are **world-to-camera** (w2c, "camera from world"), OpenCV axes
  (x right, y down, z forward): ``x_cam = R @ x_world + t``. Inputs may be ``(..., 3, 4)``
  ``[R | t]`` or homogeneous ``(..., 4, 4)``; outputs are always ``(..., 4, 4)``.
- Intrinsics are in **pixels** at the working resolution ``image_hw = (H, W)``::

      [[fx, 0, cx],
       [0, fy, cy],
       [0,  0,  1]]

- The 9-d encoding is ``[t (3), q (4), fov_h (1), fov_w (1)]`` where ``t`` is the w2c
  translation, ``q`` the quaternion of the w2c rotation, **scalar-last** ``(x, y, z, w)`` with
  ``w >= 0`` (see :mod:`fantasyworld.geometry.rotation`), ``fov_h = 2 atan(H / 2 / fy)`` and
  ``fov_w = 2 atan(W / 2 / fx)`` in radians. Note the (h, w) order of the two fields of view.
- The principal point is not encoded. :func:`decode_pose` puts it at ``cx = W / 2``,
  ``cy = H / 2`` (VGGT's convention: the image centre with pixel *edges* at integers). The
  official FantasyWorld camera JSON uses ``(W - 1) / 2, (H - 1) / 2`` (pixel *centres* at
  integers); the half-pixel difference is irrelevant to the encoding, which ignores cx, cy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fantasyworld.geometry.cameras import as_homogeneous, relative_to_first
from fantasyworld.geometry.rotation import mat_to_quat, quat_to_mat

__all__ = [
    "MAX_FOV_DEG",
    "MIN_FOV_DEG",
    "POSE_ENCODING_DIM",
    "as_homogeneous",
    "cameras_from_pose_enc",
    "decode_pose",
    "encode_pose",
    "relative_to_first",
]

POSE_ENCODING_DIM = 9


def encode_pose(w2c: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Cameras -> VGGT ``absT_quaR_FoV`` encodings.

    Args:
        w2c: world-to-camera extrinsics, OpenCV axes, ``(..., 3, 4)`` or ``(..., 4, 4)``.
        intrinsics: pixel intrinsics ``(..., 3, 3)`` at resolution ``image_hw``.
        image_hw: ``(H, W)`` in pixels.

    Returns:
        ``(..., 9)`` = ``[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]`` in the input dtype
        (angles in radians, quaternion scalar-last with ``qw >= 0``).
    """
    height, width = image_hw
    rot = w2c[..., :3, :3]
    trans = w2c[..., :3, 3]
    quat = mat_to_quat(rot)
    fov_h = 2.0 * torch.atan((height / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2.0 * torch.atan((width / 2.0) / intrinsics[..., 0, 0])
    return torch.cat([trans, quat.to(trans.dtype), fov_h[..., None], fov_w[..., None]], dim=-1)


def decode_pose(encoding: torch.Tensor, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """VGGT ``absT_quaR_FoV`` encodings ``(..., 9)`` -> ``(w2c (..., 4, 4), K (..., 3, 3))``.

    The quaternion need not be unit (it is normalised, as a head output may not be). The
    intrinsics are in pixels at ``image_hw = (H, W)`` with ``fx = W / 2 / tan(fov_w / 2)``,
    ``fy = H / 2 / tan(fov_h / 2)``, principal point ``cx = W / 2``, ``cy = H / 2`` and zero skew.
    """
    if encoding.shape[-1] != POSE_ENCODING_DIM:
        raise ValueError(f"expected a (..., 9) pose encoding, got {tuple(encoding.shape)}")
    height, width = image_hw
    trans = encoding[..., :3]
    rot = quat_to_mat(encoding[..., 3:7])
    fov_h = encoding[..., 7]
    fov_w = encoding[..., 8]

    w2c = torch.zeros(*encoding.shape[:-1], 4, 4, dtype=encoding.dtype, device=encoding.device)
    w2c[..., :3, :3] = rot
    w2c[..., :3, 3] = trans
    w2c[..., 3, 3] = 1.0

    intrinsics = torch.zeros(*encoding.shape[:-1], 3, 3, dtype=encoding.dtype, device=encoding.device)
    intrinsics[..., 0, 0] = (width / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics[..., 1, 1] = (height / 2.0) / torch.tan(fov_h / 2.0)
    intrinsics[..., 0, 2] = width / 2.0
    intrinsics[..., 1, 2] = height / 2.0
    intrinsics[..., 2, 2] = 1.0
    return w2c, intrinsics


#: FoV clamp applied to predicted cameras before export (degrees).
MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 179.0


def cameras_from_pose_enc(pose_enc: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``(T, 9)`` pose encodings -> ``w2c`` ``(T, 4, 4)`` and pixel intrinsics
    ``(T, 3, 3)`` (float64), decoded as the model does but with both fields of view clamped
    to [:data:`MIN_FOV_DEG`, :data:`MAX_FOV_DEG`] so that an untrained or degenerate head
    (FoV 0 -> infinite focal length) still yields finite, exportable cameras."""
    enc = torch.from_numpy(np.asarray(pose_enc, dtype=np.float64)).clone()
    enc[..., 7:9] = enc[..., 7:9].clamp(math.radians(MIN_FOV_DEG), math.radians(MAX_FOV_DEG))
    w2c, k = decode_pose(enc, image_hw)
    return w2c.numpy(), k.numpy()
