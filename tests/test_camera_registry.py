"""A camera format is one registry entry: registered here, it flows through the readers,
the loader (which asks the registry whether the format carries intrinsics) and the
trajectory loader of inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fantasyworld.data.loader import RawClipDataset
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.errors import UNREADABLE, DataError
from fantasyworld.geometry import camera_io
from fantasyworld.geometry.camera_io import CameraFormat, CameraSequence, read_cameras, read_seed_cameras
from fantasyworld.inference.trajectories import load_trajectory

T, H, W = 9, 32, 48


def _read_c2w_rows(path, height, width) -> CameraSequence:
    """Dummy format: one line per frame, 12 numbers of the row-major 3x4 **camera-to-world**."""
    rows = np.loadtxt(path, ndmin=2).reshape(-1, 3, 4)
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3] = rows
    return CameraSequence(w2c=np.linalg.inv(c2w))


def _write_c2w_rows(path, w2c: np.ndarray) -> None:
    np.savetxt(path, np.linalg.inv(w2c)[:, :3].reshape(len(w2c), 12))


@pytest.fixture
def dummy_format(monkeypatch) -> CameraFormat:
    fmt = CameraFormat("c2w_rows", _read_c2w_rows, has_intrinsics=False, suffix=".c2w")
    monkeypatch.setitem(camera_io.CAMERA_FORMATS, fmt.name, fmt)
    return fmt


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize_dataset(tmp_path_factory.mktemp("registry") / "ds", num_clips=1, num_frames=T, height=H,
                              width=W, workers=1)


def test_registered_format_is_read_and_sniffed(dummy_format, tmp_path) -> None:
    w2c = np.stack([np.eye(4)] * 3)
    w2c[:, :3, 3] = np.arange(9.0).reshape(3, 3)
    path = tmp_path / "cams.c2w"
    _write_c2w_rows(path, w2c)
    for fmt in ("c2w_rows", "auto"):
        seq = read_cameras(path, H, W, fmt=fmt, default_fov_deg=90.0)
        np.testing.assert_allclose(seq.w2c, w2c, atol=1e-12)
        np.testing.assert_allclose(seq.K[0], [[W / 2, 0, W / 2], [0, W / 2, H / 2], [0, 0, 1]])
    traj = load_trajectory(path, 3, H, W)  # inference reads camera files through the same registry
    np.testing.assert_allclose(traj.w2c, w2c, atol=1e-12)


def test_loader_keeps_record_intrinsics_for_a_format_without_them(dummy_format, root) -> None:
    meta_path = root / "metadata.json"
    meta = json.loads(meta_path.read_text())
    record = meta["clips"][0]
    seed_cams = root / record.get("cameras", f"camera_params/{record['clip_id']}.txt")
    w2c = read_seed_cameras(seed_cams)
    new_cams = seed_cams.with_suffix(".c2w")
    _write_c2w_rows(new_cams, w2c)
    record["cameras"] = str(new_cams.relative_to(root))
    record["camera_format"] = "c2w_rows"
    record["intrinsics"] = [40.0, 41.0, 24.0, 16.0]
    meta_path.write_text(json.dumps(meta))
    item = RawClipDataset(root, num_frames=T)[0]
    np.testing.assert_allclose(item["w2c"].numpy(), w2c.astype(np.float32), atol=1e-5)
    k = item["intrinsics"][0].numpy()
    np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]], [40.0, 41.0, 24.0, 16.0])


def test_unknown_format_is_a_data_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "cams.txt"
    path.write_text("0 0 0 0 0 0 0 0 0 0 0 0\n")
    with pytest.raises(DataError) as err:
        read_cameras(path, H, W, fmt="nope")
    assert err.value.path == str(path) and "unknown camera format 'nope'" in err.value.message
    assert "seed" in err.value.message  # the known formats are listed


@pytest.mark.parametrize("fmt, content", [
    ("seed", b"\xff\xfe 1 0 0 0\n"),
    ("auto", b"\x80\x81\x82\n"),
    ("official_json", b"\xff{}"),
])
def test_camera_file_that_is_not_utf8_is_a_data_error(tmp_path, fmt, content) -> None:
    path = tmp_path / ("cams.json" if fmt == "official_json" else "cams.txt")
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_cameras(path, H, W, fmt=fmt)
    assert err.value.kind == UNREADABLE and err.value.path == str(path) and "not UTF-8" in err.value.message


@pytest.mark.parametrize("content, what", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "'cameras_interp'"),
    ('{"cameras_interp": "abc"}', "not a numeric"),
    ('{"cameras_interp": [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]], "focal_length": "x"}',
     "focal_length 'x' is not a number"),
])
def test_malformed_official_json_is_a_data_error(tmp_path, content, what) -> None:
    path = tmp_path / "cams.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_cameras(path, H, W, fmt="official_json")
    assert err.value.path == str(path) and what in err.value.message
