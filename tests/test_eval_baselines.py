"""Trivial baselines, the token-resolution depth oracle, the held-out split, per-clip scoring
and the acceptance check on hand-made cases (exact arithmetic; tolerances 1e-9 for float64
round-off)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fantasyworld.data.split import clip_hash, select_split, split_clip_ids
from fantasyworld.data.synth import render_clip
from fantasyworld.eval import baselines
from fantasyworld.eval.evaluate import DEPTH_KEYS, acceptance, baseline_prediction, score_clip, summarize
from fantasyworld.eval.metrics import depth_metrics, nearest_distances
from fantasyworld.eval.report import _table_rows


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


def test_token_depth_of_a_constant_depth_is_that_constant():
    ones = np.ones((2, 32, 48), dtype=bool)
    # 2.5 and the bilinear weights (multiples of 1/32) are dyadic: every step is exact
    depth = np.full((2, 32, 48), 2.5)
    oracle = baselines.token_depth(depth, ones)
    assert oracle.dtype == np.float64 and oracle.shape == (2, 32, 48)
    assert np.array_equal(oracle, depth)
    assert depth_metrics(oracle, depth, ones)["abs_rel_median"] == 0.0
    # 3.7 is not: the cell sums and the weights round at float64's 1e-16
    np.testing.assert_allclose(baselines.token_depth(np.full((2, 32, 48), 3.7), ones), 3.7, rtol=1e-13, atol=0)
    assert baselines.TOKEN_PIXELS == 16


def test_token_depth_of_a_ramp_is_exact_between_the_cell_centres():
    # d = 1 + 0.1 x: a cell's mean is the ramp at its centre x = 16 j + 7.5, and bilinear
    # upsampling (align_corners=False) maps pixel x to those centres linearly, so pixels
    # 8..39 (between the first and the last centre) are exact; beyond them the value is held
    # at the outer centres, 1.75 (x <= 7) and 4.95 (x >= 40)
    x = np.arange(48.0)
    depth = np.broadcast_to(1.0 + 0.1 * x, (2, 32, 48)).copy()
    ones = np.ones(depth.shape, dtype=bool)
    oracle = baselines.token_depth(depth, ones)
    np.testing.assert_allclose(oracle[..., 8:40], depth[..., 8:40], rtol=0, atol=1e-12)
    np.testing.assert_allclose(oracle[..., :8], 1.75, rtol=0, atol=1e-12)
    np.testing.assert_allclose(oracle[..., 40:], 4.95, rtol=0, atol=1e-12)
    # both medians are 3.35 (columns 23 and 24), so the alignment is the identity and the
    # AbsRel is the edge columns' relative error averaged over all 48 columns
    edges = [abs(1.75 - (1 + 0.1 * i)) / (1 + 0.1 * i) for i in range(8)]
    edges += [abs(4.95 - (1 + 0.1 * i)) / (1 + 0.1 * i) for i in range(40, 48)]
    scores = depth_metrics(oracle, depth, ones)
    assert scores["median_scale"] == pytest.approx(1.0, abs=1e-12)
    assert scores["abs_rel_median"] == pytest.approx(sum(edges) / 48, abs=1e-12)  # 0.0681


def test_token_depth_fills_cells_and_frames_without_valid_pixels():
    # 3 frames of 2 x 3 cells; frame 0's cells hold 1..6, frame 2 only its cell (0, 0)
    cells = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    depth = np.zeros((3, 32, 48))
    depth[0] = np.kron(cells, np.ones((16, 16)))
    depth[2, :16, :16] = 7.0
    valid = depth > 0
    valid[0, :16, :16] = False  # cell (0, 0) of frame 0 empty
    depth[0, 16:, 40:] = np.inf  # cell (1, 2): its right half invalid, holding inf
    valid[0, 16:, 40:] = False
    oracle = baselines.token_depth(depth, valid)
    assert np.isfinite(oracle).all()
    # the empty cell takes the mean of its non-empty neighbours (0, 1), (1, 0), (1, 1); the
    # corner pixels hold their cell's value; the half-valid cell is the mean of its valid half
    assert oracle[0, 0, 0] == pytest.approx((2.0 + 4.0 + 5.0) / 3, abs=1e-12)
    assert oracle[0, -1, -1] == pytest.approx(6.0, abs=1e-12)
    # frame 1 has no valid pixel: the clip's valid median, 4 (256 pixels each of 2, 3, 4, 5
    # and 7, 128 of 6: the middle two of 1408 are 4s)
    np.testing.assert_allclose(oracle[1], 4.0, rtol=0, atol=1e-12)
    # frame 2: one valid cell fills its neighbours, then theirs (two passes)
    np.testing.assert_allclose(oracle[2], 7.0, rtol=0, atol=1e-12)
    assert math.isfinite(score_clip({"depth": oracle}, {"depth": depth, "valid": valid})["abs_rel_median"])
    with pytest.raises(ValueError, match="multiple"):
        baselines.token_depth(np.ones((1, 24, 32)), np.ones((1, 24, 32), dtype=bool))


def test_token_depth_oracle_beats_the_constant_depth_on_a_synthetic_world():
    clip = render_clip(0, 0, 9, 32, 32)  # a room open to the sky: 19% invalid pixels
    depth = clip.depth.astype(np.float64)
    gt = {"depth": depth, "valid": depth > 0}
    assert not gt["valid"].all()
    oracle = score_clip({"depth": baselines.token_depth(depth, gt["valid"])}, gt)
    constant = score_clip({"depth": baselines.constant_depth(depth.shape)}, gt)
    assert set(oracle) == set(DEPTH_KEYS)
    assert 0.0 < oracle["abs_rel_median"] < constant["abs_rel_median"]


def test_summary_averages_the_oracle_and_the_tables_show_its_ceiling():
    base = {"abs_rel_median": 0.3, "rot_err": 10.0}
    per_clip = {c: {"latents": {"model": {"abs_rel_median": 0.1, "rot_err": 4.0}, "baseline": base,
                                "oracle": {"abs_rel_median": o}}} for c, o in (("a", 0.1), ("b", 0.3))}
    summary = summarize(per_clip)
    assert summary["latents"]["oracle"] == {"abs_rel_median": pytest.approx(0.2)}
    acc = acceptance(summary)  # the bars still compare the model with the baselines
    assert acc["depth_abs_rel"]["ratio"] == pytest.approx(3.0) and acc["depth_abs_rel"]["baseline_value"] == 0.3
    rows = _table_rows(summary)
    labels = [r[0] for r in rows]
    i = labels.index("abs_rel_median (lower better)")
    assert rows[i + 1] == ["abs_rel_median: depth at token resolution from ground truth (oracle, ceiling of the "
                           "ratio: 1.50x)", "0.2", "0.3", "1.50x"]
    del per_clip["a"]["latents"]["oracle"], per_clip["b"]["latents"]["oracle"]
    assert "oracle" not in summarize(per_clip)["latents"]
    assert len(_table_rows(summarize(per_clip))) == len(rows) - 1


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
