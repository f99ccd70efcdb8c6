"""Synthetic worlds: validate cleanly, exact geometry, deterministic, learnable variety."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fantasyworld.cli import main
from fantasyworld.data.formats import load_metadata, read_video
from fantasyworld.data.synth import TRAJECTORIES, render_clip, synthesize_dataset
from fantasyworld.data.validate import validate_dataset
from fantasyworld.geometry.camera_io import read_seed_cameras
from fantasyworld.geometry.cameras import unproject_depth


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    assert main(["data", "synth", "--out", str(root), "--clips", "4", "--frames", "9", "--size", "32x48",
                 "--seed", "7", "--workers", "2", "--quiet"]) == 0
    return root


def test_synth_then_validate_reports_zero_problems(synth_root, capsys):
    problems, n = validate_dataset(synth_root)
    assert problems == [] and n == 4
    assert main(["data", "validate", str(synth_root)]) == 0
    assert "no problems" in capsys.readouterr().out


def test_unprojected_depth_gives_stored_points(synth_root):
    for rec in load_metadata(synth_root):
        depth = np.load(rec.depth)
        points = np.load(rec.points)
        w2c = read_seed_cameras(rec.cameras)
        fx, fy, cx, cy = rec.intrinsics
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        valid = depth > 0
        assert valid.mean() > 0.5
        pts = unproject_depth(depth.astype(np.float64), w2c, k)
        # relative to the distance from the camera: float32 storage gives ~1e-7
        scale = np.linalg.norm(points - np.linalg.inv(w2c)[:, None, None, :3, 3], axis=-1)
        err = np.linalg.norm(pts - points, axis=-1)[valid] / scale[valid]
        assert err.max() < 1e-4, err.max()
        # invalid (sky) pixels are zero everywhere
        assert (points[~valid] == 0).all()


def test_layout_and_metadata(synth_root):
    meta = json.loads((synth_root / "metadata.json").read_text())
    rec = meta["clips"][0]
    assert {"clip_id", "prompt", "video", "depth", "points", "cameras", "intrinsics", "fps"} <= set(rec)
    frames = read_video(synth_root / rec["video"])
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8
    assert np.load(synth_root / rec["depth"]).shape == (9, 32, 48)
    assert np.load(synth_root / rec["points"]).shape == (9, 32, 48, 3)
    assert len(read_seed_cameras(synth_root / rec["cameras"])) == 9
    assert "camera" in rec["prompt"].lower() and len(rec["prompt"]) > 40


def test_deterministic_by_seed_and_independent_of_workers(tmp_path):
    a = synthesize_dataset(tmp_path / "a", num_clips=2, num_frames=5, height=16, width=24, seed=3, workers=1)
    b = synthesize_dataset(tmp_path / "b", num_clips=2, num_frames=5, height=16, width=24, seed=3, workers=2)
    c = synthesize_dataset(tmp_path / "c", num_clips=2, num_frames=5, height=16, width=24, seed=4, workers=1)
    for name in ("depth/clip_00001.npy", "points/clip_00001.npy"):
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name))
        assert not np.array_equal(np.load(a / name), np.load(c / name))
    assert (a / "camera_params/clip_00000.txt").read_text() == (b / "camera_params/clip_00000.txt").read_text()
    np.testing.assert_array_equal(read_video(a / "videos/clip_00000.mp4"), read_video(b / "videos/clip_00000.mp4"))
    assert (a / "metadata.json").read_text() == (b / "metadata.json").read_text()


def test_per_frame_layout_holds_the_same_arrays(tmp_path):
    a = synthesize_dataset(tmp_path / "a", num_clips=1, num_frames=5, height=16, width=24, seed=1, workers=1)
    b = synthesize_dataset(tmp_path / "b", num_clips=1, num_frames=5, height=16, width=24, seed=1, workers=1,
                           per_frame=True)
    files = sorted((b / "depth" / "clip_00000").glob("frame_*.npy"))
    assert [f.name for f in files] == [f"frame_{i:04d}.npy" for i in range(5)]
    np.testing.assert_array_equal(np.stack([np.load(f) for f in files]), np.load(a / "depth/clip_00000.npy"))
    assert validate_dataset(b)[0] == []


@pytest.mark.parametrize("kind", TRAJECTORIES)
def test_every_trajectory_moves_the_camera_and_sees_texture(kind):
    clip = render_clip(seed=0, index=11, num_frames=9, height=24, width=32, trajectory=kind)
    c2w = np.linalg.inv(clip.w2c)
    move = np.linalg.norm(c2w[-1, :3, 3] - c2w[0, :3, 3])
    fwd0, fwd1 = c2w[0, :3, 2], c2w[-1, :3, 2]
    turn = np.degrees(np.arccos(np.clip(fwd0 @ fwd1, -1, 1)))
    assert move > 0.3 or turn > 15, (kind, move, turn)  # visible camera motion
    assert clip.frames.std() > 10  # textured, not flat
    valid = clip.depth > 0
    assert valid.mean() > 0.5 and clip.depth[valid].min() > 0.05  # camera never inside geometry
    assert clip.trajectory == kind


def _max_rotation_from_first(w2c: np.ndarray) -> float:
    """Largest rotation (degrees) of any frame relative to frame 0."""
    rel = w2c[:, :3, :3] @ w2c[0, :3, :3].T
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return float(np.degrees(np.arccos(cos)).max())


def test_trajectory_window_is_a_slice_of_the_longer_path(tmp_path):
    """A 9-frame window of a 33-frame path: its cameras are frames ``start .. start + 8`` of
    the 33-frame render (same seeded path), it turns less than the whole path, and the
    record says where the window lies; without the option the render is unchanged."""
    for index in range(6):
        full = render_clip(0, index, 33, 16, 16)
        window = render_clip(0, index, 9, 16, 16, trajectory_frames=33)
        s = window.window_start
        assert 0 <= s <= 24
        np.testing.assert_allclose(window.w2c, full.w2c[s:s + 9], atol=1e-12)
        assert _max_rotation_from_first(window.w2c) <= _max_rotation_from_first(full.w2c) + 1e-9
        assert window.prompt.split(" camera ")[-1] == full.prompt.split(" camera ")[-1]
    plain = render_clip(0, 3, 9, 16, 16)
    same = render_clip(0, 3, 9, 16, 16, trajectory_frames=9)
    np.testing.assert_array_equal(plain.frames, same.frames)
    np.testing.assert_array_equal(plain.w2c, same.w2c)
    root = synthesize_dataset(tmp_path / "w", num_clips=2, num_frames=5, height=16, width=16, workers=1,
                              trajectory_frames=21)
    rec = load_metadata(root)[0]
    assert rec.extra["trajectory_window"]["trajectory_frames"] == 21
    with pytest.raises(ValueError, match="trajectory_frames"):
        synthesize_dataset(tmp_path / "bad", num_clips=1, num_frames=9, height=16, width=16, trajectory_frames=5)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_a_time_limit_keeps_the_finished_clips_and_removes_the_rest(tmp_path, capsys):
    rc = main(["data", "synth", "--out", str(tmp_path / "cut"), "--clips", "6", "--frames", "5", "--size", "32x32",
               "--workers", "2", "--max-seconds", "0", "--quiet"])
    assert rc == 0 and "stopped by --max-seconds" in capsys.readouterr().out
    cut = load_metadata(tmp_path / "cut")
    k = len(cut)
    assert 1 <= k < 6 and [r.clip_id for r in cut] == [f"clip_{i:05d}" for i in range(k)]
    for folder in ("videos", "camera_params", "depth", "points"):  # nothing of the unfinished clips is left
        assert sorted(p.stem for p in (tmp_path / "cut" / folder).iterdir()) == [r.clip_id for r in cut]
    assert validate_dataset(tmp_path / "cut")[0] == []
    full = synthesize_dataset(tmp_path / "full", num_clips=k, num_frames=5, height=32, width=32, workers=1)
    for rec in cut:  # the clips a k-clip run renders
        a, b = np.load(rec.depth), np.load(full / "depth" / f"{rec.clip_id}.npy")
        assert np.array_equal(a, b)
