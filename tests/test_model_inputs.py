"""Clip batch -> model inputs (:mod:`fantasyworld.models.inputs`): the noise is keyed by stream
position, the raw and the cache paths agree, and the stage decides the targets."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from fantasyworld.models import encoders
from fantasyworld.models.inputs import GEOMETRY_KEYS, clean_inputs, position_noise, training_inputs

T, H, W = 5, 32, 32


def _raw_batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    w2c = torch.eye(4).repeat(b, T, 1, 1)
    w2c[:, :, 0, 3] = 0.1 * torch.arange(T)
    k = torch.tensor([[28.0, 0, 16], [0, 28.0, 16], [0, 0, 1]]).repeat(b, T, 1, 1)
    return {
        "video": torch.rand(b, 3, T, H, W, generator=g) * 2 - 1,
        "prompt": ["a red ball", "a blue box"][:b],
        "depth": 1 + torch.rand(b, T, H, W, generator=g), "points": torch.randn(b, T, H, W, 3, generator=g),
        "valid": torch.ones(b, T, H, W, dtype=torch.bool), "w2c": w2c, "intrinsics": k,
        "sample_position": torch.tensor([7, 8][:b]),
    }


def _encoders() -> SimpleNamespace:
    text, tok = encoders.tiny_text_encoder(d_model=32)
    return SimpleNamespace(vae=encoders.tiny_vae().eval(), text_encoder=text.eval(), tokenizer=tok,
                           image_encoder=None, image_processor=None)


def test_noise_is_keyed_by_position_not_by_batch() -> None:
    shape = (16, 2, 4, 4)
    noise, sigma = position_noise([3, 4, 5], shape, seed=0, shift=5.0)
    assert noise.shape == (3, *shape) and sigma.shape == (3,) and noise.dtype == sigma.dtype == torch.float32
    alone, sigma_alone = position_noise([4], shape, seed=0, shift=5.0)
    assert torch.equal(alone[0], noise[1]) and torch.equal(sigma_alone[0], sigma[1])
    assert not torch.equal(noise[0], noise[1])
    other, _ = position_noise([4], shape, seed=1, shift=5.0)
    assert not torch.equal(other[0], alone[0])
    assert bool(((sigma > 0) & (sigma < 1)).all())


def test_raw_and_cache_batches_give_the_same_inputs() -> None:
    enc = _encoders()
    raw = _raw_batch()
    cpu = torch.device("cpu")
    clean = clean_inputs(raw, cpu, is_i2v=False, encoders=enc)
    assert clean["x0"].shape == (2, 16, (T - 1) // 4 + 1, H // 8, W // 8)
    cache = {k: v for k, v in raw.items() if k not in ("video", "prompt")}
    cache.update(latents=clean["x0"].clone(), text_emb=clean["text_emb"].clone())
    for stage in (1, 2):
        a = training_inputs(raw, device=cpu, stage=stage, seed=0, shift=5.0, is_i2v=False, encoders=enc)
        b = training_inputs(cache, device=cpu, stage=stage, seed=0, shift=5.0, is_i2v=False)
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] is None and b[key] is None) or torch.equal(a[key], b[key]), key


def test_targets_follow_the_stage() -> None:
    enc = _encoders()
    raw = _raw_batch()
    cpu = torch.device("cpu")
    x0 = clean_inputs(raw, cpu, is_i2v=False, encoders=enc)["x0"]
    one = training_inputs(raw, device=cpu, stage=1, seed=0, shift=5.0, is_i2v=False, encoders=enc)
    two = training_inputs(raw, device=cpu, stage=2, seed=0, shift=5.0, is_i2v=False, encoders=enc)
    assert one["flow_target"] is None and "plucker" not in one
    assert two["plucker"].shape == (2, T, 6, H, W)
    assert torch.equal(one["latents"], two["latents"]) and torch.equal(one["timestep"], two["timestep"])
    for key in GEOMETRY_KEYS:
        assert torch.equal(two[key], raw[key])
    # x_sigma = x0 + sigma * (eps - x0), timestep = 1000 sigma
    sigma = (two["timestep"] / 1000).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(two["latents"], x0 + sigma * two["flow_target"], rtol=1e-5, atol=1e-5)
    noise, sig = position_noise([7, 8], tuple(x0.shape[1:]), seed=0, shift=5.0)
    torch.testing.assert_close(two["timestep"], 1000 * sig)
    assert torch.equal(two["flow_target"], noise - x0)
