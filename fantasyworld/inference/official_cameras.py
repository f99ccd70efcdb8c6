"""Camera quirks of the official FantasyWorld inference (compatibility switch).

Compatibility quirks of the official inference (used for converted checkpoints, whose
``config.json`` has ``official_compat=True``); see :func:`official_camera_inputs`:

* Plücker intrinsics are multiplied by ``W``/``H`` a second time
  (``plucker_rays(..., legacy_official_intrinsics=True)``), after a round trip through
  VGGT's pose encoding that puts the principal point at ``(W/2, H/2)``;
* camera JSON: ``cameras_interp`` camera-to-world, ``focal_length`` in pixels, centre
  ``((W-1)/2, (H-1)/2)`` (:func:`fantasyworld.geometry.camera_io.read_official_json`);
* translations of the first-frame-relative cameras are divided by a scene scale, the
  mean distance (95th-percentile outliers removed) of the first frame's unprojected
  depth to the camera (:func:`official_scene_scale`); the official estimates that depth
  with MoGe, here the depth source is pluggable (a callable, a depth map or a given
  scale).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fantasyworld.geometry.plucker import plucker_rays

#: A depth estimator: RGB image ``(H, W, 3)`` uint8 -> metric depth ``(H', W')``; non-finite
#: or non-positive values are invalid (MoGe-2 in the official inference).
DepthEstimator = Callable[[np.ndarray], np.ndarray]


def official_scene_scale(depth: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor,
                         quantile: float = 0.95) -> float:
    """Scene scale as the official inference computes it from the first frame's depth.

    Each pixel ``(u, v)`` (integer index, no half-pixel offset, as the official unprojects)
    is unprojected with ``K`` at depth ``d``; the scale is the mean distance of the points
    to the camera over pixels with ``d > 1e-8`` and distance at most the ``quantile``
    (linear interpolation) of those distances, divided by ``count + 1e-3`` and clamped to
    ``[1e-6, 1e6]``.

    Note: the official passes the depth at the input image's own resolution together with
    the intrinsics of the generation resolution; to reproduce its numbers pass exactly
    that, to get a geometrically consistent scale pass ``K`` for the depth's resolution.
    """
    d = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float64)
    k = np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    d = np.where(np.isfinite(d), d, 0.0)
    h, w = d.shape
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x = (u - k[0, 2]) * d / k[0, 0]
    y = (v - k[1, 2]) * d / k[1, 1]
    dist = np.sqrt(x * x + y * y + d * d)
    valid = d > 1e-8
    if not valid.any():
        return 1e-6
    thr = np.quantile(dist[valid], quantile)
    keep = valid & (dist <= thr)
    scale = float((dist * keep).sum() / (keep.sum() + 1e-3))
    return float(min(max(scale, 1e-6), 1e6))


def official_translation_scale(
    K: np.ndarray | torch.Tensor,
    *,
    scale: float | None = None,
    depth: np.ndarray | torch.Tensor | None = None,
    image: np.ndarray | None = None,
    depth_estimator: DepthEstimator | None = None,
) -> float:
    """The factor the official divides camera translations by, from exactly one source:
    a given ``scale``, a first-frame ``depth`` map, or ``depth_estimator(image)``.
    (The official's ``--using_scale False`` corresponds to ``scale=1.0``.)"""
    given = [s is not None for s in (scale, depth, depth_estimator)]
    if sum(given) != 1:
        raise ValueError("give exactly one of scale, depth, or depth_estimator (with image)")
    if scale is not None:
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        return float(scale)
    if depth is None:
        if image is None:
            raise ValueError("depth_estimator needs the first-frame image")
        depth = depth_estimator(image)  # type: ignore[misc]
    return official_scene_scale(depth, K[0] if np.ndim(K) == 3 else K)


def official_camera_inputs(
    w2c: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor, height: int, width: int, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras and intrinsics to feed :func:`~fantasyworld.geometry.plucker.plucker_rays` with
    ``legacy_official_intrinsics=True`` so the rays equal the official inference's.

    The official path: poses made relative to frame 0 (``w2c_i @ inverse(w2c_0)``),
    translations divided by ``scale``, then a round trip through VGGT's pose encoding
    (which resets the principal point to ``(W/2, H/2)``), then intrinsics multiplied by
    ``W``/``H`` (done by the legacy flag).

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera (OpenCV), e.g. from ``read_official_json``.
        K: ``(T, 3, 3)`` or ``(3, 3)`` pixel intrinsics at ``(height, width)``.
        scale: translation scale (:func:`official_translation_scale`).
    Returns:
        ``(w2c_rel (T, 4, 4), K_official (T, 3, 3))`` float32.
    """
    w = torch.as_tensor(np.asarray(w2c), dtype=torch.float64)
    k = torch.as_tensor(np.asarray(K), dtype=torch.float64)
    if k.ndim == 2:
        k = k.expand(w.shape[0], 3, 3)
    rel = w @ torch.linalg.inv(w[:1])
    rel[:, :3, 3] = rel[:, :3, 3] / float(scale)
    rel[0] = torch.eye(4, dtype=rel.dtype)
    # pose-encoding round trip: fov from fx/fy, back to focal lengths; centre (W/2, H/2)
    fov_w = 2.0 * torch.atan((width / 2.0) / k[:, 0, 0])
    fov_h = 2.0 * torch.atan((height / 2.0) / k[:, 1, 1])
    k_off = torch.zeros_like(k)
    k_off[:, 0, 0] = (width / 2.0) / torch.tan(fov_w / 2.0)
    k_off[:, 1, 1] = (height / 2.0) / torch.tan(fov_h / 2.0)
    k_off[:, 0, 2] = width / 2.0
    k_off[:, 1, 2] = height / 2.0
    k_off[:, 2, 2] = 1.0
    return rel.float(), k_off.float()


def official_plucker(
    w2c: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor, height: int, width: int, scale: float = 1.0
) -> torch.Tensor:
    """Plücker rays ``(1, T, 6, H, W)`` exactly as the official inference builds them
    (see :func:`official_camera_inputs`)."""
    rel, k = official_camera_inputs(w2c, K, height, width, scale)
    return plucker_rays(rel[None], k[None], height, width, relative_to_first=True, legacy_official_intrinsics=True)


__all__ = [
    "DepthEstimator", "official_camera_inputs", "official_plucker", "official_scene_scale",
    "official_translation_scale",
]
