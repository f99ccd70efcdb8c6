"""``fantasyworld view``: the scene built from generate / evaluate outputs, served on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import numpy as np
import pytest

viser = pytest.importorskip("viser")

from fantasyworld.cli import main as cli_main  # noqa: E402
from fantasyworld.eval.scenes import write_scene  # noqa: E402
from fantasyworld.inference.ply import read_ply  # noqa: E402
from fantasyworld.inference.testing import write_tiny_checkpoint  # noqa: E402
from fantasyworld.viewer.app import build_viewer, confidence_mask  # noqa: E402
from fantasyworld.viewer.outputs import NotAnOutputError, load_output  # noqa: E402

T, H, W = 5, 32, 48
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory, one_thread):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=1)
    out = tmp_path_factory.mktemp("gen")
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--camera", "orbit", "--frames", str(T), "--size",
                     f"{H}x{W}", "--steps", "2", "--max-points", "600", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def server():
    srv = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    yield srv
    start = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - start < 10.0


def test_viewer_serves_the_generate_scene_and_its_sliders_filter_it(gen_dir, server) -> None:
    viewer = build_viewer(load_output(gen_dir), server)
    xyz, _, conf = read_ply(gen_dir / "points.ply")
    assert viewer.cloud.points.shape == (len(xyz), 3) == (600, 3)
    np.testing.assert_allclose(viewer.cloud.points, xyz, atol=2e-3 * np.abs(xyz).max())  # float16 transport
    assert {k: len(v) for k, v in viewer.frustums.items()} == {"predicted": T, "requested": T}
    assert (viewer.conf_slider.min, viewer.conf_slider.max, viewer.conf_slider.value) == (0, 99, 0)
    assert (viewer.frame_slider.min, viewer.frame_slider.max) == (0, T - 1)
    # confidence threshold: the cloud keeps conf >= the percentile
    viewer.conf_slider.value = 50
    want = int((conf >= np.percentile(conf, 50)).sum())
    assert viewer.shown_points == want == viewer.cloud.points.shape[0] and 0 < want < len(xyz)
    # frame slider: frame 3's point map (same percentile of its confidences) and its image
    viewer.frame_slider.value = 3
    points = np.load(gen_dir / "points.npz")
    keep = confidence_mask(points["world_points_conf"][3], 50)
    assert viewer.frame_points.points.shape == (int(keep.sum()), 3)
    np.testing.assert_array_equal(viewer.frame_image.image, viewer.scene.frames[3])
    c2w = np.asarray(json.loads((gen_dir / "cameras.json").read_text())["c2w"])
    np.testing.assert_allclose(viewer.selected.position, c2w[3, :3, 3], atol=1e-6)
    viewer.set_toggles["requested"].value = False
    assert not any(h.visible for h in viewer.frustums["requested"])
    assert all(h.visible for h in viewer.frustums["predicted"])
    # the page and the websocket are served on 127.0.0.1
    port = server.get_port()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read(2000).lower()
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"], open_timeout=10) as ws:
        assert len(ws.recv(timeout=10)) > 0


def test_viewer_aligns_an_evaluation_prediction_to_the_ground_truth(tmp_path, server) -> None:
    rng = np.random.default_rng(0)
    gt_w2c = np.tile(np.eye(4), (T, 1, 1))
    gt_w2c[:, :3, 3] = rng.normal(size=(T, 3))  # non-collinear centres: a unique alignment
    k = np.tile(np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]]), (T, 1, 1))
    gt_points = rng.normal(size=(T, H, W, 3)) + [0, 0, 3]
    # the prediction = ground truth seen in another frame: x_pred = (x_gt - c) / 2
    shift = np.array([0.3, -0.2, 0.5])
    pred_points = (gt_points - shift) / 2
    pred_c2w = np.linalg.inv(gt_w2c)
    pred_c2w[:, :3, 3] = (pred_c2w[:, :3, 3] - shift) / 2
    sample = {"clip_id": "clip_0007", "frames": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
              "gt": {"depth": np.ones((T, H, W)), "w2c": gt_w2c, "intrinsics": k},
              "latents": {"world_points": pred_points, "depth_conf": rng.uniform(1, 2, (T, H, W)),
                          "w2c": np.linalg.inv(pred_c2w)}}
    write_scene(tmp_path, sample)
    (tmp_path / "metrics.json").write_text("{}")
    scene = load_output(tmp_path)
    assert scene.kind == "evaluate" and scene.name == "clip_0007" and scene.clips == ["clip_0007"]
    np.testing.assert_allclose(scene.point_maps, gt_points, atol=1e-4)
    np.testing.assert_allclose(scene.cameras["predicted"].w2c, gt_w2c, atol=1e-6)
    viewer = build_viewer(scene, server)
    assert {k: len(v) for k, v in viewer.frustums.items()} == {"predicted": T, "ground_truth": T}
    assert viewer.cloud.points.shape == (T * H * W, 3)
    with pytest.raises(NotAnOutputError, match="no scene for clip 'clip_9'"):
        load_output(tmp_path, clip="clip_9")


def test_view_refuses_a_folder_that_is_not_an_output(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert cli_main(["view", str(tmp_path), "--port", "0"]) == 2
    assert "not a generate, evaluate or demo output" in capsys.readouterr().err
    with pytest.raises(NotAnOutputError, match="not a folder"):
        load_output(tmp_path / "notes.txt")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium package)")
def test_headless_chromium_renders_the_scene_on_the_canvas(gen_dir, server, tmp_path) -> None:
    from PIL import Image

    viewer = build_viewer(load_output(gen_dir), server)

    def screenshot(name: str) -> np.ndarray:
        shot = tmp_path / f"{name}.png"
        cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
               "--hide-scrollbars", "--window-size=1000,700", "--virtual-time-budget=15000",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"http://127.0.0.1:{server.get_port()}/"]
        subprocess.run(cmd, capture_output=True, timeout=120, check=True)
        # the canvas left of the control panel, below the notification area
        return np.asarray(Image.open(shot).convert("RGB")).astype(int)[250:650, 80:600]

    def drawn(region: np.ndarray) -> float:
        return float((np.abs(region - 255).sum(-1) > 30).mean())  # share of non-white (non-background) pixels

    with_scene = drawn(screenshot("scene"))
    for handle in [viewer.cloud, viewer.frame_points, viewer.selected, *sum(viewer.frustums.values(), [])]:
        handle.visible = False
    empty = drawn(screenshot("hidden"))
    assert with_scene > 0.01 and empty < 0.001, (with_scene, empty)
