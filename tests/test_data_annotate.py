"""``fantasyworld data annotate``: real videos in, the seed layout out.

Acceptance on textured synthetic worlds (exact ground truth): SfM cameras within 1 degree
(rotation) and 2 degrees (translation direction) after Sim(3) alignment; with the ground
truth depth plugged in as the estimator, depth and point maps within AbsRel 0.01 after one
global scale; a tiny random transformers depth model runs the whole command, the dataset
validates and trains one step. Bad input is rejected clip by clip, nothing half-written,
and an interrupted run resumes.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycolmap")

from fantasyworld.cli import main  # noqa: E402
from fantasyworld.data.annotate.alignment import AlignSettings, align_depth  # noqa: E402
from fantasyworld.data.annotate.depth import input_size  # noqa: E402
from fantasyworld.data.annotate.sfm import interpolate_unregistered  # noqa: E402
from fantasyworld.data.formats import load_metadata, write_video  # noqa: E402
from fantasyworld.data.synth import render_clip, synthesize_dataset  # noqa: E402
from fantasyworld.data.transforms import CropResize  # noqa: E402
from fantasyworld.data.validate import validate_dataset  # noqa: E402
from fantasyworld.eval.metrics import aligned_pose_errors, apply_sim3, umeyama_alignment  # noqa: E402
from fantasyworld.geometry.camera_io import read_seed_cameras  # noqa: E402
from fantasyworld.geometry.cameras import look_at_w2c  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FRAMES = 20

pytestmark = pytest.mark.usefixtures("one_thread")

GT_DEPTH_PLUGIN = '''
import numpy as np

def gt_depth(frames, context):
    """The dataset's own depth as the estimator (metric)."""
    return {"depth": context.gt.depth, "metric": True}

def flat_depth(frames, context):
    return np.ones(frames.shape[:3])

def bad_depth(frames, context):
    t, h, w = frames.shape[:3]
    if context.clip_id.endswith("0"):
        return np.ones((t, h + 1, w))          # wrong shape
    if context.clip_id.endswith("1"):
        out = np.ones((t, h, w)); out[0, 0, 0] = np.nan
        return out                             # NaN
    return {"depth": context.gt.depth, "metric": True}
