"""Evaluation metrics for depth, cameras and point maps (SPEC section 7).

Everything is computed in **numpy float64**; inputs may be numpy arrays or torch tensors (any
device/dtype, converted with :func:`to_numpy`). Cameras are **world-to-camera** (w2c)
``(T, 4, 4)`` or ``(T, 3, 4)``, OpenCV axes; camera centres are ``c = -R^T t``. Angles are
reported in **degrees**.

Depth (per sequence, all frames aligned jointly)
  ``abs_rel = mean |d - d*| / d*`` and ``delta_1_25 = mean(max(d / d*, d* / d) < 1.25)`` over
  valid pixels with ``d* > 0``, after aligning the prediction by the median ratio
  ``median(d*) / median(d)`` or by least-squares scale and shift. Aligned depths are clamped
  to ``>= 1e-8`` for the ratio in ``delta`` (a scale+shift fit can go negative).

Trajectories
  ``ate``: RMSE of camera-centre errors after Umeyama Sim(3) alignment of the predicted
  centres to the ground truth. ``rpe_trans`` / ``rpe_rot``: RMSE over consecutive pairs of
  the translation norm / rotation angle of ``inv(Q_i^-1 Q_{i+1}) (P_i^-1 P_{i+1})`` (c2w
  poses, prediction ``P`` Sim(3)-aligned first), as evo's RPE with ``delta = 1`` frame.

Aligned trajectories
  :func:`align_trajectory_sim3` fits a Sim(3) on the camera orientations (chordal mean of
  the per-frame world rotations) and the centres (least-squares scale and shift);
  :func:`aligned_pose_errors` gives, after it, each frame's orientation error and the angle
  between the predicted and true displacement from the first camera (degrees).

Pairwise (VGGT, ``evaluation/test_co3d.py``)
  Over all pairs ``i < j``: relative poses ``w2c_i @ inverse(w2c_j)``; rotation error = angle
  between the ground-truth and predicted relative rotations; translation error = angle between
  the relative translation directions, folded to ``[0, 90]`` (``acos |cos|``, direction
  ambiguity; a zero-length translation scores 90). ``rra@15`` / ``rta@15`` = fraction of pairs
  below 15 degrees. ``auc@30``: with ``e = max(rot_err, trans_err)`` per pair, histogram into
  integer bins ``[0, 1), ..., [29, 30]``, cumulative fractions, mean over the 30 bins.

Point maps
  The prediction is Sim(3)-aligned to the ground truth with Umeyama on corresponding valid
  points (or a given transform). ``accuracy`` = mean distance from each predicted point to
  its nearest ground-truth point, ``completeness`` = mean distance from each ground-truth
  point to its nearest predicted point, ``chamfer`` = their average. Nearest neighbours are
  exact: a chunked brute-force search in torch on a GPU, else scipy's ``cKDTree`` when scipy
  is installed (it is only a test extra), else the brute force on the CPU
  (:func:`nearest_distances`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fantasyworld.geometry.cameras import as_homogeneous, invert_se3, rotation_angle_deg

__all__ = [
    "abs_rel",
    "align_trajectory_sim3",
    "aligned_pose_errors",
    "align_depth_median",
    "align_depth_scale_shift",
    "apply_sim3",
    "ate_rmse",
    "camera_centers",
    "delta_accuracy",
    "depth_metrics",
    "pairwise_pose_errors",
    "pairwise_pose_metrics",
    "pose_auc",
    "pointmap_metrics",
    "rotation_angle_deg",
    "rpe",
    "nearest_distances",
    "to_numpy",
    "trajectory_metrics",
    "umeyama_alignment",
]

_DEPTH_FLOOR = 1e-8


def to_numpy(x: Any) -> np.ndarray:
    """Torch tensor or array-like -> float64 numpy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------- depth


