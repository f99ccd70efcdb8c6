"""benchmarks/camera_probe.py: ``--model`` changes the named fields of the tiny preset, and the
model it builds has them; a field that is not the config's, or a value its checks reject, is refused by name."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def probe(script):
    return script("benchmarks/camera_probe.py")


def test_model_changes_apply_to_the_tiny_preset_and_unknown_fields_are_refused(probe) -> None:
    from fantasyworld.models.config import get_preset
    from fantasyworld.models.fantasyworld import FantasyWorldModel
    from fantasyworld.models.geometry_branch import NUM_CAMERA_TOKENS

    base = get_preset("tiny")
    assert probe.model_config("") == base
    changed = probe.model_config("num_register_tokens=0,geo_layerscale_init=0.1")
    assert changed.num_register_tokens == 0 and changed.geo_layerscale_init == pytest.approx(0.1)
    assert changed.geo_dim == base.geo_dim  # nothing else moves
    model = FantasyWorldModel(changed)
    assert model.geometry.patch_start_idx == NUM_CAMERA_TOKENS  # no register tokens before the patches
    with pytest.raises(SystemExit, match="nope"):
        probe.model_config("nope=1")
    with pytest.raises(SystemExit, match="geo_dim"):
        probe.model_config("geo_dim")
    with pytest.raises(SystemExit, match="geo_heads 3"):  # a value the config's own checks reject
        probe.model_config("geo_heads=3")


def test_token_log_depth_is_each_cell_mean_grouped_as_the_vae_groups_frames(probe) -> None:
    """``--depth-input patches`` reads this: a wrong cell, frame or median would feed the
    control another depth than the token oracle's."""
    import torch

    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 9, 32, 32, generator=gen) + 0.5
    valid = torch.ones(2, 9, 32, 32, dtype=torch.bool)
    valid[1, 5, :16, :16] = False  # an invalid quarter of one cell's frame: averaged over the rest
    valid[1, 5, 0, 0] = True
    grouped = probe.token_log_depth(depth, valid, 16)
    assert grouped.shape == (2 * 3, 4, 4)  # (B * latent frames, tokens, 4 pixel frames)
    log_d = torch.log(depth)
    med = torch.stack([log_d[0].median(), log_d[1][valid[1]].median()])
    # latent frame 0 holds pixel frame 0 four times; latent frame 2, token 3 (row 1, col 1) pixel frame 8
    assert torch.allclose(grouped[0, 0], (log_d[0, 0, :16, :16] - med[0]).mean().expand(4), atol=1e-6)
    assert grouped[1 * 3 + 2, 3, 3] == pytest.approx(float((log_d[1, 8, 16:, 16:] - med[1]).mean()), abs=1e-6)
    # latent frame 2 of clip 1 holds pixel frames 5-8: frame 5's top-left cell has one valid pixel
    assert grouped[1 * 3 + 2, 0, 0] == pytest.approx(float(log_d[1, 5, 0, 0] - med[1]), abs=1e-5)