'''


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    """Three textured worlds at 160x160 (structure from motion needs features)."""
    root = tmp_path_factory.mktemp("annotate") / "worlds"
    return synthesize_dataset(root, num_clips=3, num_frames=FRAMES, height=160, width=160, seed=1, workers=2,
                              detail=0.6, trajectories=("arc", "orbit", "dolly_turn"))


@pytest.fixture
def plugins(tmp_path, monkeypatch) -> str:
    (tmp_path / "fw_test_plugins.py").write_text(textwrap.dedent(GT_DEPTH_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fw_test_plugins"


def _report(root: Path) -> dict:
    return json.loads((root / "report.json").read_text())


def test_sfm_cameras_and_ground_truth_depth_meet_the_bars(textured, plugins, tmp_path):
    out = tmp_path / "ann"
    rc = main(["data", "annotate", "--videos", str(textured / "videos"), "--out", str(out), "--frames", str(FRAMES),
               "--depth", f"{plugins}:gt_depth", "--gt-root", str(textured), "--quiet"])
    assert rc == 0
    assert validate_dataset(out) == ([], 3)
    report = _report(out)
    assert report["summary"]["ok"] == 3
    for rec, entry in zip(load_metadata(out), report["clips"]):
        cid = rec.clip_id
        assert entry["registered_fraction"] == 1.0 and entry["interpolated"] == []
        assert (out / entry["thumbnails"]["depth"]).is_file() and (out / entry["thumbnails"]["trajectory"]).is_file()
        gt_w2c = read_seed_cameras(textured / f"camera_params/{cid}.txt")
        w2c = read_seed_cameras(rec.cameras)
        err = aligned_pose_errors(w2c, gt_w2c)
        rot, trans = float(np.median(err["rot_err"])), float(np.median(err["trans_dir_err"]))
        assert rot <= 1.0 and trans <= 2.0, (cid, rot, trans)
        gt_depth = np.load(textured / f"depth/{cid}.npy")
        gt_points = np.load(textured / f"points/{cid}.npy")
        depth, points = np.load(rec.depth), np.load(rec.points)
        both = (gt_depth > 0) & (depth > 0)
        assert both.sum() >= 0.99 * (gt_depth > 0).sum()  # only the sky is invalid
        scale = np.median(gt_depth[both] / depth[both])
        assert abs(scale - 1.0) < 0.01  # metric estimator: the clip is written in metres
        absrel = float(np.mean(np.abs(scale * depth[both] - gt_depth[both]) / gt_depth[both]))
        assert absrel <= 0.01, (cid, absrel)
        # point maps: after one global similarity, distance to the true point relative to its depth
        s, r, t = umeyama_alignment(points[both], gt_points[both])
        rel = np.linalg.norm(apply_sim3(points[both], s, r, t) - gt_points[both], axis=-1) / gt_depth[both]
        assert float(np.mean(rel)) <= 0.01, (cid, float(np.mean(rel)))
        assert rec.intrinsics.shape == (4,) and abs(entry["fov_deg"] - 2 * np.degrees(
            np.arctan(80 / json.loads((textured / "metadata.json").read_text())["clips"][int(cid[-1])]
                      ["intrinsics"][0]))) < 3.0
    html = (out / "report.html").read_text()
    assert "registered" in html and "clip_00000" in html


def test_ground_truth_pass_through_reproduces_the_dataset(textured, tmp_path):
    out = tmp_path / "gt"
    rc = main(["data", "annotate", "--videos", str(textured / "videos"), "--out", str(out), "--frames", "9",
               "--stride", "2", "--cameras", "gt", "--depth", "gt", "--size", "96x128", "--workers", "2",
               "--quiet"])
    assert rc == 0 and validate_dataset(out) == ([], 3)
    for rec in load_metadata(out):
        depth, points = np.load(rec.depth), np.load(rec.points)
        assert depth.shape == (9, 96, 128) and rec.extra["source"]["frame_indices"] == list(range(0, 17, 2))
        w2c = read_seed_cameras(rec.cameras)
        gt_w2c = read_seed_cameras(textured / f"camera_params/{rec.clip_id}.txt")[::2][:9]
        # metric ground truth: written in the dataset's own units and world frame
        np.testing.assert_allclose(w2c, gt_w2c, atol=1e-6)
        # nearest sampling through the loader's crop/resize: each written point is the true
        # surface point of its source pixel
        rows, cols = CropResize.plan((160, 160), (96, 128)).index_maps()
        gt_points = np.load(textured / f"points/{rec.clip_id}.npy")[0:17:2][:, rows[:, None], cols[None, :]]
        valid = depth > 0
        assert valid.mean() > 0.5
        np.testing.assert_allclose(points[valid], gt_points[valid], atol=1e-4)


def test_tiny_random_depth_model_runs_end_to_end_and_trains(tmp_path, capsys):
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        DepthProConfig,
        DepthProForDepthEstimation,
        Dinov2Config,
    )

    data = synthesize_dataset(tmp_path / "worlds", num_clips=1, num_frames=17, height=100, width=136, seed=1,
                              workers=1, detail=0.6, trajectories=("orbit",))
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                              fusion_hidden_size=16, head_hidden_size=8, reassemble_factors=[2, 1])
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(tmp_path / "tiny_da")
    (tmp_path / "tiny_da" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 56, "width": 56}, "keep_aspect_ratio": True, "ensure_multiple_of": 14}))
    out = tmp_path / "ann"
    # a random model predicts nonsense: accept any residual so that the whole command runs
    rc = main(["data", "annotate", "--videos", str(data / "videos"), "--out", str(out), "--frames", "17",
               "--depth-model", str(tmp_path / "tiny_da"), "--max-depth-residual", "10", "--quiet"])
    assert rc == 0 and validate_dataset(out) == ([], 1)
    entry = _report(out)["clips"][0]
    assert entry["depth_kind"] == "inverse_depth" and entry["registered_fraction"] >= 0.8
    assert entry["units"].startswith("median depth")
    # 100 rows: not a multiple of 16; the loader crops/resizes for training
    assert main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"output_dir={tmp_path / 'run'}",
                 f"data.root={out}", "data.num_frames=5", "data.height=32", "data.width=32", "steps=1",
                 "checkpoint.every=1", "log.progress=false", "log.tensorboard=false"]) == 0
    assert (tmp_path / "run" / "step-1.safetensors").is_file()

    # a Depth Pro folder given to --depth depth-anything: a named error, nothing written
    dino = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        patch_size=4, image_size=16).to_dict()
    pro = DepthProConfig(image_model_config=dino, patch_model_config=dino, fov_model_config=dino, patch_size=16,
                         fusion_hidden_size=16, intermediate_hook_ids=[1, 0], intermediate_feature_dims=[8, 8],
                         scaled_images_ratios=[0.5, 1], scaled_images_overlap_ratios=[0.0, 0.25],
                         scaled_images_feature_dims=[16, 16], use_fov_model=True)
    DepthProForDepthEstimation(pro).save_pretrained(tmp_path / "tiny_pro")
    for model in (tmp_path / "tiny_pro", tmp_path / "nowhere"):
        bad_out = tmp_path / f"bad_{model.name}"
        rc = main(["data", "annotate", "--videos", str(data / "videos"), "--out", str(bad_out),
                   "--depth-model", str(model), "--quiet"])
        assert rc == 2 and not bad_out.exists()
    err = capsys.readouterr().err
    assert "holds a 'depth_pro' model, --depth depth-anything needs 'depth_anything' (use --depth depth-pro)" in err
    assert "nowhere: folder does not exist" in err
    from fantasyworld.data.annotate.depth import TransformersDepth

    pred = TransformersDepth("depth-pro", tmp_path / "tiny_pro")(np.zeros((3, 40, 48, 3), np.uint8))
    assert pred.values.shape == (3, 40, 48) and pred.kind == "depth" and pred.metric
    assert np.isfinite(pred.values).all() and (pred.values > 0).all()


def test_bad_input_is_rejected_clip_by_clip(textured, plugins, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 100)
    write_video(videos / "flat.mp4", np.full((FRAMES, 96, 96, 3), 128, np.uint8))  # no texture
    write_video(videos / "short.mp4", np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8))
    # a sideways slide without rotation: where SfM registers it, its focal length is not observable;
    # whether SfM registers enough of it depends on the machine (thread count, match order), so the
    # focal-length check itself is tested exactly in test_a_camera_that_does_not_turn_has_no_focal_length
    write_video(videos / "slide.mp4", render_clip(0, 2, FRAMES, 160, 160, trajectory="pan", detail=0.6).frames)
    out = tmp_path / "ann"
    rc = main(["data", "annotate", "--videos", str(videos), "--out", str(out), "--frames", str(FRAMES),
               "--depth", f"{plugins}:flat_depth"])
    assert rc == 1
    lines = capsys.readouterr().out
    assert "broken: rejected [unreadable_video]" in lines and "flat: rejected [sfm_failed]" in lines
    codes = {e["clip_id"]: e["reason_code"] for e in _report(out)["clips"]}
    assert codes.pop("slide") in ("focal_length", "too_few_registered", "unregistered_ends")
    assert codes == {"broken": "unreadable_video", "flat": "sfm_failed", "short": "too_few_frames"}
    assert not (out / "metadata.json").exists() and not (out / ".annotate_tmp").exists()
    assert not (out / "videos").exists() or not any((out / "videos").iterdir())

    # estimator output: wrong shape and NaN rejected, the third clip still annotated
    out2 = tmp_path / "ann2"
    rc = main(["data", "annotate", "--videos", str(textured / "videos"), "--out", str(out2), "--frames", "5",
               "--cameras", "gt", "--depth", f"{plugins}:bad_depth", "--gt-root", str(textured), "--quiet"])
    assert rc == 1
    entries = {e["clip_id"]: e for e in _report(out2)["clips"]}
    assert entries["clip_00000"]["reason_code"] == "estimator_output" and "shape" in entries["clip_00000"]["reason"]
    assert entries["clip_00001"]["reason_code"] == "estimator_output" and "NaN" in entries["clip_00001"]["reason"]
    assert entries["clip_00002"]["status"] == "ok"
    assert validate_dataset(out2) == ([], 1)
    assert sorted(p.name for p in (out2 / "depth").iterdir()) == ["clip_00002.npy"]

    # an unknown plug-in and an output folder holding another dataset: named errors
    assert main(["data", "annotate", "--videos", str(videos), "--out", str(tmp_path / "x"),
                 "--depth", "no_such_module:f"]) == 2
    assert main(["data", "annotate", "--videos", str(videos), "--out", str(textured),
                 "--depth", f"{plugins}:flat_depth"]) == 2
    err = capsys.readouterr().err
    assert "cannot import 'no_such_module'" in err and "did not write" in err


def test_a_camera_that_does_not_turn_has_no_focal_length():
    """The camera checks on exact estimates: a slide (no rotation) and an implausible field of
    view are rejected as ``focal_length`` when SfM estimated the focal length, kept when it was given."""
    from fantasyworld.data.annotate.estimators import CameraEstimate
    from fantasyworld.data.annotate.pipeline import AnnotateSettings, Rejected, _check_cameras

    def estimate(trajectory: str, fov_scale: float = 1.0) -> tuple[CameraEstimate, int]:
        clip = render_clip(0, 2, 9, 32, 48, trajectory=trajectory)
        k = np.repeat(clip.K[None], 9, 0)
        k[:, 0, 0] *= fov_scale
        return CameraEstimate(clip.w2c, np.ones(9, bool), k, [np.zeros((0, 3))] * 9), clip.frames.shape[2]

    settings = AnnotateSettings()
    slide, width = estimate("pan")
    with pytest.raises(Rejected, match="turns by 0.0 deg") as rej:
        _check_cameras(slide, settings, width, fixed_k=False)
    assert rej.value.code == "focal_length"
    _check_cameras(slide, settings, width, fixed_k=True)  # a given focal length needs no rotation
    turn, width = estimate("turn")
    _check_cameras(turn, settings, width, fixed_k=False)  # rotates, plausible field of view: kept
    tele, width = estimate("turn", fov_scale=20.0)  # focal 20x: a field of view of a few degrees
    with pytest.raises(Rejected, match="field of view") as rej:
        _check_cameras(tele, settings, width, fixed_k=False)
    assert rej.value.code == "focal_length"
    half = CameraEstimate(turn.w2c, np.arange(9) < 6, turn.K, turn.sparse)
    with pytest.raises(Rejected, match="6/9 frames registered") as rej:
        _check_cameras(half, settings, width, fixed_k=False)
    assert rej.value.code == "too_few_registered"


def test_resume_skips_done_clips_and_redoes_half_written_ones(textured, tmp_path, capsys):
    out = tmp_path / "ann"
    args = ["data", "annotate", "--videos", str(textured / "videos"), "--out", str(out), "--frames", "5",
            "--cameras", "gt", "--depth", "gt", "--quiet"]
    assert main(args) == 0
    first = np.load(out / "depth/clip_00001.npy")
    # a run killed while writing clip_00001: files moved in, marker missing, scratch left over
    (out / "annotations/clip_00001.json").unlink()
    (out / "depth/clip_00001.npy").write_bytes(b"half")
    (out / ".annotate_tmp/clip_00001").mkdir(parents=True)
    (out / ".annotate_tmp/clip_00001/points.npy").write_bytes(b"junk")
    assert [r.clip_id for r in load_metadata(out)] == ["clip_00000", "clip_00001", "clip_00002"]
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2 already done, 1 to do" in text and "clip_00001: ok" in text and "clip_00000: ok" not in text
    np.testing.assert_array_equal(np.load(out / "depth/clip_00001.npy"), first)
    assert validate_dataset(out) == ([], 3) and not (out / ".annotate_tmp").exists()


def test_alignment_recovers_scale_and_shift_with_outliers():
    rng = np.random.default_rng(0)
    t, h, w = 3, 40, 50
    true = rng.uniform(1.0, 6.0, (t, h, w))
    sparse = []
    for _ in range(t):
        u, v = rng.uniform(0, w, 300), rng.uniform(0, h, 300)
        z = true[0 if not sparse else len(sparse), v.astype(int), u.astype(int)].copy()
        z[:30] *= rng.uniform(2, 5, 30)  # 10% gross outliers
        sparse.append(np.stack([u, v, z], 1))
    disparity = 0.37 / true - 0.05  # what relative Depth Anything gives: affine in inverse depth
    res = align_depth(disparity, "inverse_depth", sparse, AlignSettings())
    ok = res.valid
    assert ok.mean() > 0.99 and np.abs(res.depth[ok] / true[ok] - 1).max() < 1e-6
    assert all(f.source == "frame" and f.residual < 1e-6 for f in res.fits)
    scaled = 0.2 * true * np.array([1.0, 2.0, 3.0])[:, None, None]  # a different scale per frame
    res = align_depth(scaled, "depth", sparse)
    assert np.abs(res.depth[res.valid] / true[res.valid] - 1).max() < 1e-6
    with pytest.raises(ValueError, match="sparse points"):
        align_depth(scaled, "depth", [s[:3] for s in sparse])


def test_interpolation_only_between_registered_frames_and_processor_sizes():
    eyes = np.stack([np.linspace(0, 2, 6), np.zeros(6), np.zeros(6)], 1)
    w2c = np.stack([look_at_w2c(e, e + np.array([0.3 * i, 0, 4.0])) for i, e in enumerate(eyes)])
    reg = np.array([False, True, False, False, True, False])
    filled, interp = interpolate_unregistered(np.where(reg[:, None, None], w2c, np.nan), reg)
    assert interp.tolist() == [False, False, True, True, False, False]
    assert np.isnan(filled[0]).all() and np.isnan(filled[5]).all()
    np.testing.assert_allclose(np.linalg.inv(filled[2])[:3, 3], [0.8, 0, 0], atol=1e-9)
    # the DPT image processor's sizes (Depth Anything V2: 518, aspect kept, multiples of 14)
    assert input_size(480, 640, (518, 518), True, 14) == (518, 686)
    assert input_size(304, 528, (518, 518), True, 14) == (294, 518)
