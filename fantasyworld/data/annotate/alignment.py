"""Aligning monocular depth to the structure-from-motion geometry, frame by frame.

A monocular estimator gives each frame its own unknown scale (and, for relative
disparity, an unknown shift). Every frame is fitted on the sparse points SfM triangulated
and observed in *that* frame (pixel ``(u, v)``, SfM z-depth ``z``; the prediction is read
at the pixel containing ``(u, v)``), so all frames end up in the one scale of the
reconstruction. Never a per-frame min-max normalisation.

``depth`` predictions (z-depth up to scale): ``z ~ s d``. ``log s`` is the mean of
``log z - log d`` over the points whose log-ratio lies between its ``trim`` and
``100 - trim`` percentiles (default 10 / 90).

``inverse_depth`` predictions (disparity ``x`` up to scale and shift, relative Depth
Anything): ``1 / z ~ a x + b``, fitted by least squares on the *relative* inverse-depth
residual ``(a x + b) z - 1`` (so near and far points count alike), three rounds each
keeping the points whose absolute residual is below its ``100 - trim`` percentile;
depth ``= 1 / (a x + b)`` where that is positive.

Per frame the fit's **residual** is the median of ``|z_fit - z| / z`` over the kept points.
A frame with fewer than ``min_points`` usable points takes the fit of all frames pooled
(recorded as ``source: "clip"``). Pixels are invalid (depth 0) where the aligned depth is
not positive or not finite, farther than ``far_factor`` times the 98th percentile of the
clip's SfM depths (sky, far background), below the clip's ``confidence_quantile`` of the
estimator's confidence when it gives one, and in whole frames whose residual exceeds
``2 * max_residual``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AlignSettings:
    """Knobs of :func:`align_depth` (module docstring)."""

    min_points: int = 20
    trim: float = 10.0
    far_factor: float = 4.0
    confidence_quantile: float = 0.05
    max_residual: float = 0.25


@dataclass
class FrameFit:
    """One frame's fit: ``scale`` (and ``shift`` for inverse depth), the residual, the
    points used/kept, and ``source`` (``frame`` or ``clip`` when pooled)."""

    scale: float
    shift: float
    residual: float
    num_points: int
    num_kept: int
    source: str = "frame"


@dataclass
class AlignResult:
    """``depth`` ``(T, H, W)`` float32 in SfM units (0 = invalid), ``valid`` ``(T, H, W)``,
    per-frame ``fits``, the clip ``residual`` (median of the frame residuals), the frames
    masked for a bad fit, and the clip's far limit."""

    depth: np.ndarray
    valid: np.ndarray
    fits: list[FrameFit]
    residual: float
    masked_frames: list[int] = field(default_factory=list)
    far_limit: float = float("inf")