def _fake_clips(probe, b: int = 2, t: int = 9, size: int = 32):
    """A stand-in for ``ClipSet``: random video, latents and depth of ``b`` clips."""
    import types

    import torch

    gen = torch.Generator().manual_seed(0)
    f = (t - 1) // 4 + 1
    gt = {"depth": torch.rand(b, t, size, size, generator=gen) + 0.5,
          "valid": torch.ones(b, t, size, size, dtype=torch.bool)}
    clips = types.SimpleNamespace(video=torch.rand(b, 3, t, size, size, generator=gen) * 2 - 1,
                                  latents=torch.randn(b, 16, f, size // 8, size // 8, generator=gen),
                                  decoded=None, gt=gt, size=b)
    clips.select = lambda idx: {k: v[idx] for k, v in clips.gt.items()}
    return clips


@pytest.mark.parametrize("source", ["pixels", "latents"])
def test_depth_cnn_is_scale_invariant_maps_latent_frames_to_pixel_frames_and_fits(probe, source) -> None:
    """The depth control of ``--learner depth-cnn``: one depth map per pixel frame (latent frame 0
    -> pixel frame 0 alone, latent frame j -> pixel frames 4j-3 .. 4j), a loss that the clip's
    depth scale does not change (the evaluation aligns each clip by its median), and a learner that
    fits two clips whose depth is a function of its input (the loss halves in 60 steps)."""
    import torch

    clips = _fake_clips(probe)
    if source == "pixels":  # depth from the red channel of each pixel
        clips.gt["depth"] = torch.exp(clips.video[:, 0])
    else:  # depth from the first channel of each pixel frame's latent frame, at the latent's resolution
        lat = clips.latents[:, 0]  # (B, F, h, w)
        frames = torch.cat([lat[:, :1], lat[:, 1:].repeat_interleave(4, dim=1)], dim=1)  # (B, T, h, w)
        clips.gt["depth"] = torch.exp(0.3 * frames.repeat_interleave(8, -1).repeat_interleave(8, -2))
    args = probe.parse_args(["--learner", "depth-cnn", "--depth-source", source, "--size", "32",
                             "--depth-width", "8"])
    torch.manual_seed(0)
    learner = probe.DepthCnnLearner(args, torch.device("cpu"), clips)
    idx, sigma = torch.arange(2), torch.zeros(2)
    w2c, depth = learner.predict(clips, idx, torch.Generator().manual_seed(0))
    assert depth.shape == (2, 9, 32, 32) and torch.equal(w2c, torch.eye(4, dtype=torch.float64).expand(2, 9, 4, 4))
    if source == "latents":  # pixel frames 1-4 come from latent frame 1 alone
        before = learner._log_depth(clips, idx, sigma, torch.Generator().manual_seed(0))
        clips.latents[:, :, 1] += 1.0
        after = learner._log_depth(clips, idx, sigma, torch.Generator().manual_seed(0))
        changed = (before - after).abs().flatten(2).amax(-1)[0] > 0  # (T,)
        assert changed.tolist() == [False, True, True, True, True, False, False, False, False]
        clips.latents[:, :, 1] -= 1.0
    first = learner.loss(clips, idx, sigma, torch.Generator().manual_seed(0))
    depth = clips.gt["depth"]
    clips.gt["depth"] = depth * 7.0
    scaled = learner.loss(clips, idx, sigma, torch.Generator().manual_seed(0))
    assert float(scaled) == pytest.approx(float(first), rel=1e-4)  # float32 sums of ~20k residuals
    clips.gt["depth"] = depth
    first = learner.loss(clips, idx, sigma, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(learner.params, lr=3e-3)
    for _ in range(60):
        loss = learner.loss(clips, idx, sigma, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * float(first)


def test_thumbnail_code_holds_each_cell_mean_of_the_latent_frames_pixel_frames(probe) -> None:
    """``--depth-source thumbnail``: the code in the latents' place must group the frames as the
    VAE does (latent frame 0 <- pixel frame 0 four times, latent frame j <- pixel frames 4j-3 .. 4j)."""
    import torch

    video = torch.rand(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    code = probe.thumbnail_code(video, 8)
    assert code.shape == (2, 12, 3, 2, 2)
    for s in range(4):  # sub-frame s of latent frame 0 is pixel frame 0; of latent frame 2, pixel frame 5 + s
        assert torch.allclose(code[:, 3 * s:3 * s + 3, 0, 0, 1], video[:, :, 0, :8, 8:].mean((-1, -2)), atol=1e-6)
        assert torch.allclose(code[:, 3 * s:3 * s + 3, 2, 1, 0], video[:, :, 5 + s, 8:, :8].mean((-1, -2)), atol=1e-6)


def test_assets_without_a_vae_are_refused_before_anything_is_rendered(probe, tmp_path, capsys) -> None:
    """``--assets`` names the VAE (and, for the model, the backbone) to load: a folder without them
    stops the probe at its flags, naming the missing folder, before any world is rendered."""
    (tmp_path / "vae").mkdir()
    assert probe.parse_args(["--assets", str(tmp_path), "--learner", "depth-cnn"]).assets == str(tmp_path)
    for argv, missing in ((["--assets", str(tmp_path / "none"), "--learner", "depth-cnn"], "vae"),
                          (["--assets", str(tmp_path)], "backbone")):
        with pytest.raises(SystemExit) as stop:
            probe.parse_args(argv)
        assert stop.value.code == 2
        assert f"{missing} is missing" in capsys.readouterr().err
