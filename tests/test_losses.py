"""Geometry and diffusion losses against hand-computed values.

Tolerances: hand values are exact rationals/logs evaluated in float32 (the losses upcast to
fp32), so rtol 1e-6 / atol 1e-6 is a few ulps; the similarity-invariance checks compare two
float32 pipelines whose inputs differ by a random similarity, where round-off through
rotations and a scale of up to 7 gives errors ~1e-6 relative, hence 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

from fantasyworld.geometry.pose_encoding import encode_pose, relative_to_first
from fantasyworld.geometry.rotation import axis_angle_to_mat
from fantasyworld.training.losses import (
    camera_loss,
    camera_loss_terms,
    compute_losses,
    depth_loss,
    diffusion_loss,
    normalize_geometry,
    normalize_geometry_scale,
    point_loss,
    total_loss,
)

TOL = {"atol": 1e-6, "rtol": 1e-6}


def _w2c(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(*rot.shape[:-2], 4, 4, dtype=rot.dtype)
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1.0
    return out


def test_depth_loss_hand_computed_with_mask_and_confidence():
    # 2x2 frame, pixel (1,1) invalid (and its gt is NaN: must not leak).
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    gt = torch.tensor([[1.0, 1.0], [1.0, float("nan")]]).reshape(1, 1, 2, 2)
    conf = torch.tensor([[1.0, 2.0], [1.0, 50.0]]).reshape(1, 1, 2, 2)
    valid = torch.tensor([[True, True], [True, False]]).reshape(1, 1, 2, 2)
    alpha = 0.5
    # residuals r00=0, r01=1, r10=2.  reg = 1*0 + 2*1 + 1*2 = 4.
    # pairs with both ends valid: vertical (0,0)->(1,0): C(1,0)=1 * |2-0| = 2;
    #                             horizontal (0,0)->(0,1): C(0,1)=2 * |1-0| = 2.  grad = 4.
    # log term: log1 + log2 + log1.  N = 3 valid pixels.
    expected = (4.0 + 4.0 - alpha * math.log(2.0)) / 3.0
    pred.requires_grad_(True)
    loss = depth_loss(pred, conf, gt, valid, alpha)
    torch.testing.assert_close(loss, torch.tensor(expected), **TOL)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 0, 1, 1] == 0


def test_point_loss_hand_computed_euclidean_residual_and_per_channel_gradient():
    gt = torch.tensor([[[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]], [[2.0, 0.0, 1.0], [9.0, 9.0, 9.0]]])
    resid = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], [[1.0, 0.0, 0.0], [7.0, 7.0, 7.0]]])
    pred = (gt + resid).reshape(1, 1, 2, 2, 3)
    gt = gt.reshape(1, 1, 2, 2, 3).clone()
    gt[0, 0, 1, 1] = float("inf")
    conf = torch.tensor([[1.0, 2.0], [3.0, 100.0]]).reshape(1, 1, 2, 2)
    valid = torch.tensor([[True, True], [True, False]]).reshape(1, 1, 2, 2)
    alpha = 0.2
    # reg = 1*0 + 2*||(3,4,0)|| + 3*||(1,0,0)|| = 10 + 3 = 13
    # grad: vertical (0,0)->(1,0): C=3 * L1(1,0,0)=1 -> 3 ; horizontal (0,0)->(0,1): C=2 * L1(3,4,0)=7 -> 14
    #       grad term = 17 / 3 channels
    # log: log1 + log2 + log3 = log 6 ; N = 3
    expected = (13.0 + 17.0 / 3.0 - alpha * math.log(6.0)) / 3.0
    torch.testing.assert_close(point_loss(pred, conf, gt, valid, alpha), torch.tensor(expected), **TOL)


def test_losses_average_over_the_whole_batch_of_valid_pixels():
    # Two samples, one with no valid pixel: the loss is the first sample's loss (same N).
    pred = torch.rand(2, 2, 3, 4) + 0.5
    gt = torch.rand(2, 2, 3, 4) + 0.5
    conf = torch.rand(2, 2, 3, 4) + 1.0
    valid = torch.rand(2, 2, 3, 4) > 0.3
    valid[1] = False
    full = depth_loss(pred, conf, gt, valid, 0.2)
    first = depth_loss(pred[:1], conf[:1], gt[:1], valid[:1], 0.2)
    torch.testing.assert_close(full, first, **TOL)
    empty = depth_loss(pred, conf, gt, torch.zeros_like(valid), 0.2)
    assert empty.item() == 0.0


def test_scale_is_mean_distance_to_first_camera_and_points_move_to_camera0():
    # Sample 0: camera 0 rotated 90 deg about z, centre at (0, 0, 1) in the world.
    rot0 = axis_angle_to_mat(torch.tensor([0.0, 0.0, math.pi / 2]))
    centre = torch.tensor([0.0, 0.0, 1.0])
    w2c0 = _w2c(rot0, -rot0 @ centre)
    w2c1 = _w2c(torch.eye(3), torch.tensor([0.5, 0.0, 0.0]))
    w2c = torch.stack([w2c0, w2c1])[None]  # (1, 2, 4, 4)
    points = torch.zeros(1, 2, 1, 2, 3)
    points[0, 0, 0, 0] = torch.tensor([0.0, 0.0, 3.0])  # distance 2 to the centre
    points[0, 0, 0, 1] = torch.tensor([3.0, 0.0, 1.0])  # distance 3
    points[0, 1, 0, 0] = torch.tensor([0.0, 4.0, 1.0])  # distance 4
    points[0, 1, 0, 1] = torch.tensor([100.0, 100.0, 100.0])  # invalid
    valid = torch.tensor([[[[True, True]], [[True, False]]]])
    depth = torch.tensor([[[[2.0, 1.0]], [[3.0, 7.0]]]])
    scale = normalize_geometry_scale(points, valid, w2c)
    torch.testing.assert_close(scale, torch.tensor([3.0]), **TOL)  # (2 + 3 + 4) / 3

    gt = normalize_geometry(depth, points, valid, w2c)
    # camera-0 coordinates R0 (X - c): (0,0,2) ; (3,0,0) -> rotated by 90 deg about z -> (0,3,0)
    torch.testing.assert_close(gt.points[0, 0, 0, 0], torch.tensor([0.0, 0.0, 2.0]) / 3, **TOL)
    torch.testing.assert_close(gt.points[0, 0, 0, 1], torch.tensor([0.0, 3.0, 0.0]) / 3, **TOL)
    torch.testing.assert_close(gt.depth[0, :, 0, 0], torch.tensor([2.0, 3.0]) / 3, **TOL)
    assert gt.points[0, 1, 0, 1].abs().sum() == 0 and gt.depth[0, 1, 0, 1] == 0  # invalid zeroed
    rel = relative_to_first(w2c)
    torch.testing.assert_close(gt.w2c[..., :3, :3], rel[..., :3, :3], **TOL)
    torch.testing.assert_close(gt.w2c[..., :3, 3], rel[..., :3, 3] / 3, **TOL)
    torch.testing.assert_close(gt.w2c[0, 0], torch.eye(4), **TOL)


def _random_scene(seed: int, batch: int = 2, frames: int = 3, height: int = 6, width: int = 8):
    gen = torch.Generator().manual_seed(seed)
    rot = axis_angle_to_mat(torch.randn(batch, frames, 3, generator=gen) * 0.5)
    trans = torch.randn(batch, frames, 3, generator=gen)
    w2c = _w2c(rot, trans)
    points = torch.randn(batch, frames, height, width, 3, generator=gen) * 2.0
    valid = torch.rand(batch, frames, height, width, generator=gen) > 0.2
    cam_pts = torch.einsum("btij,bthwj->bthwi", rot, points) + trans[:, :, None, None, :]
    depth = cam_pts[..., 2]
    k = torch.tensor([[10.0, 0.0, width / 2], [0.0, 9.0, height / 2], [0.0, 0.0, 1.0]])
    intrinsics = k.expand(batch, frames, 3, 3).clone()
    return {"depth": depth, "points": points, "valid": valid, "w2c": w2c, "intrinsics": intrinsics}


def _similarity(batch: dict, scale: float, rot: torch.Tensor, trans: torch.Tensor) -> dict:
    """World X' = s R X + t. Cameras: w2c'_i = [R_i R^T | s t_i - R_i R^T t]; depth scales by s."""
    out = dict(batch)
    out["points"] = scale * batch["points"] @ rot.T + trans
    r_i = batch["w2c"][..., :3, :3] @ rot.T
    t_i = scale * batch["w2c"][..., :3, 3] - (r_i @ trans)
    out["w2c"] = _w2c(r_i, t_i)
    out["depth"] = scale * batch["depth"]
    return out


def test_camera_loss_zero_for_identical_trajectories():
    batch = _random_scene(0)
    gt = normalize_geometry(batch["depth"], batch["points"], batch["valid"], batch["w2c"])
    enc = encode_pose(gt.w2c, batch["intrinsics"], (6, 8))
    assert camera_loss([enc] * 4, gt.w2c, batch["intrinsics"], (6, 8)).item() == 0.0
    # Raw cameras + scale give the same targets as normalised cameras.
    raw = camera_loss([enc], batch["w2c"], batch["intrinsics"], (6, 8), scale=gt.scale)
    assert raw.abs().item() < 1e-6


def _identity_cameras(batch: int, height: int = 4, width: int = 6):
    """``batch`` clips of 2 identity cameras whose intrinsics give fields of view of pi/2: the
    w2c, the intrinsics and their encoding (``t = 0, q = (0, 0, 0, 1), fov = pi/2, pi/2``)."""
    w2c = torch.eye(4).expand(batch, 2, 4, 4).clone()
    k = torch.tensor([[width / 2, 0.0, 3.0], [0.0, height / 2, 2.0], [0.0, 0.0, 1.0]]).expand(batch, 2, 3, 3)
    gt_enc = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, math.pi / 2, math.pi / 2]).expand(batch, 2, 9)
    return w2c, k, gt_enc


def test_camera_loss_hand_computed_huber_gamma_and_part_weights():
    height, width = 4, 6
    w2c, k, gt_enc = _identity_cameras(1, height, width)
    first = gt_enc.clone()
    first[0, 0, 0] += 2.0  # tx, frame 0: Huber(2) = 2 - 0.5 = 1.5 ; mean over 6 T entries = 0.25
    first[0, 1, 6] -= 0.5  # qw, frame 1: Huber(0.5) = 0.125 ; mean over 8 R entries = 0.015625
    last = gt_enc.clone()
    last[0, :, 7] += 0.2  # fov_h, both frames: Huber(0.2) = 0.02 ; mean over 4 FL entries = 0.01
    terms = camera_loss_terms([first, last], w2c, k, (height, width))
    # gamma = 0.6: first iteration weight 0.6, last 1; divided by n = 2 iterations.
    torch.testing.assert_close(terms["loss_T"], torch.tensor(0.6 * 0.25 / 2), **TOL)
    torch.testing.assert_close(terms["loss_R"], torch.tensor(0.6 * 0.015625 / 2), **TOL)
    torch.testing.assert_close(terms["loss_FL"], torch.tensor(0.01 / 2), **TOL)
    expected = 0.6 * 0.25 / 2 + 0.6 * 0.015625 / 2 + 0.5 * 0.01 / 2
    torch.testing.assert_close(terms["loss_camera"], torch.tensor(expected), **TOL)


def test_camera_loss_l1_hand_computed_and_per_sample():
    """``loss_type="l1"`` (VGGT's released code): |r| per component, same means and weights."""
    height, width = 4, 6
    w2c, k, gt_enc = _identity_cameras(2, height, width)
    pred = gt_enc.clone()
    pred[0, 0, 0] += 2.0  # tx: |2| (Huber would give 1.5); mean over 6 T entries of sample 0 = 1/3
    pred[0, 1, 6] -= 0.1  # qw: |0.1| (Huber 0.005); mean over 8 R entries = 0.0125
    pred[1, :, 8] += 0.3  # fov_w of sample 1, both frames: mean over 4 FL entries = 0.15
    per = camera_loss_terms([pred], w2c, k, (height, width), per_sample=True, loss_type="l1")
    torch.testing.assert_close(per["loss_T"], torch.tensor([1 / 3, 0.0]), **TOL)
    torch.testing.assert_close(per["loss_R"], torch.tensor([0.0125, 0.0]), **TOL)
    torch.testing.assert_close(per["loss_FL"], torch.tensor([0.0, 0.15]), **TOL)
    batch = camera_loss_terms([pred], w2c, k, (height, width), loss_type="l1")
    torch.testing.assert_close(batch["loss_camera"], per["loss_camera"].mean(), **TOL)
    huber = camera_loss_terms([pred], w2c, k, (height, width))
    torch.testing.assert_close(huber["loss_R"], torch.tensor(0.005 / 16), **TOL)
    with pytest.raises(ValueError, match="loss_type"):
        camera_loss_terms([pred], w2c, k, (height, width), loss_type="l2")


def test_geometry_losses_invariant_to_similarity_transform_after_normalisation():
    batch = _random_scene(1)
    gen = torch.Generator().manual_seed(7)
    rot = axis_angle_to_mat(torch.tensor([0.3, -1.2, 2.0]))
    moved = _similarity(batch, 7.0, rot, torch.tensor([5.0, -3.0, 2.0]))
    preds = [torch.randn(2, 3, 9, generator=gen) for _ in range(4)]
    outputs = {
        "depth": torch.rand(2, 3, 6, 8, generator=gen),
        "depth_conf": 1 + torch.rand(2, 3, 6, 8, generator=gen),
        "world_points": torch.randn(2, 3, 6, 8, 3, generator=gen),
        "world_points_conf": 1 + torch.rand(2, 3, 6, 8, generator=gen),
        "pose_enc_list": preds,
    }
    a = compute_losses(outputs, batch, stage=1, lambda_geo=1.0, alpha=0.2)
    b = compute_losses(outputs, moved, stage=1, lambda_geo=1.0, alpha=0.2)
    for key in ("loss_depth", "loss_pmap", "loss_camera", "objective"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
    ga = normalize_geometry(batch["depth"], batch["points"], batch["valid"], batch["w2c"])
    gb = normalize_geometry(moved["depth"], moved["points"], moved["valid"], moved["w2c"])
    torch.testing.assert_close(gb.scale, 7.0 * ga.scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gb.points, ga.points, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gb.w2c, ga.w2c, atol=1e-5, rtol=1e-5)


def test_compute_losses_perfect_prediction_hand_value_and_stages():
    batch = _random_scene(2)
    gt = normalize_geometry(batch["depth"], batch["points"], batch["valid"], batch["w2c"])
    e = math.e  # conf = e -> log C = 1 on every pixel, residuals 0 -> loss = -alpha
    outputs = {
        "depth": gt.depth.clone(),
        "depth_conf": torch.full_like(gt.depth, e),
        "world_points": gt.points.clone(),
        "world_points_conf": torch.full_like(gt.depth, e),
        "pose_enc_list": [encode_pose(gt.w2c, batch["intrinsics"], (6, 8))],
        "flow": torch.ones(2, 4),
    }
    alpha = 0.25
    s1 = compute_losses(outputs, batch, stage=1, lambda_geo=2.0, alpha=alpha)
    assert "loss_diff" not in s1
    torch.testing.assert_close(s1["loss_depth"], torch.tensor(-alpha), **TOL)
    torch.testing.assert_close(s1["loss_pmap"], torch.tensor(-alpha), **TOL)
    assert s1["loss_camera"].abs().item() < 1e-6
    torch.testing.assert_close(s1["objective"], torch.tensor(2.0 * (-2 * alpha)), **TOL)

    target = torch.tensor([[1.0, 3.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0]])  # MSE = (4 + 4) / 8 = 1
    s2 = compute_losses(outputs, batch, stage=2, lambda_geo=2.0, alpha=alpha, flow_target=target)
    torch.testing.assert_close(s2["loss_diff"], torch.tensor(1.0), **TOL)
    torch.testing.assert_close(s2["objective"], torch.tensor(1.0 - 4 * alpha), **TOL)
    with pytest.raises(ValueError, match="stage 2"):
        compute_losses(outputs, batch, stage=2)


def test_total_loss_formula():
    terms = {k: torch.tensor(v) for k, v in
             {"loss_diff": 1.0, "loss_depth": 2.0, "loss_pmap": 3.0, "loss_camera": 4.0}.items()}
    # L = L_diff + lambda * (L_depth + L_pmap + 3 L_camera) = 1 + 0.5 * 17
    torch.testing.assert_close(total_loss(terms, 0.5, stage=2)["objective"], torch.tensor(9.5))
    s1 = total_loss(terms, 0.5, stage=1)
    torch.testing.assert_close(s1["objective"], torch.tensor(8.5))
    assert "loss_diff" not in s1
    with pytest.raises(ValueError):
        total_loss({"loss_depth": torch.tensor(1.0)}, 1.0, stage=2)


def test_diffusion_loss_is_mse():
    assert diffusion_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(2.5)


def test_normalisation_agrees_with_geometry_cameras_module():
    # The loss targets are geometry/cameras.py's normalisation (normalize_scene = relative_to_first +
    # points_in_first_camera + normalize_scale): the pieces give the same numbers, and
    # re-normalising normalised data is a no-op.
    from fantasyworld.geometry import cameras

    batch = _random_scene(4)
    ours = normalize_geometry(batch["depth"], batch["points"], batch["valid"], batch["w2c"])
    rel = cameras.relative_to_first(batch["w2c"])
    pts = cameras.points_in_first_camera(batch["w2c"], batch["points"])
    w2c_n, pts_n, depth_n, scale = cameras.normalize_scale(rel, pts, batch["depth"], batch["valid"])
    valid = batch["valid"]
    torch.testing.assert_close(ours.scale, scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.w2c, w2c_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.points[valid], pts_n[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.depth[valid], depth_n[valid], atol=1e-5, rtol=1e-5)
    again = normalize_geometry(ours.depth, ours.points, valid, ours.w2c)
    torch.testing.assert_close(again.scale, torch.ones(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.points, ours.points, atol=1e-5, rtol=1e-5)


def test_non_finite_ground_truth_outside_the_mask_gives_finite_losses_and_gradients():
    batch = _random_scene(5)
    batch["points"][~batch["valid"]] = float("nan")
    batch["depth"][~batch["valid"]] = float("inf")
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "depth": torch.rand(2, 3, 6, 8, generator=gen).requires_grad_(True),
        "depth_conf": 1 + torch.rand(2, 3, 6, 8, generator=gen),
        "world_points": torch.randn(2, 3, 6, 8, 3, generator=gen).requires_grad_(True),
        "world_points_conf": 1 + torch.rand(2, 3, 6, 8, generator=gen),
        "pose_enc_list": [torch.randn(2, 3, 9, generator=gen).requires_grad_(True)],
    }
    losses = compute_losses(outputs, batch, stage=1)
    losses["objective"].backward()
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert torch.isfinite(outputs["depth"].grad).all() and torch.isfinite(outputs["world_points"].grad).all()


def test_camera_weight_scales_only_the_camera_term() -> None:
    """objective = lambda * (L_depth + L_pmap + w * L_camera); the paper's w is 3."""
    terms = {"loss_depth": torch.tensor(0.5), "loss_pmap": torch.tensor(0.25), "loss_camera": torch.tensor(0.1)}
    assert total_loss(dict(terms), lambda_geo=2.0, stage=1)["objective"].item() == pytest.approx(2.0 * (0.75 + 0.3))
    out = total_loss(dict(terms), lambda_geo=2.0, stage=1, camera_weight=10.0)
    assert out["objective"].item() == pytest.approx(2.0 * (0.75 + 1.0))
