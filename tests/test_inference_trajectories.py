"""Named camera paths move as their names say; camera files load or fail with clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fantasyworld.geometry import camera_io
from fantasyworld.geometry.camera_sequence import CameraSequence
from fantasyworld.geometry.cameras import invert_se3
from fantasyworld.inference.trajectories import (
    NAMED_PATHS,
    TrajectoryError,
    load_trajectory,
    named_trajectory,
    resample_trajectory,
)

T, H, W = 9, 32, 48


def _c2w(name: str, magnitude: float | None = None) -> np.ndarray:
    return named_trajectory(name, T, H, W, magnitude).c2w


def _yaw_pitch(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward-axis direction of each camera in the first camera's frame."""
    fwd = c2w[:, :3, 2]
    return fwd[:, 0], fwd[:, 1]


@pytest.mark.parametrize("name", list(NAMED_PATHS))
def test_named_paths_are_rigid_and_start_at_identity(name: str) -> None:
    traj = named_trajectory(name, T, H, W)
    assert traj.w2c.shape == (T, 4, 4) and traj.K.shape == (T, 3, 3)
    np.testing.assert_allclose(traj.w2c[0], np.eye(4), atol=1e-12)
    rot = traj.w2c[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (T, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    np.testing.assert_allclose(traj.K[0, :2, 2], (W / 2, H / 2))


@pytest.mark.parametrize("name,axis,sign", [
    ("dolly-in", 2, 1), ("dolly-out", 2, -1), ("truck-left", 0, -1), ("truck-right", 0, 1),
    ("pedestal-up", 1, -1), ("pedestal-down", 1, 1),
])
def test_translations_move_along_first_camera_axes(name: str, axis: int, sign: int) -> None:
    c2w = _c2w(name, 0.8)
    centres = c2w[:, :3, 3]
    np.testing.assert_allclose(c2w[:, :3, :3], np.broadcast_to(np.eye(3), (T, 3, 3)), atol=1e-12)
    assert np.all(np.diff(sign * centres[:, axis]) > 0)  # monotone along the named axis
    np.testing.assert_allclose(sign * centres[-1, axis], 0.8)
    others = [i for i in range(3) if i != axis]
    np.testing.assert_allclose(centres[:, others], 0.0, atol=1e-12)


@pytest.mark.parametrize("name,side", [("pan-left", -1), ("pan-right", 1)])
def test_pan_rotates_about_camera_y_in_place(name: str, side: int) -> None:
    c2w = _c2w(name, 30)
    np.testing.assert_allclose(c2w[:, :3, 3], 0.0, atol=1e-12)  # no translation
    np.testing.assert_allclose(c2w[:, :3, 1], np.broadcast_to([0, 1, 0], (T, 3)), atol=1e-12)  # y axis fixed
    x, y = _yaw_pitch(c2w)
    assert np.all(np.diff(side * x) > 0) and np.allclose(y, 0)
    assert math.isclose(math.degrees(math.atan2(abs(x[-1]), c2w[-1, 2, 2])), 30, abs_tol=1e-9)


@pytest.mark.parametrize("name,side", [("tilt-up", -1), ("tilt-down", 1)])
def test_tilt_rotates_about_camera_x(name: str, side: int) -> None:
    c2w = _c2w(name)
    np.testing.assert_allclose(c2w[:, :3, 3], 0.0, atol=1e-12)
    np.testing.assert_allclose(c2w[:, :3, 0], np.broadcast_to([1, 0, 0], (T, 3)), atol=1e-12)  # x axis fixed
    x, y = _yaw_pitch(c2w)
    assert np.all(np.diff(side * y) > 0) and np.allclose(x, 0)  # up is -y in OpenCV


@pytest.mark.parametrize("name,side", [("roll-cw", 1), ("roll-ccw", -1)])
def test_roll_rotates_about_optical_axis(name: str, side: int) -> None:
    c2w = _c2w(name)
    np.testing.assert_allclose(c2w[:, :3, 2], np.broadcast_to([0, 0, 1], (T, 3)), atol=1e-12)
    assert np.all(np.diff(side * c2w[:, 1, 0]) > 0)  # camera x turns towards +y (down) for cw


@pytest.mark.parametrize("name,side", [("orbit", -1), ("orbit-left", -1), ("orbit-right", 1)])
def test_orbit_keeps_distance_and_looks_at_target(name: str, side: int) -> None:
    traj = named_trajectory(name, T, H, W, magnitude=90)
    c2w = traj.c2w
    target = np.array([0.0, 0.0, 1.0])
    offsets = target - c2w[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), 1.0, atol=1e-12)  # constant distance
    fwd = c2w[:, :3, 2]
    np.testing.assert_allclose(fwd, offsets / np.linalg.norm(offsets, axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(c2w[:, 1, 3], 0.0, atol=1e-12)  # stays in the horizontal plane
    assert np.all(np.diff(side * c2w[:, 0, 3]) > 0)  # moves to its left (-x) or right (+x)
    # the swept angle about the target is the magnitude
    a0, a1 = -offsets[0], -offsets[-1]
    assert math.isclose(math.degrees(math.acos(a0 @ a1)), 90, abs_tol=1e-9)


@pytest.mark.parametrize("name,side", [("turn-left", -1), ("turn-right", 1)])
def test_turn_moves_forward_while_yawing(name: str, side: int) -> None:
    c2w = _c2w(name)
    x, _ = _yaw_pitch(c2w)
    assert np.all(np.diff(side * x) > 0)  # heading turns to the named side
    assert np.all(np.diff(c2w[:, 2, 3]) > 0)  # drives forward
    assert np.all(side * c2w[1:, 0, 3] > 0)  # and drifts to that side
    # the centre moves along the current heading (tangent to the path)
    vel = np.diff(c2w[:, :3, 3], axis=0)
    mid_fwd = (c2w[1:, :3, 2] + c2w[:-1, :3, 2]) / 2
    cos = (vel * mid_fwd).sum(1) / np.linalg.norm(vel, axis=1) / np.linalg.norm(mid_fwd, axis=1)
    assert np.all(cos > 0.999)


def test_zoom_changes_focal_only() -> None:
    zin, zout = named_trajectory("zoom-in", T, H, W, 1.0), named_trajectory("zoom-out", T, H, W, 1.0)
    np.testing.assert_allclose(zin.w2c, np.broadcast_to(np.eye(4), (T, 4, 4)))
    np.testing.assert_allclose(zin.K[-1, 0, 0] / zin.K[0, 0, 0], 2.0)
    np.testing.assert_allclose(zout.K[-1, 1, 1] / zout.K[0, 1, 1], 0.5)


def test_name_with_magnitude_and_unknown_name() -> None:
    traj = load_trajectory("dolly-in:2", T, H, W)
    np.testing.assert_allclose(traj.c2w[-1, 2, 3], 2.0)
    with pytest.raises(TrajectoryError, match="spiral: neither a named camera path"):
        load_trajectory("spiral", T, H, W)


@pytest.fixture
def orbit() -> CameraSequence:
    traj = named_trajectory("orbit", T, H, W)
    world = np.eye(4)
    world[:3, 3] = (2.0, -1.0, 0.5)  # put it somewhere else in a world frame
    return CameraSequence(traj.w2c @ invert_se3(world), traj.K, H, W)


@pytest.mark.parametrize("fmt", ["seed", "re10k", "json", "tum", "colmap"])
def test_camera_files_round_trip(tmp_path, orbit: CameraSequence, fmt: str) -> None:
    if fmt == "seed":
        path = tmp_path / "cams.txt"
        camera_io.write_seed_cameras(path, orbit.w2c)
    elif fmt == "re10k":
        path = tmp_path / "cams_re10k.txt"
        camera_io.write_re10k_cameras(path, orbit.w2c, orbit.K, H, W, url="https://example.com/x")
    elif fmt == "json":
        path = tmp_path / "cams.json"
        camera_io.write_official_json(path, orbit.w2c, orbit.K[0, 0, 0])
    elif fmt == "tum":
        path = tmp_path / "cams_tum.txt"
        camera_io.write_tum(path, orbit.w2c)
    else:
        path = tmp_path / "colmap"
        camera_io.write_colmap_text(path, orbit.w2c, orbit.K, H, W)
    traj = load_trajectory(path, T, H, W)
    np.testing.assert_allclose(traj.relative().w2c, orbit.relative().w2c, atol=1e-6)
    if fmt in ("re10k", "colmap"):
        np.testing.assert_allclose(traj.K, orbit.K, atol=1e-6)


def test_wrong_frame_count_names_the_file(tmp_path, orbit: CameraSequence) -> None:
    path = tmp_path / "cams.txt"
    camera_io.write_seed_cameras(path, orbit.w2c[:7])
    with pytest.raises(TrajectoryError, match=r"cams\.txt: the trajectory has 7 cameras but num_frames=9"):
        load_trajectory(path, T, H, W)
    resampled = load_trajectory(path, T, H, W, resample=True)
    assert len(resampled) == T
    np.testing.assert_allclose(resampled.w2c[[0, -1]], orbit.w2c[[0, 6]], atol=1e-9)


@pytest.mark.parametrize("content", ["not a camera file\n1 2 3\n", "1 2 3 4 5 6 7 8 9 10 11 nan\n", "\x00\xff\xfe"])
def test_unreadable_file_names_the_file(tmp_path, content: str) -> None:
    path = tmp_path / "broken.txt"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(TrajectoryError, match=r"broken\.txt: cannot read camera file"):
        load_trajectory(path, T, H, W)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(TrajectoryError, match=r"broken\.json: cannot read camera file"):
        load_trajectory(bad_json, T, H, W)
    with pytest.raises(TrajectoryError, match=r"missing\.txt: camera file does not exist"):
        load_trajectory(tmp_path / "missing.txt", T, H, W)


def test_resample_slerps_rotations_and_interpolates_centres() -> None:
    fine = named_trajectory("orbit", 17, H, W)
    up = resample_trajectory(named_trajectory("orbit", 5, H, W), 17)
    # slerp of a constant-rate rotation is exact; centres are linear between the knots (chords)
    np.testing.assert_allclose(up.c2w[:, :3, :3], fine.c2w[:, :3, :3], atol=1e-9)
    np.testing.assert_allclose(up.c2w[::4], fine.c2w[::4], atol=1e-9)
    dolly = resample_trajectory(named_trajectory("dolly-in", 5, H, W), 17)
    np.testing.assert_allclose(dolly.w2c, named_trajectory("dolly-in", 17, H, W).w2c, atol=1e-12)
