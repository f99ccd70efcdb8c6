"""End to end on the tiny presets: every output file, re-read, matches the arrays in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from plyfile import PlyData
from safetensors.torch import save_file

from fantasyworld.cli import main as cli_main
from fantasyworld.data.formats import read_video
from fantasyworld.geometry import camera_io
from fantasyworld.geometry.cameras import w2c_to_c2w
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.testing import write_tiny_checkpoint
from fantasyworld.inference.trajectories import TrajectoryError, named_trajectory

T, H, W = 9, 32, 48
KW = dict(num_frames=T, height=H, width=W, num_steps=3, progress=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=1)


@pytest.fixture(scope="module")
def pipe(ckpt) -> FantasyWorldPipeline:
    return FantasyWorldPipeline.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def result(pipe):
    return pipe("a room with a ball", camera="orbit", seed=3, max_points=1000, **KW)


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, result.save(out)


def test_result_arrays_have_documented_shapes(result) -> None:
    shapes = {
        "video": (T, H, W, 3), "latents": (16, 3, H // 8, W // 8), "depth": (T, H, W), "depth_conf": (T, H, W),
        "world_points": (T, H, W, 3), "world_points_conf": (T, H, W), "pose_enc": (T, 9), "w2c": (T, 4, 4),
        "intrinsics": (T, 3, 3), "requested_w2c": (T, 4, 4), "requested_intrinsics": (T, 3, 3),
    }
    for name, shape in shapes.items():
        assert getattr(result, name).shape == shape, name
    assert result.video.dtype == np.uint8
    assert result.c2w.shape == (T, 4, 4)
    np.testing.assert_allclose(result.requested_w2c, named_trajectory("orbit", T, H, W).w2c)
    assert 0 < len(result.cloud) <= 1000 and result.cloud.rgb.dtype == np.uint8
    assert result.settings["geometry"] == "final" and result.settings["seed"] == 3


def test_every_file_exists_and_matches_memory(result, saved) -> None:
    out, paths = saved
    expected = ["video.mp4", "depth.npz", "depth.mp4", "points.npz", "points.ply", "cameras.json",
                "cameras_re10k.txt", "cameras_tum.txt", "cameras_requested_re10k.txt", "latents.npy",
                "generation.json", "report.html", "colmap/sparse/0/cameras.txt", "colmap/sparse/0/images.txt",
                "colmap/sparse/0/points3D.txt"]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "colmap" / "images").iterdir()) == [f"frame_{i:04d}.png" for i in range(T)]
    # videos
    assert read_video(out / "video.mp4").shape == (T, H, W, 3)
    assert read_video(out / "depth.mp4").shape == (T, H, W, 3)
    # arrays
    depth = np.load(out / "depth.npz")
    assert depth["depth"].dtype == np.float16 and depth["depth"].shape == (T, H, W)
    np.testing.assert_allclose(depth["depth"].astype(np.float32), result.depth, rtol=1e-3)
    np.testing.assert_allclose(depth["depth_conf"].astype(np.float32), result.depth_conf, rtol=1e-3)
    points = np.load(out / "points.npz")
    np.testing.assert_array_equal(points["world_points"], result.world_points)
    np.testing.assert_array_equal(points["world_points_conf"], result.world_points_conf)
    np.testing.assert_array_equal(np.load(out / "latents.npy"), result.latents)
    # cameras
    cams = json.loads((out / "cameras.json").read_text())
    np.testing.assert_allclose(cams["w2c"], result.w2c)
    np.testing.assert_allclose(cams["c2w"], w2c_to_c2w(result.w2c))
    np.testing.assert_allclose(cams["intrinsics"], result.intrinsics)
    np.testing.assert_allclose(cams["requested"]["w2c"], result.requested_w2c)
    re10k = camera_io.read_re10k_cameras(out / "cameras_re10k.txt", H, W)
    np.testing.assert_allclose(re10k.w2c, result.w2c, atol=1e-6)
    np.testing.assert_allclose(re10k.K, result.intrinsics, rtol=1e-6)
    np.testing.assert_allclose(camera_io.read_tum(out / "cameras_tum.txt").w2c, result.w2c, atol=1e-6)
    req = camera_io.read_re10k_cameras(out / "cameras_requested_re10k.txt", H, W)
    np.testing.assert_allclose(req.w2c, result.requested_w2c, atol=1e-6)
    meta = json.loads((out / "generation.json").read_text())
    assert meta["shapes"]["depth"] == [T, H, W]
    html = (out / "report.html").read_text()
    assert 'src="video.mp4"' in html and 'src="depth.mp4"' in html and "<svg" in html and 'id="track-0"' in html


def test_ply_reread_matches_cloud(result, saved) -> None:
    out, _ = saved
    vertex = PlyData.read(str(out / "points.ply"))["vertex"].data
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1)
    rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1)
    np.testing.assert_array_equal(xyz, result.cloud.xyz)
    np.testing.assert_array_equal(rgb, result.cloud.rgb)
    np.testing.assert_array_equal(vertex["confidence"], result.cloud.conf)
    # colours come from the decoded frames at the pixels the points were unprojected from
    t, v, u = result.cloud.index.T
    np.testing.assert_array_equal(rgb, result.video[t, v, u])


def test_colmap_model_reread_matches_arrays(result, saved) -> None:
    out, _ = saved
    model = camera_io.read_colmap_text(out / "colmap" / "sparse" / "0")
    seq = model.to_sequence()
    assert seq.names == [f"frame_{i:04d}.png" for i in range(T)]
    np.testing.assert_allclose(seq.w2c, result.w2c, atol=1e-6)
    np.testing.assert_allclose(seq.K, result.intrinsics, rtol=1e-8)
    assert all(c.model == "PINHOLE" and (c.width, c.height) == (W, H) for c in model.cameras.values())
    assert all(len(im.xys) == 0 for im in model.images.values())  # the empty POINTS2D lines
    ids = sorted(model.points3d)
    assert ids == list(range(1, len(result.cloud) + 1))
    xyz = np.stack([model.points3d[i]["xyz"] for i in ids])
    rgb = np.stack([model.points3d[i]["rgb"] for i in ids])
    np.testing.assert_allclose(xyz, result.cloud.xyz, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rgb, result.cloud.rgb)
    # images.txt: every image line is followed by its (empty) POINTS2D line
    lines = [ln for ln in (out / "colmap/sparse/0/images.txt").read_text().split("\n") if not ln.startswith("#")]
    assert all(lines[2 * i + 1] == "" for i in range(T)) and len(lines[0].split()) == 10


def test_same_seed_same_outputs_other_seed_differs(pipe, result) -> None:
    state = torch.random.get_rng_state()
    again = pipe("a room with a ball", camera="orbit", seed=3, max_points=1000, **KW)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("video", "latents", "depth", "world_points", "w2c"):
        np.testing.assert_array_equal(getattr(again, name), getattr(result, name), err_msg=name)
    np.testing.assert_array_equal(again.cloud.xyz, result.cloud.xyz)
    other = pipe("a room with a ball", camera="orbit", seed=4, geometry="none", **KW)
    assert not np.array_equal(other.latents, result.latents)
    assert other.depth is None and other.cloud is None


def test_requested_camera_is_what_conditions_the_model(pipe, monkeypatch) -> None:
    seen = []
    original = pipe.model.encode_camera

    def spy(plucker):
        feature = original(plucker)
        seen.append((plucker.clone(), feature.clone()))
        return feature

    monkeypatch.setattr(pipe.model, "encode_camera", spy)
    a = pipe("x", camera="dolly-in", seed=0, geometry="none", **KW)
    b = pipe("x", camera="pan-left", seed=0, geometry="none", **KW)
    (p_a, f_a), (p_b, f_b) = seen
    torch.testing.assert_close(p_a, named_trajectory("dolly-in", T, H, W).plucker())
    torch.testing.assert_close(p_b, named_trajectory("pan-left", T, H, W).plucker())
    assert (p_a - p_b).abs().max() > 0.05 and (f_a - f_b).abs().max() > 1e-3
    assert not np.array_equal(a.latents, b.latents)


def test_bad_camera_inputs_give_clear_errors(pipe, tmp_path) -> None:
    short = tmp_path / "short.txt"
    camera_io.write_seed_cameras(short, named_trajectory("orbit", 5, H, W).w2c)
    with pytest.raises(TrajectoryError, match=r"short\.txt: the trajectory has 5 cameras but num_frames=9"):
        pipe("x", camera=short, **KW)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("hello world\n")
    with pytest.raises(TrajectoryError, match=r"garbage\.txt: cannot read camera file"):
        pipe("x", camera=garbage, **KW)
    with pytest.raises(ValueError, match="4k\\+1"):
        pipe("x", camera="orbit", num_frames=8, height=H, width=W, progress=False)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe("x", camera="orbit", num_frames=T, height=40, width=W, progress=False)


def test_cached_text_embeddings_match_the_encoder(pipe, tmp_path) -> None:
    emb = pipe.encode_prompt("a room")
    path = tmp_path / "clip.safetensors"
    save_file({"text_emb": emb[0].contiguous()}, str(path))
    a = pipe("a room", camera="static", seed=1, geometry="none", guidance_scale=1.0, **KW)
    b = pipe(prompt_embeds=path, camera="static", seed=1, geometry="none", guidance_scale=1.0, **KW)
    np.testing.assert_array_equal(a.latents, b.latents)


def test_image_to_video_preset(tmp_path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "i2v", "tiny-i2v", seed=2)
    pipe = FantasyWorldPipeline.from_pretrained(ckpt)
    image = (np.random.default_rng(0).random((40, 64, 3)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="image-to-video"):
        pipe("x", camera="orbit", **KW)
    res = pipe("a ball", image=image, camera="truck-left", seed=0, **KW)
    assert res.video.shape == (T, H, W, 3) and res.depth.shape == (T, H, W) and res.w2c.shape == (T, 4, 4)
    other = pipe("a ball", image=255 - image, camera="truck-left", seed=0, geometry="none", **KW)
    assert not np.array_equal(other.latents, res.latents)  # the image conditions generation
    paths = res.save(tmp_path / "out")
    assert paths["points.ply"].is_file()


def test_cli_generate(ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    code = cli_main(["generate", "--checkpoint", str(ckpt), "--prompt", "a box", "--camera", "dolly-in:0.3",
                     "--frames", "5", "--size", "32x32", "--steps", "2", "--seed", "1", "--out", str(out),
                     "--max-points", "500", "--quiet"])
    assert code == 0
    assert (out / "report.html").is_file() and (out / "colmap/sparse/0/images.txt").is_file()
    assert len(PlyData.read(str(out / "points.ply"))["vertex"].data) <= 500
    bad = tmp_path / "bad.txt"
    camera_io.write_seed_cameras(bad, named_trajectory("orbit", 7, 32, 32).w2c)
    code = cli_main(["generate", "--checkpoint", str(ckpt), "--camera", str(bad), "--frames", "5",
                     "--size", "32x32", "--steps", "1", "--out", str(tmp_path / "bad"), "--quiet"])
    assert code == 2
    assert "bad.txt: the trajectory has 7 cameras but num_frames=5" in capsys.readouterr().err
    assert cli_main(["generate", "--list-cameras"]) == 0
    assert "orbit" in capsys.readouterr().out


def test_cli_generate_attention_backend(ckpt, tmp_path, capsys) -> None:
    """``--attention``: an unknown name or a kernel that cannot run here is one error line and exit 2,
    before anything is loaded or written; ``sdpa`` is the default."""
    from fantasyworld.layers.attention import attention_backend_unavailable, get_attention_backend

    common = ["generate", "--checkpoint", str(ckpt), "--camera", "orbit", "--frames", "5", "--size", "32x32",
              "--steps", "1", "--quiet"]
    assert cli_main([*common, "--attention", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "--attention: attention backend 'nope': unknown attention backend" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    if attention_backend_unavailable("fa3") is not None:  # this machine has no FA3 kernel
        assert cli_main([*common, "--attention", "fa3", "--out", str(tmp_path / "b")]) == 2
        assert "attention backend 'fa3': " in capsys.readouterr().err
    assert cli_main([*common, "--attention", "sdpa", "--out", str(tmp_path / "c")]) == 0
    assert get_attention_backend() == "sdpa"


def test_cli_generate_samples_at_the_training_clip_shape(ckpt, tmp_path, capsys) -> None:
    """Without --frames / --size, a checkpoint of a training run is sampled at the shape of the
    clips it was trained on (the run's train_config.yaml), not at the 14B default 81x336x592."""
    import shutil

    import yaml

    from fantasyworld.models.weights import RUN_CONFIG_NAME

    run = tmp_path / "run"
    shutil.copytree(ckpt.parent if ckpt.is_file() else ckpt, run)
    (run / RUN_CONFIG_NAME).write_text(yaml.safe_dump({"stage": 2, "data": {"num_frames": 5, "height": 32,
                                                                            "width": 16}}))
    out = tmp_path / "out"
    assert cli_main(["generate", "--checkpoint", str(run), "--camera", "orbit", "--steps", "1", "--out", str(out),
                     "--no-colmap", "--export", "none"]) == 0
    assert "sampling 5x32x16 (frames x height x width, from the checkpoint's training config" in capsys.readouterr().out
    assert read_video(out / "video.mp4").shape == (5, 32, 16, 3)
    out2 = tmp_path / "out2"  # an explicit value wins over the run's
    assert cli_main(["generate", "--checkpoint", str(run), "--camera", "orbit", "--steps", "1", "--frames", "9",
                     "--out", str(out2), "--no-colmap", "--export", "none", "--quiet"]) == 0
    assert read_video(out2 / "video.mp4").shape == (9, 32, 16, 3)
    (run / RUN_CONFIG_NAME).write_text("- not\n- a mapping\n")
    assert cli_main(["generate", "--checkpoint", str(run), "--camera", "orbit", "--out", str(tmp_path / "bad"),
                     "--quiet"]) == 2
    assert f"{run / RUN_CONFIG_NAME}: expected a YAML mapping" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_tiled_decode_runs_and_auto_threshold(pipe, result) -> None:
    vae = pipe.vae
    saved = (vae.tile_sample_min_height, vae.tile_sample_min_width,
             vae.tile_sample_stride_height, vae.tile_sample_stride_width)
    vae.tile_sample_min_height = vae.tile_sample_min_width = 16
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = 8
    try:
        tiled = pipe.decode(torch.from_numpy(result.latents)[None], tiling=True)
    finally:
        (vae.tile_sample_min_height, vae.tile_sample_min_width,
         vae.tile_sample_stride_height, vae.tile_sample_stride_width) = saved
    assert tiled.shape == (1, T, H, W, 3) and tiled.dtype == np.uint8
    assert not vae.use_tiling  # switched off again after the call
    np.testing.assert_array_equal(pipe.decode(torch.from_numpy(result.latents)[None], tiling="auto")[0], result.video)
