"""Crop/resize consistency, relative poses, scale normalisation and Plücker rays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fantasyworld.data.synth import render_clip
from fantasyworld.data.transforms import CropResize
from fantasyworld.geometry.cameras import (
    crop_intrinsics,
    invert_se3,
    look_at_w2c,
    make_intrinsics,
    normalize_scale,
    points_in_first_camera,
    project_points,
    relative_to_first,
    resize_intrinsics,
    unproject_depth,
    unproject_pixels,
)
from fantasyworld.geometry.plucker import plucker_rays


@pytest.fixture(scope="module")
def frame():
    """One rendered frame (48 x 72) with exact depth, points and camera."""
    clip = render_clip(seed=3, index=0, num_frames=1, height=48, width=72, trajectory="turn")
    return clip


def _coordinate_frame(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W) image whose channels are the x and y coordinates of each pixel centre."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.stack([u, v]).double()[None]


@pytest.mark.parametrize(
    "src_hw,out_hw,exact",
    [((48, 72), (16, 24), True),  # 3x downscale, no crop: output centres hit source centres
     ((48, 72), (20, 24), False),  # non-integer scale + horizontal crop
     ((48, 72), (40, 40), False)],  # crop-dominated, aspect change
)
def test_crop_resize_keeps_video_depth_points_and_intrinsics_consistent(frame, src_hw, out_hw, exact):
    plan = CropResize.plan(src_hw, out_hw, crop="center")
    k_src, w2c = frame.K, frame.w2c[0]
    k_out = plan.intrinsics(k_src)
    depth = plan.nearest(frame.depth)[0]
    points = plan.nearest(frame.points)[0]
    valid = depth > 0
    assert depth.shape == out_hw and points.shape == (*out_hw, 3) and valid.mean() > 0.5

    # 1. the world point stored at an output pixel projects (new K) into that same pixel,
    #    and its camera z is the stored depth
    uv, z = project_points(points.reshape(-1, 3).astype(np.float64), w2c, k_out)
    vv, uu = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    m = valid.reshape(-1)
    np.testing.assert_array_equal(np.floor(uv[m, 0]), uu.reshape(-1)[m])
    np.testing.assert_array_equal(np.floor(uv[m, 1]), vv.reshape(-1)[m])
    np.testing.assert_allclose(z[m], depth.reshape(-1)[m], rtol=1e-5)  # float32 storage

    # 2. the resized frame shows the same source location: a frame encoding source pixel
    #    coordinates, resized like video, holds at each output pixel the source coordinate
    #    of that pixel's centre; the stored point was the source pixel containing it.
    coords = plan.frames(_coordinate_frame(*src_hw))[0].numpy()  # (2, Ht, Wt) source coords
    uv_src, _ = project_points(points.reshape(-1, 3).astype(np.float64), w2c, k_src)
    sampled = coords.reshape(2, -1).T
    # bilinear + antialias is exact on a linear ramp away from the border (2 output pixels)
    inner = np.zeros(out_hw, bool)
    inner[2:-2, 2:-2] = True
    sel = m & inner.reshape(-1)
    diff = np.abs(sampled[sel] - uv_src[sel])
    # exact case: only float32 rounding of the stored points (~1e-6 px); otherwise nearest
    # sampling picks the source pixel containing the output centre: at most half a pixel
    tol = 1e-4 if exact else 0.5 + 1e-4
    assert diff.max() <= tol, diff.max()

    # 3. the new intrinsics are the old ones mapped by the same pixel transform
    sx = plan.resized_hw[1] / src_hw[1]
    sy = plan.resized_hw[0] / src_hw[0]
    uv_new, _ = project_points(points.reshape(-1, 3).astype(np.float64), w2c, k_out)
    np.testing.assert_allclose(uv_new[:, 0], uv_src[:, 0] * sx - plan.left, atol=1e-9)
    np.testing.assert_allclose(uv_new[:, 1], uv_src[:, 1] * sy - plan.top, atol=1e-9)


def test_intrinsics_resize_and_crop_formulas():
    k = make_intrinsics(100.0, 110.0, 40.0, 30.0)
    np.testing.assert_allclose(resize_intrinsics(k, (60, 80), (30, 160)),
                               [[200, 0, 80], [0, 55, 15], [0, 0, 1]])
    np.testing.assert_allclose(crop_intrinsics(k, 5, 7), [[100, 0, 33], [0, 110, 25], [0, 0, 1]])


def test_unproject_then_project_is_identity(frame):
    pts = unproject_depth(frame.depth[0].astype(np.float64), frame.w2c[0], frame.K)
    uv, z = project_points(pts.reshape(-1, 3), frame.w2c[0], frame.K)
    h, w = frame.depth.shape[1:]
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    m = frame.depth[0].reshape(-1) > 0
    np.testing.assert_allclose(uv[m, 0], u.reshape(-1)[m], atol=1e-9)
    np.testing.assert_allclose(z[m], frame.depth[0].reshape(-1)[m], rtol=1e-12)


def _random_cameras(t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([look_at_w2c(rng.normal(size=3) * 2, rng.normal(size=3)) for _ in range(t)])


def test_relative_to_first_makes_frame0_identity_and_keeps_projections():
    w2c = torch.from_numpy(_random_cameras(4))[None]  # (1, 4, 4, 4)
    pts = torch.randn(1, 4, 3, 5, 3, dtype=torch.float64)
    rel, pts_rel = relative_to_first(w2c), points_in_first_camera(w2c, pts)
    torch.testing.assert_close(rel[0, 0], torch.eye(4, dtype=torch.float64))
    # camera coordinates of every point are unchanged
    cam_a = torch.einsum("btij,bthwj->bthwi", w2c[..., :3, :3], pts) + w2c[..., None, None, :3, 3]
    cam_b = torch.einsum("btij,bthwj->bthwi", rel[..., :3, :3], pts_rel) + rel[..., None, None, :3, 3]
    torch.testing.assert_close(cam_a, cam_b)


def test_normalize_scale_gives_unit_mean_distance():
    w2c = torch.from_numpy(_random_cameras(3, seed=1))[None].float()
    pts = torch.randn(1, 3, 4, 4, 3) * 7
    depth = torch.rand(1, 3, 4, 4) + 0.1
    valid = torch.rand(1, 3, 4, 4) > 0.3
    rel, pts_rel = relative_to_first(w2c), points_in_first_camera(w2c, pts)
    w2c_n, pts_n, depth_n, scale = normalize_scale(rel, pts_rel, depth, valid)
    mean_dist = pts_n.norm(dim=-1)[valid].mean()
    assert mean_dist.item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(depth_n * scale, depth)
    torch.testing.assert_close(w2c_n[..., :3, :3], rel[..., :3, :3])


def test_plucker_rays_pass_through_pixel_centres():
    h, w = 6, 10
    w2c = torch.from_numpy(_random_cameras(3, seed=2))[None]  # (1, 3, 4, 4) float64
    k = torch.from_numpy(make_intrinsics([8.0, 9.0, 10.0], [8.5, 9.0, 11.0], 5.2, 2.9))[None]
    rays = plucker_rays(w2c, k, h, w)
    assert rays.shape == (1, 3, 6, h, w)
    moment, d = rays[0, :, :3], rays[0, :, 3:]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3, h, w, dtype=torch.float64))
    torch.testing.assert_close(moment[0], torch.zeros(3, h, w, dtype=torch.float64))  # frame 0 at origin
    # (o x d) . d = 0
    torch.testing.assert_close((moment * d).sum(1), torch.zeros(3, h, w, dtype=torch.float64))
    # a point 3 units along each ray, expressed back in world frame, projects to (u+.5, v+.5)
    rel = relative_to_first(w2c)
    c2w_rel = invert_se3(rel)
    origin = c2w_rel[0, :, :3, 3]  # (T, 3)
    pts = origin[:, :, None, None] + 3.0 * d  # (T, 3, H, W) in the relative frame
    for t in range(3):
        p = pts[t].permute(1, 2, 0).reshape(-1, 3).numpy()
        uv, z = project_points(p, rel[0, t].numpy(), k[0, t].numpy())
        v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        np.testing.assert_allclose(uv[:, 0], u.reshape(-1), atol=1e-9)
        np.testing.assert_allclose(uv[:, 1], v.reshape(-1), atol=1e-9)
        assert (z > 0).all()
    # moments equal o x d with o the camera centre
    o = origin[:, :, None, None].expand_as(d)
    torch.testing.assert_close(moment, torch.linalg.cross(o, d, dim=1))


def test_plucker_absolute_and_legacy_official_intrinsics():
    h, w = 4, 6
    w2c = torch.from_numpy(_random_cameras(2, seed=3))[None]
    k_pix = torch.from_numpy(make_intrinsics(5.0, 5.0, 3.0, 2.0))[None, None].expand(1, 2, 3, 3)
    absolute = plucker_rays(w2c, k_pix, h, w, relative_to_first=False)
    centre = invert_se3(w2c)[0, 1, :3, 3]
    torch.testing.assert_close(absolute[0, 1, :3], torch.linalg.cross(
        centre[:, None, None].expand(3, h, w), absolute[0, 1, 3:], dim=0))
    # the official code multiplies fx, cx by W and fy, cy by H although they are pixels:
    # its rays equal ours for intrinsics scaled that way
    legacy = plucker_rays(w2c, k_pix, h, w, legacy_official_intrinsics=True)
    k_scaled = k_pix.clone()
    k_scaled[..., 0, :] *= w
    k_scaled[..., 1, :] *= h
    torch.testing.assert_close(legacy, plucker_rays(w2c, k_scaled, h, w))
    assert not torch.allclose(legacy, plucker_rays(w2c, k_pix, h, w))
    # the principal point lands at (cx * W, cy * H) = (18, 8), outside the 6 x 4 image:
    # every ray of frame 0 (identity pose: camera frame) points left of and above the axis
    d = legacy[0, 0, 3:]
    assert (d[0] < 0).all() and (d[1] < 0).all()


def test_unproject_pixels_of_a_subset_equal_the_full_maps_at_those_pixels(frame):
    """One unprojection: the point-cloud export's subset call and the full-map call give the same
    numbers (same arithmetic, so exactly), and a pixel lands back on itself when projected."""
    depth, w2c, k = frame.depth, frame.w2c, np.broadcast_to(frame.K, (len(frame.w2c), 3, 3))
    rng = np.random.default_rng(0)
    t, v, u = (rng.integers(0, n, 50) for n in depth.shape)
    points = unproject_pixels(t, v, u, depth, w2c, k)
    np.testing.assert_array_equal(points, unproject_depth(depth, w2c, k)[t, v, u])
    uv, z = project_points(points[:, None], w2c[t], k[t])
    np.testing.assert_allclose(uv[:, 0], np.stack([u + 0.5, v + 0.5], -1), atol=1e-9)  # float64 round trip
    np.testing.assert_allclose(z[:, 0], depth[t, v, u], rtol=1e-12)
