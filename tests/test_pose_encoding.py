"""VGGT absT_quaR_FoV encoding: round trips, hand-computed values, relative-to-first poses.

Tolerances: float64 inputs, so round trips agree to ~1e-12; 1e-9 leaves room for the
quaternion branch selection and atan/tan pairs without hiding real errors (a wrong axis
or (h, w) swap gives errors of order 1).
"""

from __future__ import annotations

import math

import torch

from fantasyworld.geometry.cameras import as_homogeneous, invert_se3, relative_to_first
from fantasyworld.geometry.pose_encoding import decode_pose, encode_pose
from fantasyworld.geometry.rotation import axis_angle_to_mat

ATOL = 1e-9


def _random_cameras(batch: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rot = axis_angle_to_mat(torch.randn(batch, frames, 3, generator=gen, dtype=torch.float64) * 1.5)
    trans = torch.randn(batch, frames, 3, generator=gen, dtype=torch.float64) * 3.0
    w2c = torch.zeros(batch, frames, 4, 4, dtype=torch.float64)
    w2c[..., :3, :3] = rot
    w2c[..., :3, 3] = trans
    w2c[..., 3, 3] = 1.0
    return w2c, rot


def _intrinsics(fx: float, fy: float, height: int, width: int, shape: tuple[int, ...]) -> torch.Tensor:
    k = torch.tensor([[fx, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return k.expand(*shape, 3, 3).clone()


def test_encode_hand_computed_identity_camera():
    # fx = W/2 and fy = H/2 give fov = 2*atan(1) = pi/2 in both directions.
    height, width = 48, 80
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, 3] = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    k = _intrinsics(width / 2, height / 2, height, width, ())
    enc = encode_pose(w2c, k, (height, width))
    half_pi = math.pi / 2
    expected = torch.tensor([1.0, -2.0, 3.0, 0.0, 0.0, 0.0, 1.0, half_pi, half_pi], dtype=torch.float64)
    torch.testing.assert_close(enc, expected, atol=ATOL, rtol=0)


def test_encode_quaternion_is_scalar_last_and_fov_order_is_h_then_w():
    # 90 degrees about +z: q = (0, 0, sin 45, cos 45) in xyzw.
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = axis_angle_to_mat(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    height, width = 30, 100
    k = _intrinsics(100.0, 15.0, height, width, ())  # fov_h = 2 atan(15/15) = 90 deg, fov_w = 2 atan(0.5)
    enc = encode_pose(w2c[:3], k, (height, width))  # 3x4 input accepted
    s = math.sqrt(0.5)
    expected_quat = torch.tensor([0.0, 0.0, s, s], dtype=torch.float64)
    torch.testing.assert_close(enc[3:7], expected_quat, atol=ATOL, rtol=0)
    assert abs(enc[7].item() - math.pi / 2) < ATOL
    assert abs(enc[8].item() - 2 * math.atan(0.5)) < ATOL


def test_decode_encode_round_trip_and_principal_point():
    height, width = 64, 112
    w2c, _ = _random_cameras(2, 5)
    k = _intrinsics(90.0, 70.0, height, width, (2, 5))
    enc = encode_pose(w2c, k, (height, width))
    w2c_back, k_back = decode_pose(enc, (height, width))
    torch.testing.assert_close(w2c_back, w2c, atol=ATOL, rtol=0)
    torch.testing.assert_close(k_back, k, atol=ATOL, rtol=0)
    assert torch.all(k_back[..., 0, 2] == width / 2) and torch.all(k_back[..., 1, 2] == height / 2)
    torch.testing.assert_close(encode_pose(w2c_back, k_back, (height, width)), enc, atol=ATOL, rtol=0)


def test_decode_normalises_quaternion():
    enc = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    w2c, _ = decode_pose(enc, (10, 10))
    torch.testing.assert_close(w2c, torch.eye(4, dtype=torch.float64), atol=ATOL, rtol=0)


def test_relative_to_first_makes_frame0_identity_and_matches_definition():
    w2c, _ = _random_cameras(3, 4, seed=1)
    rel = relative_to_first(w2c)
    eye = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    torch.testing.assert_close(rel[:, 0], eye, atol=0, rtol=0)
    expected = w2c @ torch.linalg.inv(w2c[:, :1])
    torch.testing.assert_close(rel, expected, atol=ATOL, rtol=0)
    # Idempotent, and invariant to a rigid change of world frame.
    torch.testing.assert_close(relative_to_first(rel), rel, atol=ATOL, rtol=0)
    g, _ = _random_cameras(1, 1, seed=2)
    torch.testing.assert_close(relative_to_first(w2c @ g[0, 0]), rel, atol=ATOL, rtol=0)
    assert relative_to_first(w2c[..., :3, :]).shape == (3, 4, 4, 4)


def test_se3_inverse_and_homogeneous():
    w2c, _ = _random_cameras(2, 3, seed=3)
    torch.testing.assert_close(invert_se3(w2c) @ w2c, torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4))
    torch.testing.assert_close(as_homogeneous(w2c[..., :3, :]), w2c, atol=0, rtol=0)
