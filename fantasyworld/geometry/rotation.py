"""Rotation helpers shared by the camera formats, pose encodings and metrics.

Quaternions are **scalar-last** ``(x, y, z, w)`` everywhere in this package (the order
VGGT's ``absT_quaR_FoV`` encoding and TUM files use). COLMAP stores scalar-first
``(w, x, y, z)``: convert at the file boundary with :func:`wxyz_to_xyzw`.
All functions work on torch tensors with arbitrary leading dimensions.
"""

from __future__ import annotations

import torch


def quat_to_mat(quat: torch.Tensor) -> torch.Tensor:
    """Unit (or un-normalised) quaternions ``(..., 4)`` xyzw -> rotation matrices ``(..., 3, 3)``."""
    q = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z, w = q.unbind(-1)
    two = 2.0
    m = torch.stack(
        [
            1 - two * (y * y + z * z), two * (x * y - z * w), two * (x * z + y * w),
            two * (x * y + z * w), 1 - two * (x * x + z * z), two * (y * z - x * w),
            two * (x * z - y * w), two * (y * z + x * w), 1 - two * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(*q.shape[:-1], 3, 3)


def mat_to_quat(mat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` xyzw with ``w >= 0``.

    Uses the numerically stable branch selection (largest of 1+trace, 1+2*m_ii - trace).
    """
    m = mat
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4*q_i^2 for i in (w, x, y, z)
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    r = torch.sqrt(sq.clamp_min(0.0))  # 2*|q_i|
    # candidate quaternions (w, x, y, z), each computed from one large component
    cand = torch.stack(
        [
            torch.stack([r[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, r[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, r[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, r[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    cand = cand / (2.0 * r[..., None].clamp_min(0.1))
    best = sq.argmax(dim=-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    wxyz = cand.gather(-2, idx).squeeze(-2)
    wxyz = wxyz / wxyz.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    wxyz = torch.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    return wxyz_to_xyzw(wxyz)


def wxyz_to_xyzw(q: torch.Tensor) -> torch.Tensor:
    """Scalar-first ``(w, x, y, z)`` -> scalar-last ``(x, y, z, w)``."""
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)


def xyzw_to_wxyz(q: torch.Tensor) -> torch.Tensor:
    """Scalar-last ``(x, y, z, w)`` -> scalar-first ``(w, x, y, z)``."""
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)


def axis_angle_to_mat(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vectors ``(..., 3)`` (radians) -> matrices ``(..., 3, 3)``."""
    theta = axis_angle.norm(dim=-1, keepdim=True)
    half = theta / 2
    # sin(half)/theta is smooth at 0 (-> 1/2)
    k = torch.where(theta > 1e-8, torch.sin(half) / theta.clamp_min(1e-12), 0.5 - theta**2 / 48)
    quat = torch.cat([axis_angle * k, torch.cos(half)], dim=-1)
    return quat_to_mat(quat)

