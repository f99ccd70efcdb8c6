"""Latent cache with tiny random encoders saved and loaded through the real loading code."""

from __future__ import annotations

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.data.cache import CachedClipDataset, build_cache
from fantasyworld.data.loader import RawClipDataset, build_dataloader
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.models import encoders

T, H, W = 9, 32, 48  # -> latents (16, 3, 4, 6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    data = synthesize_dataset(base / "ds", num_clips=2, num_frames=T, height=H, width=W, seed=2, workers=1)
    paths = encoders.save_tiny_encoders(base / "enc", image_encoder=True)
    out = base / "cache"
    rc = main(["data", "cache", "--data", str(data), "--out", str(out), "--vae", str(paths["vae"]),
               "--text-encoder", str(paths["text_encoder"]), "--image-encoder", str(paths["image_encoder"]),
               "--frames", str(T), "--quiet"])
    assert rc == 0
    return data, paths, out


def test_cached_items_hold_normalised_latents_and_padded_text(setup):
    data, paths, out = setup
    vae = encoders.load_vae(paths["vae"])
    text_encoder, tokenizer = encoders.load_text_encoder(paths["text_encoder"])
    raw = RawClipDataset(data, num_frames=T)[1]
    item = CachedClipDataset(out)[1]
    assert item["clip_id"] == "clip_00001" and item["prompt"] == raw["prompt"]
    assert item["latents"].shape == (16, 3, 4, 6)
    # (z - mean) / std of the VAE posterior mean, with the Wan2.1 statistics from the config
    z = vae.encode(raw["video"][None]).latent_dist.mean[0]
    mean = torch.tensor(vae.config.latents_mean).view(16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(16, 1, 1, 1)
    assert vae.config.latents_std[0] == pytest.approx(2.8184)
    torch.testing.assert_close(item["latents"], (z - mean) / std, atol=1e-5, rtol=1e-5)
    # text: 512 tokens, exactly zero after the prompt's tokens (words + </s>)
    n = int(item["text_len"])
    assert item["text_emb"].shape == (512, 32)
    assert n == len(tokenizer(raw["prompt"]).input_ids) and 10 < n < 512
    assert (item["text_emb"][n:] == 0).all() and (item["text_emb"][:n].abs().sum(-1) > 0).all()
    emb, _ = encoders.encode_text(text_encoder, tokenizer, [raw["prompt"]])
    torch.testing.assert_close(item["text_emb"], emb[0])
    # geometry targets at pixel resolution, same as the raw loader
    for key in ("depth", "points", "valid", "w2c", "intrinsics", "frame_indices"):
        torch.testing.assert_close(item[key], raw[key])
    assert "video" not in item


def test_i2v_condition_latent_and_clip_embedding(setup):
    data, paths, out = setup
    vae = encoders.load_vae(paths["vae"])
    raw = RawClipDataset(data, num_frames=T)[0]
    item = CachedClipDataset(out)[0]
    cond = item["cond_latent"]
    assert cond.shape == (20, 3, 4, 6)
    # mask: the first latent frame holds the (4x packed) first pixel frame
    assert (cond[:4, 0] == 1).all() and (cond[:4, 1:] == 0).all()
    video = raw["video"][None]
    first_only = torch.cat([video[:, :, :1], torch.zeros_like(video[:, :, 1:])], dim=2)
    torch.testing.assert_close(cond[4:], encoders.encode_video(vae, first_only)[0], atol=1e-5, rtol=1e-5)
    assert item["clip_image_emb"].shape == (5, 32)  # tiny CLIP: 1 + (28/14)^2 tokens of width 32


def test_cached_dataloader_batches(setup):
    _, _, out = setup
    batch = next(iter(build_dataloader(CachedClipDataset(out), batch_size=2, shuffle=False)))
    assert batch["latents"].shape == (2, 16, 3, 4, 6) and batch["text_emb"].shape == (2, 512, 32)
    assert batch["cond_latent"].shape == (2, 20, 3, 4, 6) and batch["clip_image_emb"].shape == (2, 5, 32)
    assert batch["depth"].shape == (2, T, H, W) and batch["points"].shape == (2, T, H, W, 3)
    assert batch["clip_id"] == ["clip_00000", "clip_00001"] and batch["text_len"].shape == (2,)


def test_cache_resumes_and_t2v_has_no_i2v_keys(setup, tmp_path):
    data, paths, _ = setup
    out = build_cache(data, tmp_path / "c", paths["vae"], paths["text_encoder"], num_frames=5, height=16,
                      width=16, geometry_dtype="float16")
    files = sorted(out.glob("*.safetensors"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    build_cache(data, out, paths["vae"], paths["text_encoder"], num_frames=5, height=16, width=16)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # existing clips are skipped
    item = CachedClipDataset(out)[0]
    assert "cond_latent" not in item and "clip_image_emb" not in item
    assert item["latents"].shape == (16, 2, 2, 2) and item["depth"].dtype == torch.float32


def test_tiny_tokenizer_matches_umt5_special_ids():
    tok = encoders.tiny_tokenizer()
    ids = tok("A red ball.").input_ids
    assert ids[-1] == 1 and tok.pad_token_id == 0 and 2 not in ids[:-1]
    assert tok("zebra").input_ids == [2, 1]  # unknown word -> <unk>


def test_batched_cache_with_workers_matches_one_clip_at_a_time(setup, tmp_path):
    data, paths, out = setup  # the module's cache: one clip per encoder call, in this process
    batched = tmp_path / "batched"
    rc = main(["data", "cache", "--data", str(data), "--out", str(batched), "--vae", str(paths["vae"]),
               "--text-encoder", str(paths["text_encoder"]), "--image-encoder", str(paths["image_encoder"]),
               "--frames", str(T), "--workers", "1", "--batch", "2", "--quiet"])
    assert rc == 0
    one, two = CachedClipDataset(out), CachedClipDataset(batched)
    assert [e["clip_id"] for e in two.entries] == [e["clip_id"] for e in one.entries]
    for a, b in zip(one, two):
        assert a["clip_id"] == b["clip_id"] and a["prompt"] == b["prompt"] and set(a) == set(b)
        for key in ("latents", "text_emb", "cond_latent", "clip_image_emb"):
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-5)
        for key in ("text_len", "depth", "points", "valid", "w2c", "intrinsics", "frame_indices"):
            assert torch.equal(b[key], a[key]), key


def test_tiny_spec_caches_what_the_saved_tiny_encoders_cache(setup, tmp_path):
    """``--vae tiny --text-encoder tiny --image-encoder tiny`` (the encoders a tiny preset trains
    with on raw clips) write the same cache as the same seeded encoders saved to directories."""
    data, _, out = setup
    tiny = tmp_path / "tiny"
    rc = main(["data", "cache", "--data", str(data), "--out", str(tiny), "--vae", "tiny", "--text-encoder", "tiny",
               "--image-encoder", "tiny", "--frames", str(T), "--quiet"])
    assert rc == 0
    for a, b in zip(CachedClipDataset(out), CachedClipDataset(tiny)):
        for key in ("latents", "text_emb", "cond_latent", "clip_image_emb", "depth", "w2c"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent", "VAE directory does not exist"),
    (lambda d: (d / "file").write_text("x") and d / "file", "the VAE must be a directory"),
    (lambda d: (d / "noconf").mkdir() or d / "noconf", "no config.json in this VAE directory"),
    (lambda d: (d / "noweights").mkdir() or (d / "noweights/config.json").write_text("{}") and d / "noweights",
     "cannot load the AutoencoderKLWan VAE (OSError"),
])
def test_cache_names_an_unloadable_encoder_directory(setup, tmp_path, capsys, make, message):
    data, _, _ = setup
    vae = make(tmp_path)
    rc = main(["data", "cache", "--data", str(data), "--out", str(tmp_path / "c"), "--vae", str(vae),
               "--text-encoder", "tiny", "--frames", str(T), "--quiet"])
    assert rc == 2
    assert f"error: {vae}: {message}" in capsys.readouterr().err


def test_tiny_encoder_specs_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    vae = encoders.load_vae_spec(encoders.TINY)
    model, _ = encoders.load_text_encoder_spec(encoders.TINY, tiny_dim=48)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not any(p.requires_grad for p in vae.parameters()) and model.config.d_model == 48
    torch.testing.assert_close(next(vae.parameters()), next(encoders.tiny_vae(0).parameters()))
