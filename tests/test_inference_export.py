"""Export writers: COLMAP text format (checked against COLMAP's documented example), PLY,
point-cloud fusion, depth colouring, float16 saturation, the trajectory plot."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData

from fantasyworld.data.colormap import colorize_depth, turbo
from fantasyworld.geometry.camera_io import read_colmap_text, write_colmap_text
from fantasyworld.geometry.cameras import unproject_depth
from fantasyworld.inference.export import save_depth
from fantasyworld.inference.ply import fuse_point_cloud, read_ply, write_ply
from fantasyworld.inference.report import trajectory_svg
from fantasyworld.inference.trajectories import named_trajectory

# Verbatim from https://colmap.github.io/format.html#text-format (cameras.txt, images.txt, points3D.txt).
DOC_CAMERAS = """# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
# Number of cameras: 3
1 SIMPLE_PINHOLE 3072 2304 2559.81 1536 1152
2 PINHOLE 3072 2304 2560.56 2560.56 1536 1152
3 SIMPLE_RADIAL 3072 2304 2559.69 1536 1152 -0.0218531
"""
DOC_IMAGES = """# Image list with two lines of data per image:
#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
#   POINTS2D[] as (X, Y, POINT3D_ID)
# Number of images: 2, mean observations per image: 2
1 0.851773 0.0165051 0.503764 -0.142941 -0.737434 1.02973 3.74354 1 P1180141.JPG
2362.39 248.498 58396 1784.7 268.254 59027 1784.7 268.254 -1
2 0.851773 0.0165051 0.503764 -0.142941 -0.737434 1.02973 3.74354 1 P1180142.JPG
1190.83 663.957 23056 1258.77 640.354 59070
"""
DOC_POINTS = """# 3D point list with one line of data per point:
#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)
# Number of points: 3, mean track length: 3.3334
63390 1.67241 0.292931 0.609726 115 121 122 1.33927 16 6542 15 7345 6 6714 14 7227
63376 2.01848 0.108877 -0.0260841 102 209 250 1.73449 16 6519 15 7322 14 7212 8 3991
63371 1.71102 0.28566 0.53475 245 251 249 0.612829 118 4140 117 4473
"""


def test_colmap_reader_parses_the_documented_example(tmp_path) -> None:
    (tmp_path / "cameras.txt").write_text(DOC_CAMERAS)
    (tmp_path / "images.txt").write_text(DOC_IMAGES)
    (tmp_path / "points3D.txt").write_text(DOC_POINTS)
    model = read_colmap_text(tmp_path)
    assert [c.model for c in model.cameras.values()] == ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL"]
    np.testing.assert_allclose(model.cameras[2].K(), [[2560.56, 0, 1536], [0, 2560.56, 1152], [0, 0, 1]])
    img = model.images[1]
    assert img.name == "P1180141.JPG" and img.camera_id == 1
    np.testing.assert_allclose(img.tvec, [-0.737434, 1.02973, 3.74354])
    np.testing.assert_array_equal(img.point3d_ids, [58396, 59027, -1])
    np.testing.assert_allclose(img.xys[1], [1784.7, 268.254])
    rot = img.w2c()[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)  # the quaternion is (nearly) unit
    assert model.images[2].point3d_ids.tolist() == [23056, 59070]
    assert model.points3d[63390]["rgb"].tolist() == [115, 121, 122]
    assert model.points3d[63371]["track"].tolist() == [[118, 4140], [117, 4473]]


def test_colmap_writer_round_trip_against_the_documented_layout(tmp_path) -> None:
    traj = named_trajectory("orbit", 5, 32, 48, magnitude=200)  # rotations beyond 180 degrees
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(300, 3))
    rgb = rng.integers(0, 256, size=(300, 3)).astype(np.uint8)
    write_colmap_text(tmp_path, traj.w2c, traj.K, 32, 48, points=xyz, colors=rgb)
    # the layout of COLMAP's documentation: header comments, then per-image line pairs
    lines = (tmp_path / "images.txt").read_text().split("\n")
    body = [ln for ln in lines if not ln.startswith("#")]
    assert len(body) == 2 * 5 + 1 and all(body[2 * i + 1] == "" for i in range(5))
    first = body[0].split()
    assert first[0] == "1" and first[8] == "1" and first[9] == "frame_0000.png"
    q = np.asarray(first[1:5], dtype=float)
    assert abs(np.linalg.norm(q) - 1) < 1e-9 and q[0] >= 0  # scalar-first unit quaternion
    point = (tmp_path / "points3D.txt").read_text().split("\n")[3].split()
    assert len(point) == 8 and point[0] == "1"  # id, xyz, rgb, error, empty track
    model = read_colmap_text(tmp_path)
    seq = model.to_sequence()
    np.testing.assert_allclose(seq.w2c, traj.w2c, atol=1e-9)
    np.testing.assert_allclose(seq.K, traj.K)
    got = np.stack([model.points3d[i]["xyz"] for i in range(1, 301)])
    np.testing.assert_allclose(got, xyz, rtol=1e-7, atol=1e-8)
    assert np.array_equal(np.stack([model.points3d[i]["rgb"] for i in range(1, 301)]), rgb)


def test_ply_is_binary_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    conf = rng.random(50).astype(np.float32)
    write_ply(tmp_path / "a.ply", xyz, rgb, conf)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    assert not ply.text and ply.byte_order == "<"
    assert [p.name for p in ply["vertex"].properties] == ["x", "y", "z", "red", "green", "blue", "confidence"]
    x2, c2, f2 = read_ply(tmp_path / "a.ply")
    assert np.array_equal(x2, xyz) and np.array_equal(c2, rgb) and np.array_equal(f2, conf)


def test_fusion_from_depth_equals_fusion_from_points_and_caps_size() -> None:
    rng = np.random.default_rng(2)
    traj = named_trajectory("turn-left", 3, 16, 24)
    depth = rng.uniform(1, 3, size=(3, 16, 24))
    conf = rng.uniform(1, 5, size=(3, 16, 24)).astype(np.float32)
    video = rng.integers(0, 256, size=(3, 16, 24, 3)).astype(np.uint8)
    points = unproject_depth(depth, traj.w2c, traj.K)
    a = fuse_point_cloud(video, conf, depth=depth, w2c=traj.w2c, intrinsics=traj.K, conf_percentile=50)
    b = fuse_point_cloud(video, conf, world_points=points, conf_percentile=50)
    np.testing.assert_allclose(a.xyz, b.xyz, atol=1e-5)
    assert len(a) == int((conf >= np.percentile(conf, 50)).sum())
    assert conf[tuple(a.index.T)].min() >= np.percentile(conf, 50)
    capped = fuse_point_cloud(video, conf, world_points=points, conf_percentile=0, max_points=100, seed=3)
    assert len(capped) == 100 and np.all(np.diff(np.ravel_multi_index(tuple(capped.index.T), conf.shape)) > 0)
    bad = points.copy()
    bad[0, 0, 0] = np.nan
    assert len(fuse_point_cloud(video, conf, world_points=bad, conf_percentile=0)) == 3 * 16 * 24 - 1


def test_depth_colouring_and_float16_saturation(tmp_path) -> None:
    lo, hi = turbo(np.array([0.1, 0.9]))
    assert lo[2] > lo[0] and hi[0] > hi[2]  # blue -> red
    depth = np.tile(np.linspace(1, 10, 8), (2, 4, 1))
    rgb = colorize_depth(depth)
    assert rgb.shape == (2, 4, 8, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0, 0] > rgb[0, 0, 0, 2] and rgb[0, 0, -1, 2] > rgb[0, 0, -1, 0]  # near red, far blue
    save_depth(tmp_path / "d.npz", np.array([[[1e6, 2.0]]]), np.array([[[np.inf, 1.0]]]))
    data = np.load(tmp_path / "d.npz")
    assert data["depth"].dtype == np.float16 and np.isfinite(data["depth"]).all()
    assert float(data["depth"][0, 0, 0]) == pytest.approx(65504.0)


def test_trajectory_svg_draws_both_paths_and_survives_nan() -> None:
    req = named_trajectory("orbit", 9, 32, 48).w2c
    pred = named_trajectory("dolly-in", 9, 32, 48).w2c
    svg = trajectory_svg(req, pred)  # each drawn path is one element with the id track-<i>
    assert svg.startswith("<svg") and svg.count('id="track-') == 2 and "scaled" in svg
    pred[3, 0, 3] = np.nan
    assert trajectory_svg(req, pred).count('id="track-') == 2
    assert trajectory_svg(named_trajectory("static", 5, 32, 48).w2c, None).count('id="track-') == 1