def _sample(pred: np.ndarray, uvz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction at each sparse point's pixel, and that point's z (both filtered to usable)."""
    h, w = pred.shape
    if len(uvz) == 0:
        return np.zeros(0), np.zeros(0)
    col = np.floor(uvz[:, 0]).astype(np.int64)
    row = np.floor(uvz[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (uvz[:, 2] > 0)
    x = pred[row[inside], col[inside]].astype(np.float64)
    z = uvz[inside, 2]
    ok = np.isfinite(x) & np.isfinite(z)
    return x[ok], z[ok]


def fit_scale(d: np.ndarray, z: np.ndarray, trim: float) -> tuple[float, float, int]:
    """``z ~ s d`` from a trimmed mean of log-ratios; returns ``(s, residual, kept)``."""
    ok = d > 0
    d, z = d[ok], z[ok]
    if len(d) == 0:
        return float("nan"), float("inf"), 0
    lr = np.log(z) - np.log(d)
    lo, hi = np.percentile(lr, [trim, 100 - trim])
    keep = (lr >= lo) & (lr <= hi)
    s = float(np.exp(lr[keep].mean()))
    res = float(np.median(np.abs(s * d[keep] - z[keep]) / z[keep]))
    return s, res, int(keep.sum())


def fit_scale_shift_inverse(x: np.ndarray, z: np.ndarray, trim: float, rounds: int = 3
                            ) -> tuple[float, float, float, int]:
    """``1/z ~ a x + b`` on the relative residual with percentile rejection; returns
    ``(a, b, residual, kept)``. A flat prediction (no spread in ``x``) gets ``a = 0``."""
    if len(x) == 0:
        return float("nan"), float("nan"), float("inf"), 0
    y = 1.0 / z
    keep = np.ones(len(x), bool)
    a, b = 0.0, float(np.median(y))
    for _ in range(rounds):
        xs, zs = x[keep], z[keep]
        if np.ptp(xs) <= 1e-12 * max(np.abs(xs).max(), 1e-30):
            a, b = 0.0, float(np.median(1.0 / zs))
        else:
            design = np.stack([xs * zs, zs], axis=1)  # (a x + b) z = 1
            (a, b), *_ = np.linalg.lstsq(design, np.ones(len(xs)), rcond=None)
            a, b = float(a), float(b)
        r = np.abs((a * x + b) * z - 1.0)
        keep = r <= np.percentile(r, 100 - trim)
        if keep.sum() < 2:
            keep = np.ones(len(x), bool)
    inv = a * x[keep] + b
    z_fit = np.where(inv > 0, 1.0 / np.where(inv > 0, inv, 1.0), np.inf)
    res = float(np.median(np.abs(z_fit - z[keep]) / z[keep]))
    return a, b, res, int(keep.sum())


def _fit(kind: str, x: np.ndarray, z: np.ndarray, trim: float) -> tuple[float, float, float, int]:
    if kind == "depth":
        s, res, kept = fit_scale(x, z, trim)
        return s, 0.0, res, kept
    return fit_scale_shift_inverse(x, z, trim)


def _apply(kind: str, pred: np.ndarray, scale: float, shift: float) -> np.ndarray:
    if kind == "depth":
        return np.where(pred > 0, pred * scale, 0.0)
    inv = scale * pred.astype(np.float64) + shift
    return np.where(inv > 0, 1.0 / np.where(inv > 0, inv, 1.0), 0.0)


def align_depth(pred: np.ndarray, kind: str, sparse: list[np.ndarray], settings: AlignSettings | None = None,
                confidence: np.ndarray | None = None, usable: np.ndarray | None = None) -> AlignResult:
    """Align ``pred`` ``(T, H, W)`` (``depth`` or ``inverse_depth``) to the sparse SfM
    depths ``sparse`` (per frame ``(N_t, 3)`` ``u, v, z``); see the module docstring.

    Args:
        usable: ``(T,)`` bool, frames with a camera (others are left all invalid).

    Raises:
        ValueError: fewer than ``min_points`` usable sparse points in the whole clip.
    """
    settings = settings or AlignSettings()
    t = pred.shape[0]
    usable = np.ones(t, bool) if usable is None else np.asarray(usable, bool)
    samples = [_sample(pred[i], sparse[i]) if usable[i] else (np.zeros(0), np.zeros(0)) for i in range(t)]
    if kind == "depth":
        samples = [(x[x > 0], z[x > 0]) for x, z in samples]
    all_x = np.concatenate([x for x, _ in samples]) if samples else np.zeros(0)
    all_z = np.concatenate([z for _, z in samples]) if samples else np.zeros(0)
    if len(all_x) < settings.min_points:
        raise ValueError(f"{len(all_x)} sparse points usable for the depth alignment in the whole clip "
                         f"(need {settings.min_points})")
    pooled = _fit(kind, all_x, all_z, settings.trim)
    far = settings.far_factor * float(np.percentile(all_z, 98))
    depth = np.zeros(pred.shape, np.float32)
    fits: list[FrameFit] = []
    masked: list[int] = []
    for i in range(t):
        x, z = samples[i]
        if not usable[i]:
            fits.append(FrameFit(float("nan"), float("nan"), float("nan"), 0, 0, "none"))
            continue
        if len(x) >= settings.min_points:
            s, b, res, kept = _fit(kind, x, z, settings.trim)
            source = "frame"
        else:
            s, b, res, kept = pooled
            source = "clip"
        if not np.isfinite(s):
            s, b, res, kept = pooled
            source = "clip"
        fits.append(FrameFit(float(s), float(b), float(res), len(x), int(kept), source))
        if res > 2 * settings.max_residual:
            masked.append(i)
            continue
        depth[i] = _apply(kind, pred[i], s, b)
    valid = np.isfinite(depth) & (depth > 0) & (depth < far)
    if confidence is not None:
        conf_ok = confidence[usable]
        if conf_ok.size:
            thr = np.quantile(conf_ok, settings.confidence_quantile)
            valid &= confidence >= thr
    depth[~valid] = 0.0
    residuals = [f.residual for f in fits if f.source != "none" and np.isfinite(f.residual)]
    residual = float(np.median(residuals)) if residuals else float("inf")
    return AlignResult(depth, valid, fits, residual, masked, far)
