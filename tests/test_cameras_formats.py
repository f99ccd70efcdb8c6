"""Camera file formats: write -> read gives the same matrices, conventions are converted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fantasyworld.errors import CAMERA_COLUMNS, NON_FINITE, NON_ORTHONORMAL, DataError
from fantasyworld.geometry import camera_io as cio
from fantasyworld.geometry.cameras import (
    c2w_to_w2c,
    intrinsics_from_fov,
    look_at_w2c,
    make_intrinsics,
    normalized_to_pixel_intrinsics,
    opencv_to_opengl_c2w,
    pixel_to_normalized_intrinsics,
    shift_principal_point,
    w2c_to_c2w,
)
from fantasyworld.geometry.rotation import axis_angle_to_mat

H, W = 48, 80


def _trajectory(n: int = 7, seed: int = 0) -> np.ndarray:
    """Random rigid w2c (n, 4, 4) with large rotations and translations."""
    gen = torch.Generator().manual_seed(seed)
    rot = axis_angle_to_mat(torch.randn(n, 3, generator=gen, dtype=torch.float64) * 1.5).numpy()
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = torch.randn(n, 3, generator=gen, dtype=torch.float64).numpy() * 3
    return w2c


def _intrinsics(n: int) -> np.ndarray:
    fx = np.linspace(50, 70, n)
    return make_intrinsics(fx, fx * 1.1, W / 2 + np.linspace(-2, 2, n), H / 2 + 1.5)


# Text formats are written with 9-12 significant digits: 1e-8 absolute on O(1-10) values.
ATOL = 1e-8


def test_w2c_c2w_are_inverse_and_opengl_flip_is_an_involution():
    w2c = _trajectory()
    c2w = w2c_to_c2w(w2c)
    np.testing.assert_allclose(c2w @ w2c, np.tile(np.eye(4), (len(w2c), 1, 1)), atol=1e-12)
    np.testing.assert_allclose(c2w_to_w2c(c2w), w2c, atol=1e-12)
    # the camera centre is -R^T t
    np.testing.assert_allclose(c2w[:, :3, 3], -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3]), atol=1e-12)
    gl = opencv_to_opengl_c2w(c2w)
    np.testing.assert_allclose(gl[:, :3, 1], -c2w[:, :3, 1])  # y flipped, z flipped, x kept
    np.testing.assert_allclose(gl[:, :3, 0], c2w[:, :3, 0])
    np.testing.assert_allclose(opencv_to_opengl_c2w(gl), c2w)
    # torch in, torch out
    t = torch.from_numpy(w2c)
    torch.testing.assert_close(w2c_to_c2w(t), torch.from_numpy(c2w))


def test_normalised_and_pixel_intrinsics_round_trip():
    k = _intrinsics(5)
    kn = pixel_to_normalized_intrinsics(k, H, W)
    np.testing.assert_allclose(kn[:, 0, 0], k[:, 0, 0] / W)
    np.testing.assert_allclose(kn[:, 1, 2], k[:, 1, 2] / H)
    np.testing.assert_allclose(normalized_to_pixel_intrinsics(kn, H, W), k, atol=1e-12)
    # OpenCV integer-centre <-> corner convention is half a pixel on the principal point
    np.testing.assert_allclose(shift_principal_point(k, 0.5)[:, 0, 2], k[:, 0, 2] + 0.5)
    assert intrinsics_from_fov(90.0, H, W)[0, 0] == pytest.approx(W / 2)


def test_seed_rows_round_trip(tmp_path):
    w2c = _trajectory()
    cio.write_seed_cameras(tmp_path / "c.txt", w2c)
    lines = (tmp_path / "c.txt").read_text().splitlines()
    assert len(lines) == len(w2c) and all(len(ln.split()) == 12 for ln in lines)
    np.testing.assert_allclose(cio.read_seed_cameras(tmp_path / "c.txt"), w2c, atol=ATOL)
    # commas are accepted too
    (tmp_path / "d.txt").write_text("\n".join(",".join(ln.split()) for ln in lines))
    np.testing.assert_allclose(cio.read_seed_cameras(tmp_path / "d.txt"), w2c, atol=ATOL)


@pytest.mark.parametrize("header", ["https://www.youtube.com/watch?v=abc", ""])
def test_realestate10k_round_trip_normalises_intrinsics(tmp_path, header):
    w2c, k = _trajectory(), _intrinsics(7)
    ts = np.arange(7) * 33366.0
    cio.write_re10k_cameras(tmp_path / "r.txt", w2c, k, H, W, timestamps=ts, url=header)
    rows = (tmp_path / "r.txt").read_text().splitlines()
    assert rows[0] == header and len(rows) == 8 and len(rows[1].split()) == 19
    # fx is stored divided by the width
    assert float(rows[1].split()[1]) == pytest.approx(k[0, 0, 0] / W)
    seq = cio.read_re10k_cameras(tmp_path / "r.txt", H, W)
    np.testing.assert_allclose(seq.w2c, w2c, atol=ATOL)
    np.testing.assert_allclose(seq.K, k, atol=1e-8)
    np.testing.assert_allclose(seq.timestamps, ts)
    # read at twice the resolution: pixel intrinsics double
    seq2 = cio.read_re10k_cameras(tmp_path / "r.txt", 2 * H, 2 * W)
    np.testing.assert_allclose(seq2.K[:, :2], 2 * k[:, :2], atol=1e-8)


def test_official_json_is_c2w_with_centred_principal_point(tmp_path):
    w2c = _trajectory()
    cio.write_official_json(tmp_path / "o.json", w2c, focal_length=321.0)
    data = json.loads((tmp_path / "o.json").read_text())
    # the file holds camera-to-world matrices
    np.testing.assert_allclose(np.asarray(data["cameras_interp"]), w2c_to_c2w(w2c), atol=1e-12)
    seq = cio.read_official_json(tmp_path / "o.json", H, W)
    np.testing.assert_allclose(seq.w2c, w2c, atol=1e-10)
    np.testing.assert_allclose(seq.K[0], [[321, 0, (W - 1) / 2], [0, 321, (H - 1) / 2], [0, 0, 1]])


def test_tum_round_trip(tmp_path):
    w2c = _trajectory()
    ts = np.linspace(1.5, 2.5, 7)
    cio.write_tum(tmp_path / "t.txt", w2c, ts)
    first = [ln for ln in (tmp_path / "t.txt").read_text().splitlines() if not ln.startswith("#")][0]
    vals = np.asarray(first.split(), dtype=np.float64)
    # translation column is the camera centre (c2w), quaternion is unit and scalar-last
    np.testing.assert_allclose(vals[1:4], w2c_to_c2w(w2c)[0, :3, 3], atol=1e-9)
    assert np.linalg.norm(vals[4:8]) == pytest.approx(1.0, abs=1e-9)
    seq = cio.read_tum(tmp_path / "t.txt")
    np.testing.assert_allclose(seq.w2c, w2c, atol=1e-9)
    np.testing.assert_allclose(seq.timestamps, ts)


def test_colmap_text_round_trip_with_points(tmp_path):
    w2c, k = _trajectory(), _intrinsics(7)
    pts = np.random.default_rng(0).normal(size=(10, 3))
    cols = np.random.default_rng(1).integers(0, 255, size=(10, 3))
    names = [f"img_{i:03d}.jpg" for i in range(7)]
    cio.write_colmap_text(tmp_path / "sparse", w2c, k, H, W, names=names, points=pts, colors=cols)
    model = cio.read_colmap_text(tmp_path / "sparse")
    assert len(model.cameras) == 7 and len(model.images) == 7 and len(model.points3d) == 10
    seq = model.to_sequence()
    assert seq.names == names
    np.testing.assert_allclose(seq.w2c, w2c, atol=1e-9)
    np.testing.assert_allclose(seq.K, k, atol=1e-9)
    np.testing.assert_allclose(np.stack([model.points3d[i + 1]["xyz"] for i in range(10)]), pts, atol=1e-8)
    np.testing.assert_array_equal(np.stack([model.points3d[i + 1]["rgb"] for i in range(10)]), cols)
    # rescaled to another resolution through the generic reader
    seq2 = cio.read_cameras(tmp_path / "sparse", H // 2, W // 2)
    np.testing.assert_allclose(seq2.K[:, 0, 2], k[:, 0, 2] / 2, atol=1e-9)


def test_colmap_reader_accepts_real_files_with_keypoints(tmp_path):
    # hand-written model: SIMPLE_RADIAL camera, one image with two keypoints (one untracked)
    d = tmp_path / "m"
    d.mkdir()
    (d / "cameras.txt").write_text("# c\n1 SIMPLE_RADIAL 640 480 500 320 240 0.01\n")
    (d / "images.txt").write_text("# i\n1 1 0 0 0 0.5 -1 2 1 a.png\n10.5 20.5 3 11 12 -1\n")
    model = cio.read_colmap_text(d)
    img = model.images[1]
    np.testing.assert_allclose(img.w2c()[:3, 3], [0.5, -1, 2])
    np.testing.assert_allclose(img.w2c()[:3, :3], np.eye(3))
    np.testing.assert_array_equal(img.point3d_ids, [3, -1])
    np.testing.assert_allclose(model.cameras[1].K(), [[500, 0, 320], [0, 500, 240], [0, 0, 1]])


def test_auto_detection_and_default_intrinsics(tmp_path):
    w2c, k = _trajectory(), _intrinsics(7)
    cio.write_seed_cameras(tmp_path / "s.txt", w2c)
    cio.write_re10k_cameras(tmp_path / "r.txt", w2c, k, H, W)
    cio.write_tum(tmp_path / "t.txt", w2c)
    cio.write_official_json(tmp_path / "o.json", w2c, 100.0)
    for name in ("s.txt", "r.txt", "t.txt", "o.json"):
        seq = cio.read_cameras(tmp_path / name, H, W)
        np.testing.assert_allclose(seq.w2c, w2c, atol=1e-8, err_msg=name)
        assert seq.K.shape == (7, 3, 3)
    seed = cio.read_cameras(tmp_path / "s.txt", H, W, default_fov_deg=90.0)
    np.testing.assert_allclose(seed.K[0], [[W / 2, 0, W / 2], [0, W / 2, H / 2], [0, 0, 1]])


def test_readers_name_the_file_and_line_on_bad_input(tmp_path):
    w2c = _trajectory(3)
    cio.write_seed_cameras(tmp_path / "c.txt", w2c)
    lines = (tmp_path / "c.txt").read_text().splitlines()
    (tmp_path / "cols.txt").write_text("\n".join([lines[0], " ".join(lines[1].split()[:11]), lines[2]]))
    with pytest.raises(DataError) as err:
        cio.read_seed_cameras(tmp_path / "cols.txt")
    assert err.value.kind == CAMERA_COLUMNS and "line 2" in str(err.value) and "cols.txt" in str(err.value)
    (tmp_path / "nan.txt").write_text("\n".join([lines[0], lines[1].replace(lines[1].split()[3], "nan", 1)]))
    with pytest.raises(DataError) as err:
        cio.read_seed_cameras(tmp_path / "nan.txt")
    assert err.value.kind == NON_FINITE
    bad = w2c.copy()
    bad[1, :3, :3] *= 1.01  # 2% off orthonormal: far above the 1e-3 tolerance
    cio.write_seed_cameras(tmp_path / "rot.txt", bad)
    with pytest.raises(DataError) as err:
        cio.read_seed_cameras(tmp_path / "rot.txt")
    assert err.value.kind == NON_ORTHONORMAL and "row 2" in str(err.value)


def test_look_at_uses_opencv_axes():
    w2c = look_at_w2c([0, 1, 0], [0, 1, 5])  # looking along +z, world y up
    np.testing.assert_allclose(w2c[:3, 2], [0, 0, 1], atol=1e-12)  # row 2 (camera z) = forward
    np.testing.assert_allclose(w2c[1, :3], [0, -1, 0], atol=1e-12)  # camera y = world down
    # a point above the target appears in the upper half of the image (v < cy)
    cam = w2c[:3, :3] @ np.array([0, 2, 5]) + w2c[:3, 3]
    assert cam[1] < 0 and cam[2] > 0
