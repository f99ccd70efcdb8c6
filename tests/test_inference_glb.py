"""GLB export: re-read with trimesh, the file holds exactly the arrays in memory."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from fantasyworld.cli import main as cli_main
from fantasyworld.inference.glb import OPENCV_TO_GLTF, FrustumSet, frustum_lines, write_glb
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.testing import write_tiny_checkpoint

T, H, W = 5, 32, 48


def _geometry_by_prefix(scene: trimesh.Scene, prefix: str) -> dict:
    return {k: v for k, v in scene.geometry.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def generated(tmp_path_factory, one_thread):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=1)
    pipe = FantasyWorldPipeline.from_pretrained(ckpt)
    result = pipe("a room", camera="orbit", seed=0, num_frames=T, height=H, width=W, num_steps=2, max_points=700,
                  progress=False)
    out = tmp_path_factory.mktemp("gen")
    return result, out, result.save(out, colmap=False, report=False)


def test_result_save_writes_a_glb_that_trimesh_reads_back_exactly(generated) -> None:
    result, out, paths = generated
    assert paths["scene.glb"] == out / "scene.glb"
    scene = trimesh.load(out / "scene.glb", force="scene")
    points = scene.geometry["points"]
    assert isinstance(points, trimesh.PointCloud)
    assert len(points.vertices) == len(result.cloud) == 700
    np.testing.assert_array_equal(np.asarray(points.vertices, np.float32), result.cloud.xyz)
    np.testing.assert_array_equal(np.asarray(points.colors)[:, :3], result.cloud.rgb)
    assert (np.asarray(points.colors)[:, 3] == 255).all()
    pred = _geometry_by_prefix(scene, "predicted_camera_")
    req = _geometry_by_prefix(scene, "requested_camera_")
    assert len(pred) == len(req) == T
    expected = frustum_lines(result.w2c, result.intrinsics, H, W, depth=1.0)
    # the frustum depth is fitted to the scene: compare the camera centres (depth-free) and the rays' directions
    got = np.stack([np.asarray(pred[f"predicted_camera_{t:03d}"].vertices) for t in range(T)])  # (T, 16, 3)
    np.testing.assert_allclose(got[:, 0], expected[:, 0], atol=1e-5)
    d_got, d_exp = got[:, 1] - got[:, 0], expected[:, 1] - expected[:, 0]
    np.testing.assert_allclose(d_got / np.linalg.norm(d_got, axis=-1, keepdims=True),
                               d_exp / np.linalg.norm(d_exp, axis=-1, keepdims=True), atol=1e-5)
    # the root node turns OpenCV axes into glTF's y-up frame
    transform, _ = scene.graph["points"]
    np.testing.assert_allclose(transform, OPENCV_TO_GLTF)


def test_save_without_glb_writes_none(generated, tmp_path) -> None:
    result, _, _ = generated
    paths = result.save(tmp_path, colmap=False, report=False, glb=False)
    assert "scene.glb" not in paths and not (tmp_path / "scene.glb").exists() and (tmp_path / "points.ply").is_file()


def test_glb_caps_the_cloud_with_a_seeded_subsample(tmp_path) -> None:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(5000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(5000, 3), dtype=np.uint8)
    w2c = np.tile(np.eye(4), (3, 1, 1))
    w2c[:, 0, 3] = [0.0, 0.5, 1.0]
    k = np.tile(np.array([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]]), (3, 1, 1))
    info = write_glb(tmp_path / "a.glb", xyz, rgb, [FrustumSet("ground_truth", w2c, k, 32, 48)], max_points=1000)
    assert info == {"points": 1000, "ground_truth": 3}
    scene = trimesh.load(tmp_path / "a.glb", force="scene")
    got = np.asarray(scene.geometry["points"].vertices, np.float32)
    keep = np.sort(np.random.default_rng(0).choice(5000, size=1000, replace=False))
    np.testing.assert_array_equal(got, xyz[keep])
    np.testing.assert_array_equal(np.asarray(scene.geometry["points"].colors)[:, :3], rgb[keep])
    assert len(_geometry_by_prefix(scene, "ground_truth_camera_")) == 3
    # frustum of an identity camera at depth d: image corners at ((u - cx) / fx d, (v - cy) / fy d, d)
    lines = frustum_lines(np.eye(4)[None], k[:1], 32, 48, depth=2.0)[0]
    np.testing.assert_allclose(lines[1], [-24 / 40 * 2, -16 / 40 * 2, 2.0])
    np.testing.assert_allclose(lines[5], [24 / 40 * 2, 16 / 40 * 2, 2.0])


def test_export_cli_rewrites_the_glb_and_rejects_other_folders(generated, tmp_path, capsys) -> None:
    result, out, _ = generated
    target = tmp_path / "again.glb"
    assert cli_main(["export", str(out), "--glb", "--out", str(target), "--max-points", "100"]) == 0
    scene = trimesh.load(target, force="scene")
    assert len(scene.geometry["points"].vertices) == 100
    assert len(_geometry_by_prefix(scene, "predicted_camera_")) == T
    assert cli_main(["export", str(tmp_path), "--glb"]) == 2
    assert "not a generate, evaluate or demo output" in capsys.readouterr().err
