"""The official compatibility switch in the generate path (``official_compat: true``):
translations divided by the official scene scale, the official Plücker recipe (principal
point reset, doubled intrinsics), and ``wan_override.safetensors`` applied to the backbone."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fantasyworld.cli import main as cli_main
from fantasyworld.errors import CheckpointError
from fantasyworld.geometry import camera_io
from fantasyworld.geometry.plucker import plucker_rays
from fantasyworld.inference.official_cameras import official_plucker, official_scene_scale
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.testing import write_tiny_checkpoint
from fantasyworld.inference.trajectories import load_trajectory, named_trajectory
from fantasyworld.models.config import get_preset
from fantasyworld.models.official import OVERRIDE_FILE, WEIGHTS_FILE
from fantasyworld.models.weights import resolve_checkpoint

T, H, W = 5, 32, 48
KW = dict(num_frames=T, height=H, width=W, num_steps=1, guidance_scale=1.0, geometry="none", progress=False)
IMAGE = (np.random.default_rng(0).random((40, 64, 3)) * 255).astype(np.uint8)
#: Two backbone tensors a test override replaces (diffusers names, as the converter writes).
OVERRIDE_NAMES = ("blocks.0.attn1.to_q.weight", "scale_shift_table")


def _official_dir(path, override: dict[str, torch.Tensor] | None = None):
    """A tiny checkpoint laid out as ``convert-official`` writes it: ``config.json`` with
    ``official_compat: true``, ``fantasyworld.safetensors`` (+ ``wan_override.safetensors``)."""
    out = write_tiny_checkpoint(path, "tiny-i2v", seed=1)
    (out / "step-1.safetensors").rename(out / WEIGHTS_FILE)
    get_preset("tiny-i2v").replace(official_compat=True).save(out / "config.json")
    if override is not None:
        save_file(override, str(out / OVERRIDE_FILE))
    return out


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> FantasyWorldPipeline:
    return FantasyWorldPipeline.from_pretrained(_official_dir(tmp_path_factory.mktemp("official")))


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> FantasyWorldPipeline:
    return FantasyWorldPipeline.from_pretrained(write_tiny_checkpoint(tmp_path_factory.mktemp("ours"), "tiny-i2v",
                                                                      seed=1))


def _fed_plucker(pipe: FantasyWorldPipeline, monkeypatch, **kwargs) -> tuple[torch.Tensor, object]:
    """Run a generation and return the Plücker tensor handed to the pose encoder."""
    seen: list[torch.Tensor] = []
    encode = pipe.model.encode_camera

    def spy(plucker):
        seen.append(plucker.detach().cpu().clone())
        return encode(plucker)

    monkeypatch.setattr(pipe.model, "encode_camera", spy)
    result = pipe("a room", image=IMAGE, **KW, **kwargs)
    monkeypatch.undo()
    assert len(seen) == 1
    return seen[0], result


def test_converted_layout_resolves_the_weights_not_the_override(tmp_path) -> None:
    names = {"scale_shift_table": torch.zeros(1, 2, get_preset("tiny-i2v").wan["num_attention_heads"]
                                              * get_preset("tiny-i2v").wan["attention_head_dim"])}
    out = _official_dir(tmp_path / "ckpt", names)
    weights, config, stage = resolve_checkpoint(out)
    assert weights.name == WEIGHTS_FILE and config.official_compat and stage == 2


def test_fed_plucker_is_the_official_recipe_for_a_given_scale(pipe, monkeypatch) -> None:
    fed, result = _fed_plucker(pipe, monkeypatch, camera="dolly-in:1.0", translation_scale=2.5)
    traj = named_trajectory("dolly-in", T, H, W, 1.0)
    expected = official_plucker(traj.w2c, traj.K, H, W, 2.5)
    assert fed.shape == (1, T, 6, H, W) and fed.dtype == torch.float32
    torch.testing.assert_close(fed, expected, rtol=0, atol=0)
    assert result.settings["translation_scale"] == 2.5 and result.settings["translation_scale_source"] == "given"
    assert result.settings["official_compat"] is True


def test_official_json_principal_point_is_reset(pipe, monkeypatch, tmp_path) -> None:
    # the official JSON puts the principal point at ((W-1)/2, (H-1)/2); the official rays use (W/2, H/2)
    path = tmp_path / "camera_data.json"
    camera_io.write_official_json(path, named_trajectory("orbit", T, H, W).w2c, focal_length=40.0)
    seq = camera_io.read_official_json(path, H, W)
    assert seq.K[0, 0, 2] == (W - 1) / 2
    fed, _ = _fed_plucker(pipe, monkeypatch, camera=str(path), translation_scale=1.7)
    torch.testing.assert_close(fed, official_plucker(seq.w2c, seq.K, H, W, 1.7), rtol=0, atol=0)
    # the raw file intrinsics (the previous behaviour) give different rays
    rel = load_trajectory(str(path), T, H, W).scaled(1 / 1.7)
    legacy_raw = plucker_rays(torch.from_numpy(rel.w2c)[None], torch.from_numpy(rel.K)[None], H, W,
                              legacy_official_intrinsics=True).float()
    assert not torch.allclose(fed, legacy_raw, atol=1e-3)


def test_translation_scale_is_divided_not_multiplied(pipe) -> None:
    traj = named_trajectory("truck-right", T, H, W, 1.0)
    cams = pipe.camera_inputs("truck-right:1.0", T, H, W, translation_scale=4.0)
    # the conditioning (requested) cameras: centres divided by the scale
    np.testing.assert_allclose(cams.trajectory.centers(), traj.centers() / 4.0, atol=1e-12)
    divided = official_plucker(traj.scaled(1 / 4.0).w2c, traj.K, H, W, 1.0)
    multiplied = official_plucker(traj.scaled(4.0).w2c, traj.K, H, W, 1.0)
    torch.testing.assert_close(cams.plucker, divided, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cams.plucker, multiplied, atol=1e-2)


def test_scale_from_a_depth_map_array_and_file(pipe, tmp_path) -> None:
    depth = 1.0 + np.random.default_rng(1).random((40, 64)) * 3.0  # the input image's own resolution
    traj = named_trajectory("dolly-in", T, H, W)
    expected = official_scene_scale(depth, traj.K[0])
    assert expected > 1.0
    cams = pipe.camera_inputs("dolly-in", T, H, W, scale_depth=depth)
    assert cams.translation_scale == pytest.approx(expected) and cams.scale_source == "depth"
    torch.testing.assert_close(cams.plucker, official_plucker(traj.w2c, traj.K, H, W, expected), rtol=0, atol=0)
    np.save(tmp_path / "depth.npy", depth[None].astype(np.float32))
    np.savez(tmp_path / "depth.npz", depth=depth)
    for path in (tmp_path / "depth.npy", tmp_path / "depth.npz"):
        got = pipe.camera_inputs("dolly-in", T, H, W, scale_depth=str(path)).translation_scale
        assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="depth map"):
        pipe.camera_inputs("dolly-in", T, H, W, scale_depth=tmp_path / "missing.npy")


def test_scale_from_a_depth_estimator_sees_the_raw_image(pipe) -> None:
    depth = 2.0 + np.random.default_rng(2).random((40, 64))
    seen = []

    def estimator(img: np.ndarray) -> np.ndarray:
        seen.append(img)
        return depth

    cams = pipe.camera_inputs("orbit", T, H, W, image=IMAGE, depth_estimator=estimator)
    assert len(seen) == 1 and seen[0].dtype == np.uint8 and seen[0].shape == IMAGE.shape
    np.testing.assert_array_equal(seen[0], IMAGE)  # at its own resolution, not resized
    expected = official_scene_scale(depth, named_trajectory("orbit", T, H, W).K[0])
    assert cams.translation_scale == pytest.approx(expected) and cams.scale_source == "depth_estimator"
    with pytest.raises(ValueError, match="image"):
        pipe.camera_inputs("orbit", T, H, W, depth_estimator=estimator)


def test_scale_sources_are_exclusive_and_default_warns(pipe) -> None:
    with pytest.raises(ValueError, match="at most one"):
        pipe.camera_inputs("orbit", T, H, W, translation_scale=2.0, scale_depth=np.ones((4, 4)))
    with pytest.raises(ValueError, match="positive"):
        pipe.camera_inputs("orbit", T, H, W, translation_scale=-1.0)
    with pytest.warns(UserWarning, match="using_scale False"):
        cams = pipe.camera_inputs("orbit", T, H, W)
    assert cams.translation_scale == 1.0 and cams.scale_source == "default"
    traj = named_trajectory("orbit", T, H, W)
    torch.testing.assert_close(cams.plucker, official_plucker(traj.w2c, traj.K, H, W, 1.0), rtol=0, atol=0)


def test_without_official_compat_nothing_changes(ours, monkeypatch) -> None:
    assert not ours.config.official_compat
    traj = named_trajectory("dolly-in", T, H, W, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fed, result = _fed_plucker(ours, monkeypatch, camera="dolly-in:1.0", translation_scale=2.0)
    torch.testing.assert_close(fed, traj.scaled(2.0).plucker(False), rtol=0, atol=0)  # multiplied, real K
    np.testing.assert_allclose(result.requested_w2c, traj.scaled(2.0).w2c)
    default = ours.camera_inputs("dolly-in:1.0", T, H, W)
    torch.testing.assert_close(default.plucker, traj.relative().plucker(False), rtol=0, atol=0)
    with pytest.raises(ValueError, match="official_compat"):
        ours.camera_inputs("orbit", T, H, W, scale_depth=np.ones((4, 4)))


def _override_tensors(pipe: FantasyWorldPipeline) -> dict[str, torch.Tensor]:
    params = dict(pipe.model.transformer.named_parameters())
    gen = torch.Generator().manual_seed(7)
    return {n: torch.randn(params[n].shape, generator=gen).to(torch.bfloat16) for n in OVERRIDE_NAMES}


def test_backbone_override_is_applied(pipe, tmp_path) -> None:
    override = _override_tensors(pipe)
    loaded = FantasyWorldPipeline.from_pretrained(_official_dir(tmp_path / "ckpt", override))
    params = dict(loaded.model.transformer.named_parameters())
    base = dict(pipe.model.transformer.named_parameters())  # same seeded random backbone, no override
    assert loaded.backbone_override == sorted(OVERRIDE_NAMES)
    for name, value in override.items():
        torch.testing.assert_close(params[name].detach(), value.float(), rtol=0, atol=0)
        assert not torch.equal(base[name].detach(), params[name].detach())
    untouched = "blocks.0.attn1.to_k.weight"
    torch.testing.assert_close(params[untouched].detach(), base[untouched].detach(), rtol=0, atol=0)
    result = loaded("a room", image=IMAGE, camera="orbit", translation_scale=1.0, **KW)
    assert result.settings["backbone_override"] == len(OVERRIDE_NAMES)
    assert pipe.backbone_override == []


def test_backbone_override_that_does_not_fit_is_refused(pipe, tmp_path) -> None:
    bad = {"blocks.0.attn1.to_q.weight": torch.zeros(3, 3), "not.a.parameter": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=OVERRIDE_FILE):
        FantasyWorldPipeline.from_pretrained(_official_dir(tmp_path / "bad", bad))


def test_override_beside_a_non_official_checkpoint_is_refused(pipe, tmp_path) -> None:
    out = write_tiny_checkpoint(tmp_path / "ours", "tiny-i2v", seed=1)
    save_file(_override_tensors(pipe), str(out / OVERRIDE_FILE))
    with pytest.raises(CheckpointError, match="official_compat false"):
        FantasyWorldPipeline.from_pretrained(out)


def test_cli_official_scale_sources(tmp_path, capsys) -> None:
    ckpt = _official_dir(tmp_path / "ckpt")
    image = tmp_path / "input.png"
    Image.fromarray(IMAGE).save(image)
    depth = 1.5 + np.random.default_rng(3).random((40, 64))
    np.save(tmp_path / "depth.npy", depth)
    common = ["generate", "--checkpoint", str(ckpt), "--image", str(image), "--camera", "dolly-in", "--frames",
              str(T), "--size", f"{H}x{W}", "--steps", "1", "--cfg", "1", "--geometry", "none", "--quiet",
              "--no-colmap"]
    assert cli_main(common + ["--translation-scale", "2.5", "--out", str(tmp_path / "a")]) == 0
    settings = json.loads((tmp_path / "a" / "generation.json").read_text())["settings"]
    assert settings["translation_scale"] == 2.5 and settings["translation_scale_source"] == "given"
    assert cli_main(common + ["--scale-depth", str(tmp_path / "depth.npy"), "--out", str(tmp_path / "b")]) == 0
    settings = json.loads((tmp_path / "b" / "generation.json").read_text())["settings"]
    expected = official_scene_scale(depth, named_trajectory("dolly-in", T, H, W).K[0])
    assert settings["translation_scale"] == pytest.approx(expected) and settings["official_compat"] is True
    code = cli_main(common + ["--translation-scale", "2", "--scale-depth", str(tmp_path / "depth.npy"),
                              "--out", str(tmp_path / "c")])
    assert code == 2 and "at most one" in capsys.readouterr().err
    code = cli_main(common + ["--depth-estimator", "nowhere_module:fn", "--out", str(tmp_path / "d")])
    assert code == 2 and "cannot import" in capsys.readouterr().err
