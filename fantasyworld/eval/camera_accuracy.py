"""Camera accuracy of generated videos, as camera-control papers measure it.

``fantasyworld evaluate --reestimate-cameras``: structure from motion
(:func:`fantasyworld.data.annotate.sfm.run_sfm`, pycolmap, the same as ``data annotate``)
runs on the frames the model generated, with the **requested intrinsics fixed** (as
CamI2V's evaluation gives GLOMAP the camera parameters and turns intrinsics refinement
off), and the recovered cameras are compared with the requested trajectory.

Protocol (CamI2V, ``evaluation/glomap_evaluation.py``; CameraCtrl defines the same three
sums):

* both trajectories are made relative to their first frame (camera-to-world
  ``c2w_0^-1 c2w_i``; here the first *registered* frame, for both);
* translations are normalised per trajectory by its own largest camera distance from that
  first frame (``t_i / max_j |t_j|``; the scale of SfM and of the request both drop out);
* ``RotErr = sum_i angle(R_req,i^T R_est,i)`` in **radians**, ``TransErr = sum_i
  |t_req,i - t_est,i|``, ``CamMC = sum_i |[R|t]_req,i - [R|t]_est,i|_F`` (Frobenius norm
  of the 3x4 difference), each summed over the frames compared (papers use 16 or 25
  frames, so compare sums at equal frame counts; ``*_per_frame`` are the sums divided by
  the number of frames, and ``rot_err_deg`` the mean angle in degrees).

A clip counts as an **SfM failure** (no numbers, its reason instead) when fewer than
``min_registered`` of its frames are registered; the summary gives the failure rate and
the means over the clips that did not fail. The same three sums are computed for the
cameras the model itself predicts, next to them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fantasyworld.geometry.cameras import as_homogeneous, invert_se3, relative_to_first, rotation_angle_deg

CAMCTRL_KEYS = ("RotErr", "TransErr", "CamMC")


def camera_control_errors(est_w2c: np.ndarray, req_w2c: np.ndarray) -> dict[str, float]:
    """``RotErr``, ``TransErr``, ``CamMC`` (sums over frames, module docstring) of estimated
    cameras against requested ones, both world-to-camera ``(T, 4, 4)`` in any frame/scale."""
    est = np.asarray(as_homogeneous(np.asarray(est_w2c, dtype=np.float64)))
    req = np.asarray(as_homogeneous(np.asarray(req_w2c, dtype=np.float64)))
    if est.shape != req.shape:
        raise ValueError(f"trajectories differ in shape: {est.shape} vs {req.shape}")
    c_est = invert_se3(relative_to_first(est))  # c2w_0^-1 c2w_i
    c_req = invert_se3(relative_to_first(req))
    for c in (c_est, c_req):
        scale = float(np.linalg.norm(c[:, :3, 3], axis=-1).max())
        c[:, :3, 3] /= scale + 1e-9
    rot = np.radians(rotation_angle_deg(np.swapaxes(c_req[:, :3, :3], -1, -2) @ c_est[:, :3, :3]))
    trans = np.linalg.norm(c_req[:, :3, 3] - c_est[:, :3, 3], axis=-1)
    cammc = np.linalg.norm((c_req[:, :3, :4] - c_est[:, :3, :4]).reshape(len(c_req), 12), axis=-1)
    n = len(c_req)
    return {"RotErr": float(rot.sum()), "TransErr": float(trans.sum()), "CamMC": float(cammc.sum()),
            "RotErr_per_frame": float(rot.sum() / n), "TransErr_per_frame": float(trans.sum() / n),
            "CamMC_per_frame": float(cammc.sum() / n), "rot_err_deg": float(np.degrees(rot).mean()),
            "num_frames": n}


def reestimated_camera_accuracy(frames: np.ndarray, req_w2c: np.ndarray, intrinsics: np.ndarray,
                                min_registered: float = 0.8, mapper: str = "incremental",
                                num_threads: int = -1) -> dict[str, Any]:
    """SfM on ``frames`` ``(T, H, W, 3)`` uint8 with ``intrinsics`` ``(3, 3)`` fixed, scored
    against ``req_w2c`` ``(T, 4, 4)`` (module docstring).

    Returns:
        ``{"status": "ok", RotErr, TransErr, CamMC, ..., "registered_fraction"}`` or
        ``{"status": "failed", "reason": ..., "registered_fraction"}``.
    """
    from fantasyworld.data.annotate.sfm import SfmOptions, run_sfm

    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype}")
    res = run_sfm(frames, SfmOptions(intrinsics=np.asarray(intrinsics, dtype=np.float64).reshape(3, 3),
                                     mapper=mapper, num_threads=num_threads))
    frac = res.registered_fraction
    out: dict[str, Any] = {"registered_fraction": frac, "reprojection_error": _num(res.reprojection_error),
                           "sfm_seconds": res.seconds}
    if frac < min_registered or res.registered.sum() < 2:
        why = res.message or f"{int(res.registered.sum())}/{len(frames)} frames registered"
        return {"status": "failed", "reason": f"SfM: {why} (need {min_registered:.0%})", **out}
    reg = res.registered
    return {"status": "ok", **camera_control_errors(res.w2c[reg], np.asarray(req_w2c)[reg]), **out}


def summarize_camera_accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Failure rate and means over the clips that did not fail."""
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    keys = (*CAMCTRL_KEYS, "RotErr_per_frame", "TransErr_per_frame", "CamMC_per_frame", "rot_err_deg")
    out: dict[str, Any] = {k: (float(np.mean([r[k] for r in ok])) if ok else float("nan")) for k in keys}
    out.update(num_clips=len(rows), num_failed=len(rows) - len(ok),
               sfm_failure_rate=(len(rows) - len(ok)) / len(rows) if rows else float("nan"))
    return out


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None
