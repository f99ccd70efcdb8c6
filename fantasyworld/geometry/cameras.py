"""Internal camera convention and the conversions everything else goes through.

Convention (used by every module of this package):

* **Extrinsics**: 4x4 **world-to-camera** matrices ``w2c`` (camera-from-world), shape
  ``(..., 4, 4)``, with **OpenCV axes**: camera x right, y down, z forward (optical axis).
  A world point ``p`` maps to camera coordinates ``w2c[:3, :3] @ p + w2c[:3, 3]``.
* **Intrinsics**: 3x3 pixel matrices ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` at the
  working resolution (the resolution of the frames they are paired with).
* **Pixel coordinates**: continuous, origin at the *top-left corner* of the top-left pixel;
  the centre of pixel index ``(u, v)`` (column, row) is at ``(u + 0.5, v + 0.5)``. This is
  COLMAP's convention. A centred principal point is therefore ``cx = W / 2``. OpenCV's
  integer-centre convention (centre of pixel 0 at 0, centred ``cx = (W - 1) / 2``) differs
  by half a pixel: convert with :func:`shift_principal_point`.
* **Depth** is z-depth (distance along the optical axis), not ray length.

With the corner convention, resizing an image by factors ``(sx, sy)`` scales the first two
rows of ``K`` by ``(sx, sy)`` with no half-pixel terms, and cropping at ``(top, left)``
subtracts ``(left, top)`` from ``(cx, cy)``.

All functions accept numpy arrays or torch tensors (same type out as in) with arbitrary
leading dimensions unless stated otherwise.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from fantasyworld.geometry.rotation import mat_to_quat, quat_to_mat

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _swap(x: Array) -> Array:
    """Transpose the last two axes."""
    return x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)


def _eye_like(x: Array, n: int) -> Array:
    if isinstance(x, torch.Tensor):
        return torch.eye(n, dtype=x.dtype, device=x.device).expand(*x.shape[:-2], n, n).clone()
    return np.broadcast_to(np.eye(n, dtype=x.dtype), (*x.shape[:-2], n, n)).copy()


def invert_se3(mat: Array) -> Array:
    """Closed-form inverse of rigid transforms ``(..., 4, 4)`` or ``(..., 3, 4)`` -> ``(..., 4, 4)``.

    Uses ``[R t]^-1 = [R^T, -R^T t]``; assumes the rotation block is orthonormal.
    """
    rot = mat[..., :3, :3]
    trans = mat[..., :3, 3:4]
    rot_t = _swap(rot)
    out = _eye_like(mat, 4)
    out[..., :3, :3] = rot_t
    out[..., :3, 3:4] = -(rot_t @ trans)
    return out


def w2c_to_c2w(w2c: Array) -> Array:
    """World-to-camera ``(..., 4, 4)`` -> camera-to-world ``(..., 4, 4)`` (same axes)."""
    return invert_se3(w2c)


def c2w_to_w2c(c2w: Array) -> Array:
    """Camera-to-world ``(..., 4, 4)`` -> world-to-camera ``(..., 4, 4)`` (same axes)."""
    return invert_se3(c2w)


def as_homogeneous(mat: Array) -> Array:
    """Rigid transforms ``(..., 3, 4)`` or ``(..., 4, 4)`` -> ``(..., 4, 4)`` (bottom row ``[0, 0, 0, 1]``).

    A ``(..., 4, 4)`` input is returned as is (not copied); a ``(..., 3, 4)`` one gets a new
    array/tensor of its dtype.
    """
    if tuple(mat.shape[-2:]) == (4, 4):
        return mat
    if tuple(mat.shape[-2:]) != (3, 4):
        raise ValueError(f"expected (..., 3, 4) or (..., 4, 4) extrinsics, got {tuple(mat.shape)}")
    out = _eye_like(mat, 4)
    out[..., :3, :4] = mat
    return out


OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def opencv_to_opengl_c2w(c2w: Array) -> Array:
    """Camera-to-world with OpenCV axes (x right, y down, z forward) -> OpenGL/Blender/NeRF
    axes (x right, y up, z backward). The same matrix converts back (it is an involution)."""
    flip = OPENCV_TO_OPENGL.astype(np.float64)
    if isinstance(c2w, torch.Tensor):
        return c2w @ torch.as_tensor(flip, dtype=c2w.dtype, device=c2w.device)
    return c2w @ flip.astype(c2w.dtype)


def make_intrinsics(fx, fy, cx, cy, like: Array | None = None) -> Array:
    """Build pixel intrinsics ``(..., 3, 3)`` from broadcastable ``fx, fy, cx, cy``.

    Returns numpy float64 unless ``like`` (or ``fx``) is a torch tensor.
    """
    use_torch = isinstance(like, torch.Tensor) or isinstance(fx, torch.Tensor)
    if use_torch:
        ref = like if isinstance(like, torch.Tensor) else fx
        fx, fy, cx, cy = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (fx, fy, cx, cy))
        fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
        k = torch.zeros(*fx.shape, 3, 3, dtype=fx.dtype, device=fx.device)
    else:
        fx, fy, cx, cy = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (fx, fy, cx, cy)))
        k = np.zeros((*fx.shape, 3, 3), dtype=np.float64)
    k[..., 0, 0] = fx
    k[..., 1, 1] = fy
    k[..., 0, 2] = cx
    k[..., 1, 2] = cy
    k[..., 2, 2] = 1.0
    return k


def intrinsics_from_fov(fov_x_deg: float, height: int, width: int) -> np.ndarray:
    """Square-pixel intrinsics ``(3, 3)`` with horizontal field of view ``fov_x_deg`` and a
    centred principal point ``(W/2, H/2)`` (corner convention)."""
    f = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2)
    return make_intrinsics(f, f, width / 2.0, height / 2.0)


def normalized_to_pixel_intrinsics(k_norm: Array, height: int, width: int) -> Array:
    """Intrinsics normalised by image size (``fx/W, fy/H, cx/W, cy/H``, as RealEstate10K
    and CameraCtrl store them) -> pixel intrinsics at ``(height, width)``."""
    return resize_intrinsics(k_norm, (1, 1), (height, width))


def pixel_to_normalized_intrinsics(k: Array, height: int, width: int) -> Array:
    """Pixel intrinsics at ``(height, width)`` -> intrinsics normalised by image size."""
    return resize_intrinsics(k, (height, width), (1, 1))


def shift_principal_point(k: Array, offset: float) -> Array:
    """Add ``offset`` pixels to ``cx`` and ``cy``.

    OpenCV integer-centre intrinsics -> our corner convention: ``offset=+0.5``;
    back: ``offset=-0.5``.
    """
    out = k.clone() if isinstance(k, torch.Tensor) else np.array(k, copy=True)
    out[..., 0, 2] = out[..., 0, 2] + offset
    out[..., 1, 2] = out[..., 1, 2] + offset
    return out


def resize_intrinsics(k: Array, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Array:
    """Intrinsics for frames resized from ``src_hw`` to ``dst_hw`` (each ``(H, W)``).

    The image content is stretched so that the full source extent maps to the full target
    extent (``align_corners=False`` sampling): a source coordinate ``x`` lands at
    ``x * W_dst / W_src``. Row 0 of ``K`` scales by ``W_dst / W_src``, row 1 by
    ``H_dst / H_src``.
    """
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    out = k.clone() if isinstance(k, torch.Tensor) else np.array(k, dtype=np.float64)
    out[..., 0, :] = k[..., 0, :] * sx
    out[..., 1, :] = k[..., 1, :] * sy
    return out


def crop_intrinsics(k: Array, top: int | float, left: int | float) -> Array:
    """Intrinsics after cropping a window whose top-left corner is at pixel ``(top, left)``."""
    out = k.clone() if isinstance(k, torch.Tensor) else np.array(k, dtype=np.float64)
    out[..., 0, 2] = k[..., 0, 2] - left
    out[..., 1, 2] = k[..., 1, 2] - top
    return out


def relative_to_first(w2c: Array) -> Array:
    """Re-express a trajectory in the coordinate frame of camera 0.

    Args:
        w2c: world-to-camera ``(..., T, 3|4, 4)``, OpenCV axes.

    Returns:
        ``(..., T, 4, 4)`` with ``out[..., i] = w2c_i @ inverse(w2c_0)``: the maps from
        camera-0 coordinates to camera-i coordinates. ``out[..., 0]`` is written as the exact
        identity (no round-off residue); the new "world" is camera 0 (a world point ``X``
        becomes ``R_0 X + t_0``, see :func:`points_in_first_camera`).
    """
    w2c = as_homogeneous(w2c)
    rel = w2c @ invert_se3(w2c[..., :1, :, :])
    rel[..., 0, :, :] = _eye_like(rel[..., 0, :, :], 4)
    return rel


def points_in_first_camera(w2c: Array, points: Array) -> Array:
    """World points in the coordinate frame of camera 0 (the frame of :func:`relative_to_first`).

    Args:
        w2c: world-to-camera ``(..., T, 4, 4)``; only frame 0 is used.
        points: world points ``(..., T, H, W, 3)`` (or any ``(..., N, 3)`` layout whose
            leading dims match ``w2c``'s ``...``).

    Returns:
        ``R_0 X + t_0`` for each point, same shape as ``points``.
    """
    first = w2c[..., :1, :, :]
    rot = first[..., 0, :3, :3]
    trans = first[..., 0, :3, 3]
    lead = rot.shape[:-2]
    extra = points.ndim - len(lead) - 1
    rot_b = rot.reshape(*lead, *([1] * extra), 3, 3)
    trans_b = trans.reshape(*lead, *([1] * extra), 3)
    return (rot_b @ points[..., None])[..., 0] + trans_b


def scene_scale(points: Array, valid: Array, w2c_first: Array) -> Array:
    """Mean distance of valid points to the first camera centre (SPEC section 4).

    Args:
        points: world points ``(B, T, H, W, 3)``.
        valid: bool ``(B, T, H, W)``.
        w2c_first: ``(B, 4, 4)`` world-to-camera of frame 0.

    Returns:
        ``(B,)`` scale, clamped to ``>= 1e-6``; 1 where no point is valid.
    """
    centre = invert_se3(w2c_first)[:, None, None, None, :3, 3]  # (B, 1, 1, 1, 3)
    dist = ((points - centre) ** 2).sum(-1) ** 0.5  # (B, T, H, W)
    if isinstance(points, torch.Tensor):
        total = torch.where(valid, dist, torch.zeros_like(dist)).sum(dim=(1, 2, 3))
        count = valid.sum(dim=(1, 2, 3)).to(points.dtype)
        scale = torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total))
        return scale.clamp_min(1e-6)
    total = np.where(valid, dist, 0.0).sum(axis=(1, 2, 3))
    count = valid.sum(axis=(1, 2, 3))
    scale = np.where(count > 0, total / np.maximum(count, 1), 1.0)
    return np.maximum(scale, 1e-6)


def normalize_scale(
    w2c: Array, points: Array, depth: Array, valid: Array
) -> tuple[Array, Array, Array, Array]:
    """Divide the scene by :func:`scene_scale` (first camera frame, batched).

    Args:
        w2c ``(B, T, 4, 4)``, points ``(B, T, H, W, 3)``, depth ``(B, T, H, W)``,
        valid ``(B, T, H, W)`` bool.

    Returns:
        ``(w2c, points, depth, scale)`` with translations, points and depth divided by
        ``scale`` ``(B,)``. Rotations are untouched; applying this after
        :func:`relative_to_first` gives SPEC's unit-scale targets.
    """
    scale = scene_scale(points, valid, w2c[:, 0])
    if isinstance(w2c, torch.Tensor):
        w2c = w2c.clone()
    else:
        w2c = np.array(w2c, copy=True)
    w2c[..., :3, 3] = w2c[..., :3, 3] / scale[:, None, None]
    points = points / scale[:, None, None, None, None]
    depth = depth / scale[:, None, None, None]
    return w2c, points, depth, scale


def pixel_centers(height: int, width: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u + 0.5, v + 0.5)``, each ``(H, W)`` (x then y)."""
    u = np.arange(width, dtype=dtype) + 0.5
    v = np.arange(height, dtype=dtype) + 0.5
    uu, vv = np.meshgrid(u, v, indexing="xy")
    return uu, vv


def unproject_depth(depth: np.ndarray, w2c: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Z-depth maps -> world points (numpy).

    Args:
        depth: ``(..., H, W)`` z-depth.
        w2c: ``(..., 4, 4)`` world-to-camera, OpenCV.
        k: ``(..., 3, 3)`` pixel intrinsics (corner convention, pixel centres at +0.5).

    Returns:
        ``(..., H, W, 3)`` world points (float64 unless inputs are float32).
    """
    height, width = depth.shape[-2:]
    uu, vv = pixel_centers(height, width)
    fx = k[..., 0, 0][..., None, None]
    fy = k[..., 1, 1][..., None, None]
    cx = k[..., 0, 2][..., None, None]
    cy = k[..., 1, 2][..., None, None]
    x = (uu - cx) / fx * depth
    y = (vv - cy) / fy * depth
    cam = np.stack([x, y, depth], axis=-1)  # (..., H, W, 3)
    c2w = invert_se3(np.asarray(w2c, dtype=np.float64))
    rot = c2w[..., None, None, :3, :3]
    trans = c2w[..., None, None, :3, 3]
    return (rot @ cam[..., None])[..., 0] + trans


def project_points(points: np.ndarray, w2c: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``(..., N, 3)`` -> pixel coordinates ``(..., N, 2)`` (x, y; corner
    convention, so ``floor`` gives the pixel index) and z-depth ``(..., N)``.

    ``w2c`` ``(..., 4, 4)`` and ``k`` ``(..., 3, 3)`` broadcast against the leading dims.
    """
    rot = w2c[..., None, :3, :3]
    trans = w2c[..., None, :3, 3]
    cam = (rot @ points[..., None])[..., 0] + trans
    z = cam[..., 2]
    proj = (k[..., None, :, :] @ cam[..., None])[..., 0]
    uv = proj[..., :2] / z[..., None]
    return uv, z


def rotation_orthonormality_error(rot: np.ndarray) -> np.ndarray:
    """Max-abs deviation of ``R R^T`` from identity, plus ``|det R - 1|``; ``(...)``."""
    rot = np.asarray(rot, dtype=np.float64)
    gram = rot @ np.swapaxes(rot, -1, -2)
    err = np.abs(gram - np.eye(3)).max(axis=(-1, -2))
    det = np.linalg.det(rot)
    return np.maximum(err, np.abs(det - 1.0))


def rotation_angle_deg(rot: np.ndarray) -> np.ndarray:
    """Angle (degrees) of rotation matrices ``(..., 3, 3)``, accurate near 0 and 180 (atan2 form)."""
    rot = np.asarray(rot, dtype=np.float64)
    cos = (np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack(
        [rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0], rot[..., 1, 0] - rot[..., 0, 1]],
        axis=-1,
    )
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def look_at_w2c(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera ``(4, 4)`` (OpenCV axes) of a camera at ``eye`` looking at ``target``,
    with image-up aligned with world ``up`` (camera y points opposite to ``up``)."""
    eye = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd], axis=0)  # rows: camera axes in world
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye
    return w2c


def interpolate_c2w(c2w: np.ndarray, times: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Camera-to-world poses at ``query`` times from poses known at sorted ``times``:
    camera centres linearly, rotations by quaternion slerp (shortest arc) between the two
    known poses around each query (numpy).

    Args:
        c2w: ``(n, 4, 4)`` known poses, ``n >= 1``.
        times: ``(n,)`` strictly increasing times of the known poses.
        query: ``(m,)`` times; values outside ``[times[0], times[-1]]`` extrapolate along
            the first or last interval (callers that must not extrapolate check first).

    Returns:
        ``(m, 4, 4)`` float64 poses; a query equal to a known time returns that pose.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    n = len(c2w)
    if n == 1:
        return np.repeat(c2w, len(query), axis=0)
    lo = np.clip(np.searchsorted(times, query, side="right") - 1, 0, n - 2)
    hi = lo + 1
    frac = (query - times[lo]) / (times[hi] - times[lo])
    quat = mat_to_quat(torch.from_numpy(c2w[:, :3, :3])).numpy()  # (n, 4) xyzw
    q0, q1 = quat[lo], quat[hi]
    dot = (q0 * q1).sum(-1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot).clip(-1.0, 1.0)
    theta = np.arccos(dot)
    small = theta < 1e-6
    sin = np.where(small, 1.0, np.sin(theta))
    w0 = np.where(small, 1 - frac, np.sin((1 - frac) * theta) / sin)
    w1 = np.where(small, frac, np.sin(frac * theta) / sin)
    q = w0[:, None] * q0 + w1[:, None] * q1
    out = np.tile(np.eye(4), (len(query), 1, 1))
    out[:, :3, :3] = quat_to_mat(torch.from_numpy(q)).numpy()
    out[:, :3, 3] = (1 - frac)[:, None] * c2w[lo, :3, 3] + frac[:, None] * c2w[hi, :3, 3]
    return out
