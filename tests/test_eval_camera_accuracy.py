"""``evaluate --reestimate-cameras``: SfM on generated frames, RotErr / TransErr / CamMC
against the requested cameras, SfM failures reported as failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycolmap")

from fantasyworld.cli import main  # noqa: E402
from fantasyworld.data.formats import load_metadata, read_video  # noqa: E402
from fantasyworld.data.synth import synthesize_dataset  # noqa: E402
from fantasyworld.eval import evaluate as evaluate_mod  # noqa: E402
from fantasyworld.eval.camera_accuracy import camera_control_errors, reestimated_camera_accuracy  # noqa: E402
from fantasyworld.eval.evaluate import EvalSettings, evaluate  # noqa: E402
from fantasyworld.geometry.camera_io import read_seed_cameras  # noqa: E402
from fantasyworld.geometry.cameras import look_at_w2c, relative_to_first  # noqa: E402
from fantasyworld.inference.testing import write_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Worlds rendered along known trajectories: stand-ins for generated videos."""
    root = tmp_path_factory.mktemp("camacc") / "worlds"
    return synthesize_dataset(root, num_clips=2, num_frames=17, height=160, width=160, seed=1, workers=2,
                              detail=0.6, trajectories=("arc", "orbit"))


def test_protocol_is_zero_on_the_request_and_invariant_to_frame_and_scale():
    rng = np.random.default_rng(0)
    w2c = np.tile(np.eye(4), (8, 1, 1))
    w2c[:, :3, 3] = np.cumsum(rng.normal(size=(8, 3)), 0)
    assert camera_control_errors(w2c, w2c)["CamMC"] == pytest.approx(0, abs=1e-9)
    # another world frame and scale (what SfM returns): still zero
    g = look_at_w2c(rng.normal(size=3), np.array([1.0, 0.5, 2.0]))
    moved = w2c @ np.linalg.inv(g)
    moved[:, :3, 3] *= 3.7
    errs = camera_control_errors(moved, w2c)
    assert errs["RotErr"] < 1e-9 and errs["TransErr"] < 1e-9 and errs["num_frames"] == 8
    tilted = w2c.copy()
    tilted[1:, :3, :3] = np.array([[1, 0, 0], [0, np.cos(0.1), -np.sin(0.1)], [0, np.sin(0.1), np.cos(0.1)]])
    assert camera_control_errors(tilted, w2c)["RotErr"] == pytest.approx(0.7, abs=1e-6)  # 7 frames x 0.1 rad


def test_reestimated_cameras_of_rendered_videos_are_close_to_the_request(rendered):
    for rec in load_metadata(rendered):
        frames = read_video(rec.video)
        w2c = read_seed_cameras(rec.cameras)
        fx, fy, cx, cy = rec.intrinsics
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        res = reestimated_camera_accuracy(frames, w2c, k)
        assert res["status"] == "ok" and res["registered_fraction"] == 1.0
        # measured here: RotErr 0.04-0.11 rad, TransErr 0.04, CamMC 0.07-0.16 over 17 frames
        assert res["rot_err_deg"] < 1.0 and res["TransErr_per_frame"] < 0.02, res
        assert res["RotErr"] < 0.3 and res["TransErr"] < 0.3 and res["CamMC"] < 0.5, res


def test_textureless_video_is_a_reported_failure():
    frames = np.full((9, 96, 96, 3), 90, np.uint8)
    w2c = np.tile(np.eye(4), (9, 1, 1))
    w2c[:, 0, 3] = np.linspace(0, 1, 9)
    res = reestimated_camera_accuracy(frames, w2c, np.array([[80.0, 0, 48], [0, 80, 48], [0, 0, 1]]))
    assert res["status"] == "failed" and "SfM" in res["reason"] and "RotErr" not in res


def test_evaluate_scores_reestimated_cameras_next_to_the_model(rendered, tmp_path, monkeypatch):
    """The evaluation's generation step replaced by the rendered clip itself (a perfect
    generator): the re-estimated cameras score near zero, the failure rate is 0."""
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")

    class Rendered:
        def __init__(self, sample):
            t = sample["video"].shape[1]
            self.video = ((sample["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().clip(0, 255)
            self.video = self.video.astype(np.uint8)
            self.requested_w2c = relative_to_first(sample["w2c"].double().numpy())
            self.requested_intrinsics = sample["intrinsics"].double().numpy()
            self.w2c = self.requested_w2c.copy()
            self.depth = sample["depth"].numpy()
            self.world_points = sample["points"].numpy()
            assert t == 17

    monkeypatch.setattr(evaluate_mod, "predict_from_generation", lambda pipe, sample, *a, **k: Rendered(sample))
    metrics = evaluate(ckpt, rendered, tmp_path / "eval", EvalSettings(split="all", max_clips=1,
                       modes=("generation",), reestimate_cameras=True, sample_clips=1), log=None)
    cc = metrics["summary"]["generation"]["camera_control"]
    assert cc["reestimated"]["sfm_failure_rate"] == 0.0 and cc["reestimated"]["num_clips"] == 1
    assert cc["reestimated"]["rot_err_deg"] < 1.0 and cc["reestimated"]["TransErr_per_frame"] < 0.02
    assert cc["model"]["RotErr"] == pytest.approx(0.0, abs=1e-6)  # the stand-in's own cameras are the request
    assert "Camera control" in (tmp_path / "eval" / "report.html").read_text()


def test_evaluate_cli_reports_sfm_failures_on_noise_videos(tmp_path):
    data = synthesize_dataset(tmp_path / "data", num_clips=2, num_frames=5, height=32, width=32, seed=3, workers=1)
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all", "--frames", "5",
               "--size", "32x32", "--steps", "2", "--modes", "generation", "--reestimate-cameras", "--out", str(out),
               "--no-report"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    cc = m["summary"]["generation"]["camera_control"]
    # a tiny random model generates 32x32 noise: SfM cannot register it, and says so
    assert cc["reestimated"]["num_failed"] == 2 and cc["reestimated"]["sfm_failure_rate"] == 1.0
    assert cc["reestimated"]["RotErr"] is None  # no number for failures (NaN -> null)
    for clip in m["per_clip"].values():
        assert clip["generation"]["reestimated"]["status"] == "failed"
        assert np.isfinite(clip["generation"]["model_camera_control"]["RotErr"])
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--modes", "latents",
                 "--reestimate-cameras", "--out", str(out)]) == 2
