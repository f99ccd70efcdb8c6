"""Evaluation metrics on hand-computed cases and known perturbations.

Tolerances: metrics run in float64; exact cases (alignment of an exactly similar trajectory
or cloud) leave ~1e-12 round-off, so 1e-9 is used. Angles from atan2 are accurate to
~1e-13 degrees; the RRA/AUC cases are counts, so they are compared exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fantasyworld.eval.metrics import (
    abs_rel,
    align_depth_median,
    align_depth_scale_shift,
    ate_rmse,
    camera_centers,
    delta_accuracy,
    depth_metrics,
    pairwise_pose_errors,
    pairwise_pose_metrics,
    pointmap_metrics,
    pose_auc,
    rpe,
    trajectory_metrics,
    umeyama_alignment,
)

ATOL = 1e-9


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _w2c(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, trans
    return out


def _from_c2w(rot: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return _w2c(rot.T, -rot.T @ centre)


def _random_trajectory(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(-90, 90, size=3)
        r = _rot("z", a) @ _rot("y", b) @ _rot("x", c)
        out.append(_w2c(r, rng.normal(size=3) * 2))
    return np.stack(out)


def _similar_trajectory(w2c: np.ndarray, s: float, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Cameras of the world X' = s R X + t: w2c'_i = [R_i R^T | s t_i - R_i R^T t]."""
    out = w2c.copy()
    out[:, :3, :3] = w2c[:, :3, :3] @ r.T
    out[:, :3, 3] = s * w2c[:, :3, 3] - np.einsum("nij,j->ni", out[:, :3, :3], t)
    return out


# --------------------------------------------------------------------------- depth


def test_depth_hand_computed_median_alignment_with_mask():
    pred = np.array([1.0, 3.0, 10.0, 100.0])
    gt = np.array([2.0, 6.0, 5.0, 0.1])
    valid = np.array([True, True, True, False])
    aligned, scale = align_depth_median(pred, gt, valid)
    assert scale == pytest.approx(5.0 / 3.0)  # median(gt)=5, median(pred)=3 over valid
    # aligned = [5/3, 5, 50/3]: rel errors 1/6, 1/6, 7/3 -> mean 8/9 ; ratios 1.2, 1.2, 3.33 -> 2/3
    assert abs_rel(aligned, gt, valid) == pytest.approx(8.0 / 9.0, abs=ATOL)
    assert delta_accuracy(aligned, gt, valid) == pytest.approx(2.0 / 3.0, abs=ATOL)
    m = depth_metrics(torch.tensor(pred), torch.tensor(gt), torch.tensor(valid))
    assert m["abs_rel_median"] == pytest.approx(8.0 / 9.0, abs=ATOL)


def test_depth_scale_shift_recovers_affine_prediction():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 5, size=(3, 4, 5))
    pred = 0.5 * gt - 0.3
    aligned, (s, b) = align_depth_scale_shift(pred, gt)
    assert s == pytest.approx(2.0, abs=ATOL) and b == pytest.approx(0.6, abs=ATOL)
    m = depth_metrics(pred, gt)
    assert m["abs_rel_scale_shift"] < ATOL and m["delta_1_25_scale_shift"] == 1.0
    # A pure scale is removed by both alignments.
    m = depth_metrics(3.0 * gt, gt)
    assert m["abs_rel_median"] < ATOL and m["delta_1_25_median"] == 1.0


# ---------------------------------------------------------------------- trajectories


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    r = _rot("z", 40) @ _rot("x", -70)
    dst = 2.5 * src @ r.T + np.array([1.0, -2.0, 3.0])
    s, rot, t = umeyama_alignment(src, dst)
    assert s == pytest.approx(2.5, abs=ATOL)
    np.testing.assert_allclose(rot, r, atol=ATOL)
    np.testing.assert_allclose(t, [1.0, -2.0, 3.0], atol=ATOL)


def test_similar_trajectory_scores_perfectly_after_alignment():
    gt = _random_trajectory(6, seed=2)
    pred = _similar_trajectory(gt, 0.3, _rot("y", 123) @ _rot("z", 10), np.array([4.0, 5.0, -6.0]))
    m = trajectory_metrics(torch.tensor(pred), gt[:, :3, :])  # torch and 3x4 inputs accepted
    assert m["ate"] < ATOL and m["rpe_trans"] < ATOL and m["rpe_rot"] < 1e-6
    assert m["rra@15"] == 1.0 and m["rta@15"] == 1.0 and m["auc@30"] == 1.0
    # Without alignment the same trajectory is far off.
    assert ate_rmse(pred, gt, align=False) > 0.5


def test_ate_hand_computed_without_alignment():
    gt = np.stack([_from_c2w(np.eye(3), np.array([x, 0.0, 0.0])) for x in range(4)])
    pred = np.stack([_from_c2w(np.eye(3), np.array([x, 0.3, 0.4])) for x in range(4)])
    np.testing.assert_allclose(camera_centers(pred)[2], [2.0, 0.3, 0.4], atol=ATOL)
    assert ate_rmse(pred, gt, align=False) == pytest.approx(0.5, abs=ATOL)  # |(0, .3, .4)| = .5
    assert ate_rmse(pred, gt) < ATOL  # a constant offset is aligned away


