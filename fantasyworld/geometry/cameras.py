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

import math
from typing import NamedTuple, TypeVar

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
    """Square-pixel intrinsics ``(3, 3)`` float64 with horizontal field of view ``fov_x_deg``
    and a centred principal point ``(W/2, H/2)`` (corner convention): the default camera of
    files and records without intrinsics and of the named paths."""
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
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
        w2c: world-to-camera ``(..., T, 3|4, 4)``; only frame 0 is used.
        points: world points ``(..., T, H, W, 3)`` (or any ``(..., N, 3)`` layout whose
            leading dims match ``w2c``'s ``...``).

    Returns:
        ``R_0 X + t_0`` for each point, same shape as ``points``.
    """
    rot = w2c[..., 0, :3, :3]  # (..., 3, 3)
    trans = w2c[..., 0, :3, 3]  # (..., 3)
    lead = rot.ndim - 2
    extra = points.ndim - lead - 1
    # one einsum contraction, e.g. "aij,abcdj->abcdi" for (B, 3, 3) x (B, T, H, W, 3)
    letters = "abcdefgh"
    head, mid = letters[:lead], "klmnopqr"[:extra]
    spec = f"{head}ij,{head}{mid}j->{head}{mid}i"
    einsum = torch.einsum if isinstance(points, torch.Tensor) else np.einsum
    return einsum(spec, rot, points) + trans.reshape(*trans.shape[:-1], *([1] * extra), 3)


def scene_scale(points: Array, valid: Array, w2c: Array, eps: float = 1e-6) -> Array:
    """Per-sample scene scale (SPEC section 4): mean distance of the valid world points to the
    first camera centre, over all frames of the clip.

    Args:
        points: world points ``(B, T, H, W, 3)``.
        valid: bool ``(B, T, H, W)``; invalid points may be NaN/inf.
        w2c: ``(B, T, 3|4, 4)`` world-to-camera, OpenCV; only frame 0 is used.

    Returns:
        ``(B,)`` scale, clamped to ``>= eps``; 1 for a sample without valid points.
    """
    cam0 = points_in_first_camera(w2c, points)
    if isinstance(points, torch.Tensor):
        valid = valid.bool()
        dist = cam0.norm(dim=-1)  # (B, T, H, W)
        dist = torch.where(valid, dist, torch.zeros_like(dist))  # invalid points may be NaN/inf
        count = valid.sum(dim=(1, 2, 3)).to(dist.dtype)
        mean = dist.sum(dim=(1, 2, 3)) / count.clamp_min(1.0)
        return torch.where(count > 0, mean.clamp_min(eps), torch.ones_like(mean))
    valid = np.asarray(valid, dtype=bool)
    dist = np.where(valid, np.linalg.norm(cam0, axis=-1), 0.0)
    count = valid.sum(axis=(1, 2, 3))
    mean = dist.sum(axis=(1, 2, 3)) / np.maximum(count, 1)
    return np.where(count > 0, np.maximum(mean, eps), 1.0)


def normalize_scale(
    w2c: Array, points: Array, depth: Array, valid: Array
) -> tuple[Array, Array, Array, Array]:
    """Divide a scene by its :func:`scene_scale` (batched).

    Args:
        w2c ``(B, T, 4, 4)``, points ``(B, T, H, W, 3)``, depth ``(B, T, H, W)``,
        valid ``(B, T, H, W)`` bool.

    Returns:
        ``(w2c, points, depth, scale)`` with translations, points and depth divided by
        ``scale`` ``(B,)``. Rotations are untouched. Applied to a scene already in camera-0
        coordinates (:func:`relative_to_first`, :func:`points_in_first_camera`) it gives
        SPEC's unit-scale targets; :func:`normalize_scene` does both steps.
    """
    scale = scene_scale(points, valid, w2c)
    if isinstance(w2c, torch.Tensor):
        w2c = w2c.clone()
    else:
        w2c = np.array(w2c, copy=True)
    w2c[..., :3, 3] = w2c[..., :3, 3] / scale[:, None, None]
    points = points / scale[:, None, None, None, None]
    depth = depth / scale[:, None, None, None]
    return w2c, points, depth, scale


class NormalizedScene(NamedTuple):
    """Ground truth in camera-0 coordinates at unit scale (:func:`normalize_scene`).

    Attributes:
        depth: ``(B, T, H, W)`` z-depth divided by ``scale`` (0 where invalid).
        points: ``(B, T, H, W, 3)`` points in camera-0 coordinates divided by ``scale`` (0 where invalid).
        w2c: ``(B, T, 4, 4)`` relative w2c (frame 0 = identity), translations divided by ``scale``.
        scale: ``(B,)`` the factor that was divided out.
    """

    depth: torch.Tensor
    points: torch.Tensor
    w2c: torch.Tensor
    scale: torch.Tensor


@torch.no_grad()
def normalize_scene(
    depth: torch.Tensor, points: torch.Tensor, valid: torch.Tensor, w2c: torch.Tensor
) -> NormalizedScene:
    """The scene normalisation of training (VGGT's convention), fp32, invalid entries zeroed.

    1. Cameras are made relative to frame 0: ``w2c_i <- w2c_i @ inverse(w2c_0)`` (frame 0 = I).
    2. World points are moved into camera 0's frame: ``X <- R_0 X + t_0`` (OpenCV axes).
    3. ``scale`` (per sample) = :func:`scene_scale`, the mean distance of the valid points to
       the first camera centre, over all frames of the clip.
    4. Depth, points and camera translations are divided by ``scale``; rotations and
       intrinsics are unchanged. The result is invariant to any similarity transform of the
       world (rotation, translation, positive scale).

    Args:
        depth: ``(B, T, H, W)`` z-depth in each frame's camera.
        points: ``(B, T, H, W, 3)`` world points.
        valid: ``(B, T, H, W)`` bool mask.
        w2c: ``(B, T, 3|4, 4)`` world-to-camera extrinsics, OpenCV axes.
    """
    valid = valid.bool()
    w2c = as_homogeneous(w2c.float())
    rel, points_c0, depth, scale = normalize_scale(
        relative_to_first(w2c), points_in_first_camera(w2c, points.float()), depth.float(), valid)
    # Invalid ground truth is set to 0 so that NaN/inf never reach a loss or its gradient.
    points_c0 = torch.where(valid[..., None], points_c0, torch.zeros_like(points_c0))
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    return NormalizedScene(depth=depth, points=points_c0, w2c=rel, scale=scale)


def unproject_pixels(
    frame: np.ndarray, row: np.ndarray, col: np.ndarray, depth: np.ndarray, w2c: np.ndarray, k: np.ndarray
) -> np.ndarray:
    """Selected pixels of z-depth maps -> world points ``(N, 3)`` float64 (numpy).

    Pixel ``(row, col)`` of frame ``frame`` is unprojected through its centre
    ``(col + 0.5, row + 0.5)`` (corner convention) at its z-depth.

    Args:
        frame, row, col: ``(N,)`` integer indices ``(t, v, u)`` of the pixels.
        depth: ``(T, H, W)`` z-depth maps.
        w2c: ``(T, 4, 4)`` world-to-camera, OpenCV axes.
        k: ``(T, 3, 3)`` pixel intrinsics.
    """
    z = np.asarray(depth, dtype=np.float64)[frame, row, col]
    kk = np.asarray(k, dtype=np.float64)[frame]
    x = (col + 0.5 - kk[:, 0, 2]) / kk[:, 0, 0] * z
    y = (row + 0.5 - kk[:, 1, 2]) / kk[:, 1, 1] * z
    cam = np.stack([x, y, z], -1)  # (N, 3) camera coordinates
    c2w = invert_se3(np.asarray(w2c, dtype=np.float64))[frame]  # (N, 4, 4)
    return (c2w[:, :3, :3] @ cam[:, :, None])[:, :, 0] + c2w[:, :3, 3]


def unproject_depth(depth: np.ndarray, w2c: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Z-depth maps -> world points (numpy): :func:`unproject_pixels` of every pixel.

    Args:
        depth: ``(..., H, W)`` z-depth.
        w2c: ``(..., 4, 4)`` world-to-camera, OpenCV (broadcast against ``depth``'s ``...``).
        k: ``(..., 3, 3)`` pixel intrinsics (corner convention, pixel centres at +0.5; broadcast too).

    Returns:
        ``(..., H, W, 3)`` world points, float64.
    """
    depth = np.asarray(depth)
    lead, (height, width) = depth.shape[:-2], depth.shape[-2:]
    maps = depth.reshape(-1, height, width)  # (T', H, W)
    w2c = np.broadcast_to(w2c, (*lead, 4, 4)).reshape(-1, 4, 4)  # cameras broadcast against the maps
    k = np.broadcast_to(k, (*lead, 3, 3)).reshape(-1, 3, 3)
    t, v, u = np.indices(maps.shape).reshape(3, -1)
    points = unproject_pixels(t, v, u, maps, w2c, k)
    return points.reshape(*depth.shape, 3)


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
