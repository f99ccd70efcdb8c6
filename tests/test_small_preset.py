"""The ``small`` preset: verify-config passes, it trains both stages on a seeded random
backbone, and the pretraining script's recipe for it."""

from __future__ import annotations

import re

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.models.config import PRESET_NAMES, get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel


def test_verify_config_small_counts_and_freezing(capsys: pytest.CaptureFixture[str]) -> None:
    assert "small" in PRESET_NAMES
    assert main(["verify-config", "--preset", "small"]) == 0
    out = capsys.readouterr().out
    counts = [int(n.replace(",", "")) for n in re.findall(r"OK stage \d: no Wan parameter trainable; ([\d,]+)", out)]
    assert counts == [25_754_264, 30_601_764]
    cfg = get_preset("small")
    assert (cfg.wan_dim, cfg.num_wan_blocks, cfg.num_pcb, cfg.geo_dim, cfg.geo_heads) == (384, 10, 4, 256, 4)
    assert cfg.wan["text_dim"] == 32  # the seeded tiny UMT5 serves it


def test_small_forward_shapes_at_32x32(one_thread) -> None:
    cfg = get_preset("small")
    model = FantasyWorldModel(cfg).set_stage(2).eval()
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        out = model(latents, torch.tensor([300.0]), text, plucker=torch.randn(1, 5, 6, 32, 32, generator=g))
    assert out["flow"].shape == (1, 16, 2, 4, 4) and out["depth"].shape == (1, 5, 32, 32)
    assert out["world_points"].shape == (1, 5, 32, 32, 3) and out["pose_enc"].shape == (1, 5, 9)


def test_pretraining_recipe_per_preset(script) -> None:
    module = script("scripts/pretrain_tiny_backbone.py")
    small = module.parse_args(["--preset", "small"])
    assert (small.size, small.frames, small.vae_base_dim, small.out) == (128, 17, 16, "outputs/small_assets")
    assert small.vae_seconds == 45.0 and small.dit_seconds == 60.0
    tiny = module.parse_args(["--dit-steps", "7"])
    assert (tiny.size, tiny.dit_steps, tiny.vae_seconds, tiny.out) == (32, 7, None, "fantasyworld/assets/tiny")
    assert module.lr_multiplier(0.0) == 0.01 and module.lr_multiplier(0.04) == pytest.approx(1.0)
    assert module.lr_multiplier(1.0) == pytest.approx(0.1)
    with pytest.raises(SystemExit):  # the graphed passes are CUDA-only: refused before anything runs
        module.parse_args(["--cuda-graphs", "--device", "cpu"])
    assert module.parse_args(["--cuda-graphs", "--device", "cuda"]).cuda_graphs


def test_vae_trains_on_whole_clips(script) -> None:
    """The VAE's training clips cover every latent frame the cache encodes (sub-clips of 5
    frames never trained latent frames 2 and later, which then reconstructed 5-10 dB worse):
    whole clips by default, a 4k+1 sub-clip on request, anything else refused; the PSNR is
    reported per latent frame (frame 0, then 4 frames each)."""
    module = script("scripts/pretrain_tiny_backbone.py")
    assert module.parse_args([]).vae_frames == 9 and module.parse_args(["--preset", "small"]).vae_frames == 17
    assert module.parse_args(["--preset", "small", "--vae-frames", "9"]).vae_frames == 9
    for bad in ("4", "13"):  # not 4k+1; longer than the tiny recipe's 9-frame clips
        with pytest.raises(SystemExit):
            module.parse_args(["--vae-frames", bad])
    target = torch.zeros(1, 3, 9, 8, 8)
    rec = target.clone()
    rec[:, :, 5:] = 0.2  # latent frame 2 (pixel frames 5-8) off by 0.1 on [0, 1]: 20 dB
    assert module.latent_frame_psnr_db(rec, target) == pytest.approx([120.0, 120.0, 20.0])


