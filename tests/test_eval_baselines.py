"""Trivial baselines, the held-out split, per-clip scoring and the acceptance check on
hand-made cases (exact arithmetic; tolerances 1e-9 for float64 round-off)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fantasyworld.data.split import clip_hash, select_split, split_clip_ids
from fantasyworld.eval import baselines
from fantasyworld.eval.evaluate import acceptance, baseline_prediction, score_clip, summarize
from fantasyworld.eval.metrics import nearest_distances


def _yaw_w2c(deg: float, centre: tuple[float, float, float]) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    rot = np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])  # c2w rotation about y
    out = np.eye(4)
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ np.asarray(centre)
    return out


def _clip() -> dict[str, np.ndarray]:
    """3 frames of 2x2 pixels: depths 1..4 in each frame, cameras yawed 0, 10, 30 degrees."""
    depth = np.tile(np.array([[1.0, 2.0], [3.0, 4.0]]), (3, 1, 1))
    k = np.tile(np.array([[2.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1.0]]), (3, 1, 1))
    w2c = np.stack([_yaw_w2c(a, (x, 0.0, 0.0)) for a, x in ((0, 0.0), (10, 1.0), (30, 2.0))])
    points = np.random.default_rng(0).normal(size=(3, 2, 2, 3))
    return {"depth": depth, "valid": depth > 0, "w2c": w2c, "points": points, "intrinsics": k}


def test_constant_depth_baseline_is_the_median_after_alignment():
    gt = _clip()
    scores = score_clip({"depth": baselines.constant_depth(gt["depth"].shape)}, gt)
    # median of {1,2,3,4} x3 is 2.5: |2.5 - d| / d = 1.5, 0.25, 1/6, 0.375 -> mean 2.291666/4
    assert scores["abs_rel_median"] == pytest.approx((1.5 + 0.25 + 1 / 6 + 0.375) / 4, abs=1e-9)
    # ratios 2.5, 1.25, 1.2, 1.6: only 1.2 < 1.25
    assert scores["delta_1_25_median"] == pytest.approx(0.25, abs=1e-9)
    # least squares on a constant predicts the mean, 2.5 as well
    assert scores["abs_rel_scale_shift"] == pytest.approx(scores["abs_rel_median"], abs=1e-9)


def test_identity_poses_baseline_scores_the_true_relative_rotations():
    gt = _clip()
    scores = score_clip({"w2c": baselines.identity_poses(3)}, gt)
    # pairwise true rotations: 10, 30, 20 degrees -> mean 20; RRA@15: 1 pair of 3
    assert scores["rot_err"] == pytest.approx(20.0, abs=1e-9)
    assert scores["rra@15"] == pytest.approx(1 / 3)
    # no predicted motion: VGGT scores every translation direction as 90 degrees
    assert scores["trans_err"] == 90.0 and scores["rta@15"] == 0.0 and scores["auc@30"] == 0.0
    # ATE of a motionless prediction = spread of the centres around their mean (0, 1, 2 on x)
    assert scores["ate"] == pytest.approx(math.sqrt(2 / 3), abs=1e-9)
    # the model's exact cameras score perfectly
    perfect = score_clip({"w2c": gt["w2c"]}, gt)
    assert perfect["rot_err"] < 1e-6 and perfect["ate"] < 1e-9 and perfect["auc@30"] == 1.0


def test_plane_points_baseline_is_one_plane_and_aligns_exactly_onto_a_plane():
    gt = _clip()
    plane = baselines.plane_points(gt["intrinsics"], 2, 2)
    assert plane.shape == (3, 2, 2, 3)
    np.testing.assert_allclose(plane[..., 2], 1.0)
    np.testing.assert_allclose(plane[0, 0, 0], [(0.5 - 1.0) / 2, (0.5 - 1.0) / 2, 1.0])
    # ground truth that is itself a scaled, shifted copy of the plane scores zero
    gt["points"] = 3.0 * plane + np.array([1.0, -2.0, 5.0])
    scores = score_clip({"world_points": plane}, gt)
    assert scores["chamfer"] < 1e-9


def test_baseline_prediction_has_every_kind_of_geometry():
    gt = _clip()
    pred = baseline_prediction(gt)
    assert pred["depth"].shape == (3, 2, 2) and pred["w2c"].shape == (3, 4, 4)
    assert pred["world_points"].shape == (3, 2, 2, 3)
    assert set(score_clip(pred, gt)) >= {"abs_rel_median", "rot_err", "ate", "chamfer"}


def test_acceptance_needs_two_times_better_on_both_bars():
    per_clip = {
        "a": {"latents": {"model": {"abs_rel_median": 0.1, "rot_err": 4.0},
                          "baseline": {"abs_rel_median": 0.3, "rot_err": 10.0}}},
        "b": {"latents": {"model": {"abs_rel_median": 0.1, "rot_err": 6.0},
                          "baseline": {"abs_rel_median": 0.3, "rot_err": 10.0}}},
    }
    summary = summarize(per_clip)
    assert summary["latents"]["model"]["rot_err"] == pytest.approx(5.0)
    acc = acceptance(summary)
    assert acc["depth_abs_rel"]["ratio"] == pytest.approx(3.0) and acc["depth_abs_rel"]["passed"]
    assert acc["rotation_error"]["ratio"] == pytest.approx(2.0) and acc["rotation_error"]["passed"]
    assert acc["passed"] and acc["verdict"].startswith("PASS")
    per_clip["b"]["latents"]["model"]["rot_err"] = 8.0  # mean 6 -> ratio 1.67
    acc = acceptance(summarize(per_clip))
    assert not acc["rotation_error"]["passed"] and not acc["passed"]
    assert "rotation_error" in acc["verdict"] and "MISSED" in acc["verdict"]


def test_held_out_split_is_by_clip_id_hash_and_never_empty():
    ids = [f"clip_{i:05d}" for i in range(200)]
    train, held = split_clip_ids(ids, 0.2)
    assert set(train).isdisjoint(held) and sorted(train + held) == sorted(ids)
    assert held == [c for c in ids if clip_hash(c) < 0.2]
    assert 20 < len(held) < 60
    # membership of a clip does not depend on the other clips
    assert split_clip_ids(ids[:50], 0.2)[1] == [c for c in held if c in ids[:50]]
    # tiny datasets still hold one clip out: the smallest hash
    _, one = split_clip_ids(["x", "y"], 1e-9)
    assert one == [min(["x", "y"], key=clip_hash)]
    assert select_split(ids, "all") == ids and select_split(ids, "train") == train
    with pytest.raises(ValueError, match="split"):
        select_split(ids, "test")


def test_nearest_distances_brute_force_matches_hand_values(monkeypatch):
    query = np.array([[0.0, 0, 0], [3.0, 0, 0], [0, 0, -2.0]])
    ref = np.array([[1.0, 0, 0], [0, 0, 0]])
    expected = [0.0, 2.0, 2.0]
    np.testing.assert_allclose(nearest_distances(query, ref), expected)
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    np.testing.assert_allclose(nearest_distances(query, ref, chunk=2), expected)


def test_brute_force_search_equals_the_kd_tree_on_a_degenerate_cloud():
    # the one-plane baseline: every frame's points on the same plane, many of them repeated
    rng = np.random.default_rng(0)
    plane = np.concatenate([rng.uniform(-1, 1, (300, 2)), np.ones((300, 1))], axis=1)
    ref = np.concatenate([plane] * 4)
    query = rng.normal(size=(500, 3)) * 2.0
    tree = nearest_distances(query, ref)  # cKDTree (scipy is a test extra)
    brute = nearest_distances(query, ref, chunk=128, device="cpu")  # the GPU's search, on the CPU
    np.testing.assert_allclose(brute, tree, rtol=1e-12, atol=1e-12)