def test_rpe_hand_computed():
    gt = np.stack([_from_c2w(np.eye(3), np.array([x, 0.0, 0.0])) for x in range(3)])
    # (a) last position off by 0.5 along x: consecutive errors 0 and 0.5 -> RMSE sqrt(0.125)
    pred = gt.copy()
    pred[2] = _from_c2w(np.eye(3), np.array([2.5, 0.0, 0.0]))
    r = rpe(pred, gt, align=False)
    assert r["rpe_trans"] == pytest.approx(math.sqrt(0.125), abs=ATOL) and r["rpe_rot"] < ATOL
    # (b) last camera yawed 10 degrees in place: errors 0 and 10 deg -> RMSE sqrt(50)
    pred = gt.copy()
    pred[2] = _from_c2w(_rot("z", 10), np.array([2.0, 0.0, 0.0]))
    r = rpe(pred, gt, align=False)
    assert r["rpe_rot"] == pytest.approx(math.sqrt(50.0), abs=1e-9) and r["rpe_trans"] < ATOL


def test_known_rotation_error_gives_known_rra_and_auc():
    # Camera 2 sits at the world origin, so rotating it changes no relative translation.
    gt = np.stack([_w2c(np.eye(3), np.array([1.0, 0, 0])), _w2c(np.eye(3), np.array([0, 1.0, 0])),
                   _w2c(np.eye(3), np.zeros(3))])
    pred = gt.copy()
    pred[2] = _w2c(_rot("z", 20), np.zeros(3))
    rot_err, trans_err = pairwise_pose_errors(pred, gt)  # pairs (0,1), (0,2), (1,2)
    np.testing.assert_allclose(rot_err, [0.0, 20.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(trans_err, [0.0, 0.0, 0.0], atol=1e-9)
    m = pairwise_pose_metrics(pred, gt)
    assert m["rra@15"] == pytest.approx(1 / 3) and m["rta@15"] == 1.0
    # max errors [0, 20, 20]: cumulative 1/3 on bins 0..19, 1 on bins 20..29 -> (20/3 + 10) / 30
    assert m["auc@30"] == pytest.approx(5 / 9, abs=1e-12)


def test_translation_angle_error_is_folded_to_90_degrees():
    gt = np.stack([_w2c(np.eye(3), np.array([1.0, 0, 0])), np.eye(4)])
    for angle, expected in ((30.0, 30.0), (150.0, 30.0), (90.0, 90.0)):
        pred = np.stack([_w2c(np.eye(3), _rot("z", angle) @ np.array([1.0, 0, 0])), np.eye(4)])
        _, trans_err = pairwise_pose_errors(pred, gt)
        assert trans_err[0] == pytest.approx(expected, abs=1e-9)
    # VGGT scores a pair without relative translation as 90 degrees (its eps-normalised zero vector).
    _, trans_err = pairwise_pose_errors(np.stack([np.eye(4), np.eye(4)]), np.stack([np.eye(4), np.eye(4)]))
    assert trans_err[0] == 90.0


def test_pose_auc_uses_max_of_rotation_and_translation_error():
    # rot 0.5 / trans 2.5 -> max 2.5 (bin 2); cumulative fraction is 0,0,1,1,... over 5 bins -> 3/5
    assert pose_auc(np.array([0.5]), np.array([2.5]), max_threshold=5) == pytest.approx(0.6)
    assert pose_auc(np.array([31.0]), np.array([0.0]), max_threshold=30) == 0.0


# ------------------------------------------------------------------------ point maps


def test_pointmap_metrics_hand_computed_without_alignment():
    gt = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    pred = np.array([[0.0, 0, 0], [3.0, 0, 0]])
    m = pointmap_metrics(pred, gt, align=False)
    # accuracy: pred->gt NN distances 0, 2 -> 1 ; completeness: gt->pred 0, 1 -> 0.5
    assert m["accuracy"] == pytest.approx(1.0) and m["completeness"] == pytest.approx(0.5)
    assert m["chamfer"] == pytest.approx(0.75)


def test_pointmap_metrics_zero_for_similar_cloud_and_mask_respected():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(2, 5, 6, 3))
    pred = 0.2 * gt @ (_rot("x", 33) @ _rot("y", 77)).T + np.array([1.0, 2.0, 3.0])
    valid = rng.uniform(size=(2, 5, 6)) > 0.2
    pred[~valid] = 1e6  # garbage at invalid pixels must be ignored
    m = pointmap_metrics(torch.tensor(pred), gt, valid)
    assert m["accuracy"] < ATOL and m["completeness"] < ATOL and m["chamfer"] < ATOL
    assert m["align_scale"] == pytest.approx(5.0, abs=ATOL)