def test_prompt_dependence_swaps_prompts(script) -> None:
    """The pretraining's prompt check scores each clip against a *different* prompt: a backbone
    that ignores its prompt gets ratios of exactly 1, one that reads it (here its prediction is
    the clip's value carried by the prompt) gets more than 1 with another prompt."""
    module = script("scripts/pretrain_tiny_backbone.py")
    n = 6
    values = torch.tensor([0.0, 0.0, 2.0, 2.0, -1.0, 3.0])  # clips 0/1 and 2/3 share a prompt
    latents = -values.view(n, 1, 1, 1, 1).expand(n, 2, 1, 2, 2).clone()  # target = noise + value
    text = values.view(n, 1, 1).expand(n, 3, 4).clone()
    empty = torch.zeros(1, 3, 4)

    def reads(x, t, ctx, return_dict=False):
        return (ctx[:, 0, 0].view(-1, 1, 1, 1, 1).expand_as(x),)

    def ignores(x, t, ctx, return_dict=False):
        return (torch.zeros_like(x),)

    dev = torch.device("cpu")
    out = module.prompt_dependence(reads, latents, text, empty, dev, sigmas=(0.5,))
    assert out["distinct_pairs"] == n  # every clip got a prompt unlike its own, 0 and 1 included
    # own prompt: the noise alone is left (unit variance); another: plus the squared value gap
    assert out["other_over_own"] > 2.0 and out["empty_over_own"] > 1.5
    flat = module.prompt_dependence(ignores, latents, text, empty, dev, sigmas=(0.5,))
    assert flat["other_over_own"] == 1.0 and flat["empty_over_own"] == 1.0


def test_pretraining_on_an_earlier_vae(script, tmp_path, one_thread) -> None:
    """``--vae DIR`` trains only the backbone: the VAE's weights are DIR's, its latent
    statistics re-measured on these clips, and the prompt check is recorded."""
    from fantasyworld.demo import ASSETS
    from fantasyworld.models.encoders import load_vae

    module = script("scripts/pretrain_tiny_backbone.py")
    log = module.main(["--out", str(tmp_path / "pt"), "--device", "cpu", "--workers", "1", "--clips", "6",
                       "--vae", str(ASSETS / "vae"), "--dit-steps", "2", "--dit-batch", "2"])
    assert log["vae"]["from"] == str(ASSETS / "vae") and log["vae"]["steps"] == 0
    assert log["backbone"]["steps"] == 2
    assert log["prompt_dependence"]["clips"] == 6 and log["prompt_dependence"]["other_over_own"] > 0
    assert 5 < log["vae"]["pooled_psnr_db"] < 60 and log["vae"]["reconstruction_psnr_db"] > 5
    shipped, written = load_vae(ASSETS / "vae"), load_vae(tmp_path / "pt" / "vae")
    for a, b in zip(shipped.state_dict().values(), written.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert written.config.latents_std != shipped.config.latents_std  # measured on the 6 clips


def test_pooled_thumbnail_reference(script) -> None:
    """The VAE's no-learning reference: exact for a uniform video, low for pixel noise, and
    between the two for a smooth gradient."""
    module = script("scripts/pretrain_tiny_backbone.py")
    flat = torch.full((2, 3, 5, 32, 32), 0.3)
    assert module.pooled_psnr_db(flat) == pytest.approx(120.0)
    noise = torch.rand((2, 3, 5, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert module.pooled_psnr_db(noise) < 12  # uniform noise on [0, 1] has a variance of 1/12: 10.8 dB
    ramp = torch.linspace(-1, 1, 32).expand(2, 3, 5, 32, 32)
    assert 25 < module.pooled_psnr_db(ramp) < 120


def test_vae_layout_flags_build_wans_layout_at_the_same_compression(script) -> None:
    """``--vae-dim-mult`` / ``--vae-res-blocks``: the VAE built has that layout (Wan2.1's 1,2,4,4 with
    two blocks here) and still codes a clip as 16 channels at 4x temporal, 8x spatial compression;
    a layout without Wan's three downsampling stages is refused before anything runs."""
    from fantasyworld.models import encoders

    module = script("scripts/pretrain_tiny_backbone.py")
    args = module.parse_args(["--vae-dim-mult", "1,2,4,4", "--vae-res-blocks", "2"])
    assert args.vae_dim_mult == (1, 2, 4, 4) and args.vae_res_blocks == 2
    assert module.parse_args([]).vae_dim_mult == encoders.TINY_VAE_DIM_MULT
    vae = encoders.tiny_vae(0, 4, args.vae_dim_mult, args.vae_res_blocks)
    assert vae.config.dim_mult == [1, 2, 4, 4] and vae.config.num_res_blocks == 2
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 9, 32, 32)).latent_dist.mean
    assert z.shape == (1, 16, 3, 4, 4)
    for bad in (["--vae-dim-mult", "1,2,4"], ["--vae-dim-mult", "1,0,2,2"], ["--vae-dim-mult", "a"],
                ["--vae-res-blocks", "0"]):
        with pytest.raises(SystemExit):
            module.parse_args(bad)