def _depth_inputs(pred: Any, gt: Any, valid: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = to_numpy(pred), to_numpy(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    mask = np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    if valid is not None:
        mask &= np.asarray(valid.detach().cpu() if hasattr(valid, "detach") else valid, dtype=bool)
    if not mask.any():
        raise ValueError("no valid depth pixel")
    return pred, gt, mask


def align_depth_median(pred: Any, gt: Any, valid: Any | None = None) -> tuple[np.ndarray, float]:
    """Scale ``pred`` (any shape, e.g. ``(T, H, W)``) by ``median(gt) / median(pred)`` over valid pixels.

    Returns the aligned prediction (full shape) and the scale.
    """
    pred, gt, mask = _depth_inputs(pred, gt, valid)
    scale = float(np.median(gt[mask]) / max(np.median(pred[mask]), _DEPTH_FLOOR))
    return pred * scale, scale


def align_depth_scale_shift(
    pred: Any, gt: Any, valid: Any | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Least-squares ``argmin_{s, b} sum_valid (s * pred + b - gt)^2``; returns (aligned, (s, b))."""
    pred, gt, mask = _depth_inputs(pred, gt, valid)
    p, g = pred[mask], gt[mask]
    design = np.stack([p, np.ones_like(p)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, g, rcond=None)
    return pred * scale + shift, (float(scale), float(shift))


def abs_rel(pred: Any, gt: Any, valid: Any | None = None) -> float:
    """Mean of ``|pred - gt| / gt`` over valid pixels with ``gt > 0`` (no alignment)."""
    pred, gt, mask = _depth_inputs(pred, gt, valid)
    return float(np.mean(np.abs(pred[mask] - gt[mask]) / gt[mask]))


def delta_accuracy(pred: Any, gt: Any, valid: Any | None = None, threshold: float = 1.25) -> float:
    """Fraction of valid pixels with ``max(pred / gt, gt / pred) < threshold`` (pred floored at 1e-8)."""
    pred, gt, mask = _depth_inputs(pred, gt, valid)
    p = np.maximum(pred[mask], _DEPTH_FLOOR)
    ratio = np.maximum(p / gt[mask], gt[mask] / p)
    return float(np.mean(ratio < threshold))


def depth_metrics(pred: Any, gt: Any, valid: Any | None = None) -> dict[str, float]:
    """Per-sequence depth metrics under both alignments.

    Args:
        pred, gt: depth of one sequence, e.g. ``(T, H, W)``; ``valid`` an optional bool mask.

    Returns:
        ``abs_rel_median``, ``delta_1_25_median`` (median-ratio scale), ``abs_rel_scale_shift``,
        ``delta_1_25_scale_shift`` (least-squares scale + shift), and the fitted ``median_scale``.
    """
    med, scale = align_depth_median(pred, gt, valid)
    ls, _ = align_depth_scale_shift(pred, gt, valid)
    return {
        "abs_rel_median": abs_rel(med, gt, valid),
        "delta_1_25_median": delta_accuracy(med, gt, valid),
        "abs_rel_scale_shift": abs_rel(ls, gt, valid),
        "delta_1_25_scale_shift": delta_accuracy(ls, gt, valid),
        "median_scale": scale,
    }


# ------------------------------------------------------------------------- alignment


def umeyama_alignment(
    src: Any, dst: Any, with_scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama 1991).

    Args:
        src, dst: corresponding points ``(N, 3)``, ``N >= 3`` not collinear for a unique R.
        with_scale: ``False`` fixes ``s = 1`` (SE(3)).

    Returns:
        ``(s, R (3, 3), t (3,))`` with ``det R = +1``.
    """
    src, dst = to_numpy(src).reshape(-1, 3), to_numpy(dst).reshape(-1, 3)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need matching (N>=2, 3) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / src.shape[0]
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var_s = (xs**2).sum() / src.shape[0]
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale and var_s > 0 else 1.0
    trans = mu_d - scale * rot @ mu_s
    return scale, rot, trans


def apply_sim3(points: Any, scale: float, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """``s * R @ x + t`` for points ``(..., 3)``."""
    return scale * to_numpy(points) @ np.asarray(rot).T + np.asarray(trans)


# ----------------------------------------------------------------------- trajectories


def _homogeneous(w2c: Any) -> np.ndarray:
    """``(T, 3|4, 4)`` cameras as numpy ``(T, 4, 4)`` (a 3x4 input becomes float64)."""
    w2c = to_numpy(w2c)
    if w2c.shape[-2:] == (3, 4):
        w2c = w2c.astype(np.float64)
    elif w2c.shape[-2:] != (4, 4):
        raise ValueError(f"expected (T, 3|4, 4) cameras, got {w2c.shape}")
    return as_homogeneous(w2c)


def camera_centers(w2c: Any) -> np.ndarray:
    """Camera centres ``(T, 3)`` in world coordinates from w2c ``(T, 3|4, 4)``: ``-R^T t``."""
    return invert_se3(_homogeneous(w2c))[..., :3, 3]


def _aligned_c2w(pred_w2c: Any, gt_w2c: Any, align: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """c2w poses ``(T, 4, 4)`` of prediction (Sim(3)-aligned on centres if ``align``) and gt."""
    pred_c2w, gt_c2w = invert_se3(_homogeneous(pred_w2c)), invert_se3(_homogeneous(gt_w2c))
    if pred_c2w.shape != gt_c2w.shape:
        raise ValueError(f"trajectories differ in shape: {pred_c2w.shape} vs {gt_c2w.shape}")
    scale = 1.0
    if align:
        scale, rot, trans = umeyama_alignment(pred_c2w[:, :3, 3], gt_c2w[:, :3, 3])
        pred_c2w = pred_c2w.copy()
        pred_c2w[:, :3, :3] = rot @ pred_c2w[:, :3, :3]
        pred_c2w[:, :3, 3] = apply_sim3(pred_c2w[:, :3, 3], scale, rot, trans)
    return pred_c2w, gt_c2w, scale


def ate_rmse(pred_w2c: Any, gt_w2c: Any, align: bool = True) -> float:
    """Absolute trajectory error: RMSE of camera-centre distances after Sim(3) alignment."""
    pred_c2w, gt_c2w, _ = _aligned_c2w(pred_w2c, gt_w2c, align)
    err = np.linalg.norm(pred_c2w[:, :3, 3] - gt_c2w[:, :3, 3], axis=-1)
    return float(np.sqrt(np.mean(err**2)))


def rpe(pred_w2c: Any, gt_w2c: Any, align: bool = True, delta: int = 1) -> dict[str, float]:
    """Relative pose error over frame pairs ``(i, i + delta)``: ``rpe_trans`` (RMSE, world units
    of the ground truth) and ``rpe_rot`` (RMSE, degrees). See the module docstring."""
    pred_c2w, gt_c2w, _ = _aligned_c2w(pred_w2c, gt_w2c, align)
    if pred_c2w.shape[0] <= delta:
        raise ValueError("trajectory too short for RPE")
    rel_gt = invert_se3(gt_c2w[:-delta]) @ gt_c2w[delta:]
    rel_pred = invert_se3(pred_c2w[:-delta]) @ pred_c2w[delta:]
    err = invert_se3(rel_gt) @ rel_pred
    trans = np.linalg.norm(err[:, :3, 3], axis=-1)
    rot = rotation_angle_deg(err[:, :3, :3])
    return {"rpe_trans": float(np.sqrt(np.mean(trans**2))), "rpe_rot": float(np.sqrt(np.mean(rot**2)))}


def pairwise_pose_errors(pred_w2c: Any, gt_w2c: Any) -> tuple[np.ndarray, np.ndarray]:
    """VGGT's relative rotation and translation angle errors (degrees) over all pairs ``i < j``.

    Returns:
        ``(rot_err (P,), trans_err (P,))`` with ``P = T (T - 1) / 2`` in ``itertools.combinations``
        order; ``trans_err`` is in ``[0, 90]``.
    """
    pred, gt = _homogeneous(pred_w2c), _homogeneous(gt_w2c)
    i, j = np.triu_indices(pred.shape[0], k=1)  # same order as torch.combinations
    rel_gt = gt[i] @ invert_se3(gt[j])
    rel_pred = pred[i] @ invert_se3(pred[j])
    rot_err = rotation_angle_deg(np.swapaxes(rel_gt[:, :3, :3], -1, -2) @ rel_pred[:, :3, :3])
    eps = 1e-15
    t_gt = rel_gt[:, :3, 3] / (np.linalg.norm(rel_gt[:, :3, 3], axis=-1, keepdims=True) + eps)
    t_pred = rel_pred[:, :3, 3] / (np.linalg.norm(rel_pred[:, :3, 3], axis=-1, keepdims=True) + eps)
    # angle between the two lines, acos|cos| in VGGT; the atan2 form is exact near 0 and 90
    cos = np.abs(np.sum(t_gt * t_pred, axis=-1))
    sin = np.linalg.norm(np.cross(t_gt, t_pred), axis=-1)
    trans_err = np.where(cos + sin > 0, np.degrees(np.arctan2(sin, cos)), 90.0)
    return rot_err, trans_err


def pose_auc(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int = 30) -> float:
    """VGGT's AUC@max_threshold of ``max(rot_err, trans_err)`` with 1-degree bins (module docstring)."""
    max_err = np.maximum(np.asarray(rot_err), np.asarray(trans_err))
    hist, _ = np.histogram(max_err, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(hist / max(len(max_err), 1))))


def pairwise_pose_metrics(pred_w2c: Any, gt_w2c: Any, threshold: float = 15.0) -> dict[str, float]:
    """``rra@15``, ``rta@15`` (fractions in [0, 1]) and ``auc@30`` (in [0, 1]) as VGGT computes them."""
    rot_err, trans_err = pairwise_pose_errors(pred_w2c, gt_w2c)
    tag = f"{threshold:g}"
    return {
        f"rra@{tag}": float(np.mean(rot_err < threshold)),
        f"rta@{tag}": float(np.mean(trans_err < threshold)),
        "auc@30": pose_auc(rot_err, trans_err, 30),
    }


def trajectory_metrics(pred_w2c: Any, gt_w2c: Any) -> dict[str, float]:
    """All camera metrics of one sequence: ``ate``, ``rpe_trans``, ``rpe_rot``, ``rra@15``,
    ``rta@15``, ``auc@30``."""
    out = {"ate": ate_rmse(pred_w2c, gt_w2c)}
    out.update(rpe(pred_w2c, gt_w2c))
    out.update(pairwise_pose_metrics(pred_w2c, gt_w2c))
    return out


# ------------------------------------------------------------------------ point maps


def nearest_distances(query: np.ndarray, reference: np.ndarray, chunk: int = 4096,
                      device: str | None = None) -> np.ndarray:
    """Euclidean distance ``(N,)`` from each ``query`` point ``(N, 3)`` to its nearest
    ``reference`` point ``(M, 3)``.

    On a GPU (``device`` None and CUDA available, or ``device="cuda"``) a brute-force search,
    ``chunk`` queries at a time: squared distances as one float64 matrix product
    (``|q|^2 + |r|^2 - 2 q.r``) pick the nearest point, whose distance is then computed directly
    (so it is exact; the pick can differ from the true nearest point only between points whose
    distances agree to float64 rounding). Milliseconds for the subsampled clouds of
    :func:`pointmap_metrics`, where a k-d tree on the host takes tenths of a second (most for
    the degenerate one-plane baseline) and a pairwise-difference kernel longer still. Else
    scipy's ``cKDTree`` on every core if scipy is installed; else the same search on the CPU.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else None
    if device is None:
        try:
            from scipy.spatial import cKDTree
        except ImportError:
            device = "cpu"
        else:
            return cKDTree(reference).query(query, workers=-1)[0]  # the queries on every core
    if len(query) == 0:
        return np.zeros(0)
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float64)).to(device)
    que = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float64)).to(device)
    ref_sq = ref.square().sum(1)
    out = []
    for i in range(0, len(que), chunk):
        q = que[i:i + chunk]
        d2 = torch.addmm(ref_sq[None, :] + q.square().sum(1, keepdim=True), q, ref.T, alpha=-2.0)
        out.append((q - ref[d2.argmin(dim=1)]).norm(dim=1))
    return torch.cat(out).cpu().numpy()


def pointmap_metrics(
    pred_points: Any,
    gt_points: Any,
    valid: Any | None = None,
    *,
    align: bool = True,
    sim3: tuple[float, np.ndarray, np.ndarray] | None = None,
    max_points: int | None = 200_000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy, completeness and Chamfer distance of a point map after Sim(3) alignment.

    Args:
        pred_points, gt_points: corresponding point maps ``(..., 3)`` (e.g. ``(T, H, W, 3)``).
        valid: optional bool mask ``(...)``; non-finite points are always dropped.
        align: Umeyama Sim(3) of the valid predicted points onto their ground truth.
        sim3: use this ``(s, R, t)`` instead (e.g. from the trajectory alignment).
        max_points: random subsample (seeded) of each cloud for the nearest-neighbour search.

    Returns:
        ``accuracy``, ``completeness``, ``chamfer`` (ground-truth units), ``align_scale``.
    """
    pred, gt = to_numpy(pred_points), to_numpy(gt_points)
    mask = np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1)
    if valid is not None:
        mask &= np.asarray(valid.detach().cpu() if hasattr(valid, "detach") else valid, dtype=bool)
    pred, gt = pred[mask], gt[mask]
    if len(pred) == 0:
        raise ValueError("no valid point")
    scale = 1.0
    if sim3 is not None:
        scale, rot, trans = sim3
        pred = apply_sim3(pred, scale, rot, trans)
    elif align:
        scale, rot, trans = umeyama_alignment(pred, gt)
        pred = apply_sim3(pred, scale, rot, trans)
    rng = np.random.default_rng(seed)
    if max_points is not None and len(pred) > max_points:
        pred = pred[rng.choice(len(pred), max_points, replace=False)]
        gt = gt[rng.choice(len(gt), max_points, replace=False)]
    acc = float(np.mean(nearest_distances(pred, gt)))
    comp = float(np.mean(nearest_distances(gt, pred)))
    return {"accuracy": acc, "completeness": comp, "chamfer": 0.5 * (acc + comp), "align_scale": float(scale)}


# ----------------------------------------------------------------- aligned trajectories


def align_trajectory_sim3(pred_w2c: Any, gt_w2c: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``x_gt = s R x_pred + t`` taking a predicted trajectory onto the ground
    truth, fitted on the **orientations and the centres**: ``R`` is the chordal mean of the
    per-frame world rotations ``Q_gt,i Q_pred,i^T`` (``Q`` camera-to-world rotations,
    projected onto SO(3) by SVD), then ``s`` and ``t`` are the least-squares fit of the
    rotated predicted centres to the true ones. Unlike Umeyama on the centres alone it is
    well posed for straight-line trajectories (a dolly, a pan), whose centres leave the
    rotation about the line free.

    Returns:
        ``(s, R (3, 3), t (3,))``.
    """
    pred, gt = _homogeneous(pred_w2c), _homogeneous(gt_w2c)
    if pred.shape != gt.shape:
        raise ValueError(f"trajectories differ in shape: {pred.shape} vs {gt.shape}")
    q_pred = np.swapaxes(pred[:, :3, :3], -1, -2)
    q_gt = np.swapaxes(gt[:, :3, :3], -1, -2)
    u, _, vt = np.linalg.svd((q_gt @ np.swapaxes(q_pred, -1, -2)).sum(0))
    sign = np.eye(3)
    sign[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ sign @ vt
    c_pred = camera_centers(pred) @ rot.T
    c_gt = camera_centers(gt)
    dp, dg = c_pred - c_pred.mean(0), c_gt - c_gt.mean(0)
    denom = float((dp**2).sum())
    scale = float((dp * dg).sum() / denom) if denom > 0 else 1.0
    trans = c_gt.mean(0) - scale * c_pred.mean(0)
    return scale, rot, trans


def aligned_pose_errors(pred_w2c: Any, gt_w2c: Any) -> dict[str, np.ndarray | float]:
    """Per-frame camera errors after :func:`align_trajectory_sim3`.

    Returns:
        ``rot_err`` ``(T,)``: angle (degrees) between each aligned predicted camera
        orientation and the true one; ``trans_dir_err`` ``(T - 1,)``: angle (degrees)
        between the aligned predicted displacement from the first camera ``c_i - c_0`` and
        the true one (``i >= 1``; 90 where either is zero); ``center_err`` ``(T,)``:
        distance of the aligned centres to the true ones (ground-truth units); and
        ``scale``, the alignment's scale.
    """
    pred, gt = _homogeneous(pred_w2c), _homogeneous(gt_w2c)
    scale, rot, trans = align_trajectory_sim3(pred, gt)
    q_pred = rot @ np.swapaxes(pred[:, :3, :3], -1, -2)
    q_gt = np.swapaxes(gt[:, :3, :3], -1, -2)
    rot_err = rotation_angle_deg(np.swapaxes(q_gt, -1, -2) @ q_pred)
    c_pred = apply_sim3(camera_centers(pred), scale, rot, trans)
    c_gt = camera_centers(gt)
    d_pred, d_gt = c_pred[1:] - c_pred[:1], c_gt[1:] - c_gt[:1]
    cos = (d_pred * d_gt).sum(-1)
    sin = np.linalg.norm(np.cross(d_pred, d_gt), axis=-1)
    ok = (np.linalg.norm(d_pred, axis=-1) > 0) & (np.linalg.norm(d_gt, axis=-1) > 0)
    trans_dir = np.where(ok, np.degrees(np.arctan2(sin, cos)), 90.0)
    return {"rot_err": rot_err, "trans_dir_err": trans_dir,
            "center_err": np.linalg.norm(c_pred - c_gt, axis=-1), "scale": scale}
