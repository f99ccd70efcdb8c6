"""Estimators of ``data annotate``: the registries, the plug-in signature, output checks.

Depth (``--depth``): ``depth-anything`` (default; transformers
``DepthAnythingForDepthEstimation``, Depth Anything V2, from ``--depth-model DIR``),
``depth-pro`` (``DepthProForDepthEstimation``), ``gt`` (ground-truth pass-through), or
``module:function``.

Cameras (``--cameras``): ``sfm`` (default; pycolmap structure from motion,
:mod:`~fantasyworld.data.annotate.sfm`), ``gt``, or ``module:function``.

Plug-in signature (both kinds): ``function(frames, context)`` with ``frames`` the sampled
clip ``(T, H, W, 3)`` uint8 RGB at the output size and ``context`` a :class:`ClipContext`.

* depth plug-ins return a ``(T, H, W)`` float array of z-depth up to scale, or a dict with
  exactly one of ``"depth"`` (z-depth up to scale) / ``"inverse_depth"`` (disparity up to
  scale and shift, as relative Depth Anything gives), optional ``"confidence"``
  ``(T, H, W)`` (higher = better) and ``"metric": True`` when the depth is in metres
  (then the clip is written in metres);
* camera plug-ins return a dict: ``"w2c"`` ``(T, 4, 4)`` or ``(T, 3, 4)`` world-to-camera,
  OpenCV axes; ``"intrinsics"`` ``(3, 3)``, ``(T, 3, 3)`` or ``[fx, fy, cx, cy]`` pixels at
  the output size (corner convention); optional ``"registered"`` ``(T,)`` bool (frames not
  recovered; their ``w2c`` rows are ignored), ``"sparse"`` (per frame an ``(N_t, 3)``
  array of pixel ``u, v`` and z-depth of reliable points, used to align the depth) or
  ``"points3d"`` ``(N, 3)`` world points (projected into every frame to make ``sparse``,
  without occlusion test), ``"reprojection_error"`` (pixels).

A wrong shape, NaN/inf, a non-rotation or a missing key rejects that clip with reason
``estimator_output`` (the other clips go on); a plug-in that does not import, a model
directory that does not exist or holds another model type, stop the run at once with
:class:`~fantasyworld.errors.EstimatorError` before anything is written.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fantasyworld.errors import EstimatorError
from fantasyworld.geometry.cameras import as_homogeneous, make_intrinsics, project_points, rotation_orthonormality_error

DEPTH_ESTIMATORS = ("depth-anything", "depth-pro", "gt")
CAMERA_ESTIMATORS = ("sfm", "gt")
DEPTH_KINDS = ("depth", "inverse_depth")


class EstimatorOutputError(ValueError):
    """An estimator returned something unusable for one clip (the clip is rejected)."""


@dataclass
class ClipContext:
    """What an estimator may want besides the frames.

    Attributes:
        clip_id, video: the clip and its source file.
        frame_indices: ``(T,)`` source frame indices of the sampled frames.
        fps: frame rate of the sampled clip.
        intrinsics: ``(3, 3)`` known pixel K at the output size (``--fov`` /
            ``--intrinsics``, or the ground truth's), else ``None``.
        device: torch device for models (``cuda`` when present unless ``--device``).
        gt: the clip's ground truth (:class:`~fantasyworld.data.annotate.gt.GroundTruthClip`)
            when a ground-truth root is known, else ``None``.
        work_dir: a scratch folder for the estimator (deleted after the clip).
    """

    clip_id: str
    video: Path
    frame_indices: np.ndarray
    fps: float
    intrinsics: np.ndarray | None = None
    device: str = "cpu"
    gt: Any = None
    work_dir: Path | None = None


@dataclass
class DepthPrediction:
    """A depth estimator's output, checked: ``values`` ``(T, H, W)`` float32 of ``kind``
    ``depth`` (z-depth up to scale; ``<= 0`` = no estimate) or ``inverse_depth``
    (disparity up to scale and shift); ``metric`` when ``depth`` is in metres;
    ``confidence`` ``(T, H, W)`` or ``None``."""

    values: np.ndarray
    kind: str
    metric: bool = False
    confidence: np.ndarray | None = None


@dataclass
class CameraEstimate:
    """A camera estimator's output, checked (see :class:`~fantasyworld.data.annotate.sfm.SfmResult`
    for the fields SfM fills): ``w2c`` ``(T, 4, 4)`` (NaN rows where not registered),
    ``registered`` ``(T,)``, ``K`` ``(T, 3, 3)``, ``sparse`` per-frame ``(N_t, 3)`` ``u, v, z``
    (may be empty), ``reprojection_error`` (pixels, NaN if unknown), ``details`` for the report."""

    w2c: np.ndarray
    registered: np.ndarray
    K: np.ndarray
    sparse: list[np.ndarray]
    reprojection_error: float = float("nan")
    frame_errors: np.ndarray | None = None
    num_points3d: int = 0
    message: str = ""
    details: dict = field(default_factory=dict)


def load_plugin(spec: str, option: str) -> Callable:
    """Import ``module:function`` (``module.sub:function`` too); raises :class:`EstimatorError`."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise EstimatorError(f"{option} {spec!r}: expected a built-in name or module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorError(f"{option} {spec!r}: cannot import {module_name!r} ({exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise EstimatorError(f"{option} {spec!r}: {module_name!r} has no callable {func_name!r}")
    return func


# ----------------------------------------------------------------------------------------
# output checks
def _array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise EstimatorOutputError(f"{name} is not a numeric array ({type(value).__name__})") from None
    if arr.shape != shape:
        raise EstimatorOutputError(f"{name} has shape {list(arr.shape)}, expected {list(shape)}")
    return arr


def _finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise EstimatorOutputError(f"{name} has {int(bad.sum())} NaN/inf values")


def check_depth_output(out: Any, num_frames: int, height: int, width: int) -> DepthPrediction:
    """A depth estimator's return value as a :class:`DepthPrediction` (module docstring)."""
    shape = (num_frames, height, width)
    if isinstance(out, DepthPrediction):
        out = {out.kind: out.values, "confidence": out.confidence, "metric": out.metric}
    if not isinstance(out, dict):
        out = {"depth": out}
    kinds = [k for k in DEPTH_KINDS if out.get(k) is not None]
    if len(kinds) != 1:
        raise EstimatorOutputError(f"depth output must hold exactly one of {', '.join(DEPTH_KINDS)}, "
                                   f"got keys {sorted(out)}")
    kind = kinds[0]
    values = _array(out[kind], kind, shape)
    _finite(values, kind)
    conf = out.get("confidence")
    if conf is not None:
        conf = _array(conf, "confidence", shape)
        _finite(conf, "confidence")
        conf = conf.astype(np.float32)
    if kind == "depth" and not (values > 0).any():
        raise EstimatorOutputError("depth has no positive value")
    return DepthPrediction(values.astype(np.float32), kind, bool(out.get("metric", False)), conf)


def _intrinsics(value: Any, num_frames: int) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (4,):
        arr = make_intrinsics(*arr)
    if arr.shape == (3, 3):
        arr = np.broadcast_to(arr, (num_frames, 3, 3)).copy()
    if arr.shape != (num_frames, 3, 3):
        raise EstimatorOutputError(f"intrinsics have shape {list(arr.shape)}, expected (3, 3), "
                                   f"({num_frames}, 3, 3) or [fx, fy, cx, cy]")
    _finite(arr, "intrinsics")
    if (arr[:, 0, 0] <= 0).any() or (arr[:, 1, 1] <= 0).any():
        raise EstimatorOutputError("intrinsics have a non-positive focal length")
    return arr


def sparse_from_points(points3d: np.ndarray, w2c: np.ndarray, k: np.ndarray, registered: np.ndarray,
                       height: int, width: int) -> list[np.ndarray]:
    """Per-frame ``(u, v, z)`` of world points that project inside the image in front of
    the camera (no occlusion test)."""
    out = []
    for i in range(len(w2c)):
        if not registered[i] or len(points3d) == 0:
            out.append(np.zeros((0, 3)))
            continue
        uv, z = project_points(points3d, w2c[i], k[i])
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        out.append(np.concatenate([uv[ok], z[ok, None]], axis=1))
    return out


def check_camera_output(out: Any, num_frames: int, height: int, width: int) -> CameraEstimate:
    """A camera estimator's return value as a :class:`CameraEstimate` (module docstring)."""
    if isinstance(out, CameraEstimate):
        return out
    if not isinstance(out, dict) or "w2c" not in out or "intrinsics" not in out:
        raise EstimatorOutputError("camera output must be a dict with 'w2c' and 'intrinsics'")
    w2c = out["w2c"]
    if hasattr(w2c, "detach"):
        w2c = w2c.detach().cpu().numpy()
    w2c = np.asarray(w2c, dtype=np.float64)
    if w2c.ndim != 3 or w2c.shape[0] != num_frames or w2c.shape[1:] not in ((3, 4), (4, 4)):
        raise EstimatorOutputError(f"w2c has shape {list(w2c.shape)}, expected ({num_frames}, 4, 4) "
                                   f"or ({num_frames}, 3, 4)")
    w2c = np.array(as_homogeneous(w2c), dtype=np.float64)
    reg = out.get("registered")
    registered = np.ones(num_frames, bool) if reg is None else np.asarray(reg, dtype=bool).reshape(-1)
    if registered.shape != (num_frames,):
        raise EstimatorOutputError(f"registered has {registered.size} entries, expected {num_frames}")
    _finite(w2c[registered], "w2c")
    err = rotation_orthonormality_error(w2c[registered, :3, :3])
    if len(err) and err.max() > 1e-3:
        raise EstimatorOutputError(f"w2c frame {int(np.flatnonzero(registered)[np.argmax(err)])} is not a "
                                   f"rotation (orthonormality error {err.max():.3g})")
    w2c[~registered] = np.nan
    k = _intrinsics(out["intrinsics"], num_frames)
    sparse = out.get("sparse")
    if sparse is not None:
        if len(sparse) != num_frames:
            raise EstimatorOutputError(f"sparse has {len(sparse)} frames, expected {num_frames}")
        checked = []
        for i, s in enumerate(sparse):
            s = np.asarray(s, dtype=np.float64).reshape(-1, 3) if np.size(s) else np.zeros((0, 3))
            _finite(s, f"sparse[{i}]")
            checked.append(s)
        sparse = checked
    elif out.get("points3d") is not None:
        pts = np.asarray(out["points3d"], dtype=np.float64).reshape(-1, 3)
        pts = pts[np.isfinite(pts).all(-1)]
        sparse = sparse_from_points(pts, w2c, k, registered, height, width)
    else:
        sparse = [np.zeros((0, 3)) for _ in range(num_frames)]
    return CameraEstimate(w2c, registered, k, sparse, float(out.get("reprojection_error", float("nan"))))
