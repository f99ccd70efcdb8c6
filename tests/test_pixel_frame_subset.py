"""``loss.pixel_frames_per_step``: the pixel-rate heads on a seeded random subset of pixel frames.

The subset is drawn per sample from its stream position (random per step, seeded), the heads
compute only those frames, the losses read the same frames of the ground truth, the scene
scale still comes from every frame, and the default (no subset) is unchanged bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from fantasyworld.errors import ConfigError
from fantasyworld.inference.testing import tiny_model
from fantasyworld.models.inputs import pixel_frame_count, pixel_frame_subset, training_inputs
from fantasyworld.training.config import config_from_dict
from fantasyworld.training.losses import compute_losses, per_sample_losses

T, H, W = 9, 32, 48


def tiny_inputs(stage: int, batch: int = 2, seed: int = 0) -> dict:
    """Trainer inputs (:func:`training_inputs`) of a seeded latent-cache batch of the tiny preset:
    a tilted plane seen by a camera moving forward."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float32)
    w2c = torch.eye(4).repeat(batch, T, 1, 1)
    w2c[:, :, 2, 3] = 0.05 * t
    K = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]]).repeat(batch, T, 1, 1)
    depth = 2.0 + torch.linspace(0, 1, H)[:, None].expand(H, W) - 0.05 * t[:, None, None]
    clip = {
        "latents": torch.randn(batch, 16, 3, H // 8, W // 8, generator=g),
        "text_emb": torch.randn(batch, 7, 32, generator=g),
        "depth": depth.expand(batch, T, H, W).clone(),
        "points": torch.randn(batch, T, H, W, 3, generator=g),
        "valid": torch.rand(batch, T, H, W, generator=g) > 0.1,
        "w2c": w2c, "intrinsics": K, "sample_position": torch.arange(batch, dtype=torch.int64) + 10 * seed,
    }
    return training_inputs(clip, device=torch.device("cpu"), stage=stage, seed=0, shift=5.0, is_i2v=False)


def test_subset_is_seeded_sorted_distinct_and_changes_with_the_position() -> None:
    a = pixel_frame_subset([0, 1, 2], 81, 8, seed=3)
    assert a.shape == (3, 8) and a.dtype == torch.int64
    assert torch.equal(a, pixel_frame_subset([0, 1, 2], 81, 8, seed=3))  # seeded
    for row in a:
        assert torch.equal(row, row.sort().values) and len(set(row.tolist())) == 8 and row.max() < 81
    assert not torch.equal(a[0], a[1])  # per sample
    assert not torch.equal(a, pixel_frame_subset([3, 4, 5], 81, 8, seed=3))  # per step (positions advance)
    assert not torch.equal(a, pixel_frame_subset([0, 1, 2], 81, 8, seed=4))
    # a sample's subset does not depend on which batch it is in (device / accumulation split)
    assert torch.equal(pixel_frame_subset([1], 81, 8, seed=3)[0], a[1])
    assert pixel_frame_count(8, 81) == 8 and pixel_frame_count(0.25, 81) == 20 and pixel_frame_count(0.001, 81) == 1
    assert pixel_frame_count(100, 9) == 9


def _forward(model, inputs, frames=None):
    return model(inputs["latents"], inputs["timestep"], inputs["text_emb"], stage=1, pixel_frames=frames)


def test_heads_compute_only_the_subset_and_match_the_full_frames() -> None:
    """Outputs of the subset equal the full outputs at those frames: the fusion stage works on
    each frame alone, so only the CPU convolution's batch-size-dependent blocking can change the
    rounding (1e-6 relative to the map's largest value)."""
    model = tiny_model().eval()
    inputs = tiny_inputs(1)
    frames = pixel_frame_subset([0, 1], T, 4, seed=0)
    with torch.no_grad():
        full, sub = _forward(model, inputs), _forward(model, inputs, frames)
    rows = torch.arange(2)[:, None]
    for key in ("depth", "depth_conf", "world_points", "world_points_conf"):
        assert sub[key].shape[:2] == (2, 4) and full[key].shape[:2] == (2, T)
        ref = full[key][rows, frames]
        assert (sub[key] - ref).abs().max() <= 1e-6 * ref.abs().max(), key
    assert torch.equal(sub["pose_enc"], full["pose_enc"])  # the camera head keeps every frame


def test_losses_read_the_same_frames_and_keep_the_full_frame_scale() -> None:
    model = tiny_model().eval()
    inputs = tiny_inputs(1, batch=1)
    frames = torch.tensor([[0, 3, 8]])
    with torch.no_grad():
        full = _forward(model, inputs)
    sub_out = {k: (v[:, frames[0]] if k in ("depth", "depth_conf", "world_points", "world_points_conf") else v)
               for k, v in full.items()}
    gt = {k: inputs[k] for k in ("depth", "points", "valid", "w2c", "intrinsics")}
    got = compute_losses(sub_out, gt, stage=1, pixel_frames=frames)
    full_losses = compute_losses(full, gt, stage=1)
    assert torch.isfinite(got["objective"])
    torch.testing.assert_close(got["loss_camera"], full_losses["loss_camera"], rtol=0, atol=0)  # every frame
    # the depth term by hand: the scene scale of every frame, the residuals of the three frames
    from fantasyworld.geometry.cameras import normalize_scene
    from fantasyworld.heads.losses import depth_loss

    norm = normalize_scene(gt["depth"], gt["points"], gt["valid"], gt["w2c"])
    want = depth_loss(full["depth"][:, frames[0]], full["depth_conf"][:, frames[0]], norm.depth[:, frames[0]],
                      gt["valid"][:, frames[0]])
    torch.testing.assert_close(got["loss_depth"], want, rtol=0, atol=0)


def test_default_is_unchanged_and_a_subset_of_every_frame_is_bit_identical() -> None:
    """No subset: the outputs keep T frames and the inputs carry no ``pixel_frames``; a subset of
    all T frames (sorted: 0..T-1) runs the subset path and must give the same loss and gradients
    bit for bit (same kernels on the same frames)."""
    model = tiny_model().train()
    inputs = tiny_inputs(1)
    assert "pixel_frames" not in inputs

    def loss_and_grads(frames):
        model.zero_grad(set_to_none=True)
        out = _forward(model, inputs, frames)
        total, _ = per_sample_losses(out, {**inputs, "pixel_frames": frames} if frames is not None else inputs,
                                     stage=1)
        total.backward()
        return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref = loss_and_grads(None)
    every = pixel_frame_subset([0, 1], T, T, seed=0)
    assert torch.equal(every, torch.arange(T).repeat(2, 1))
    loss, got = loss_and_grads(every)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    sub_loss, _ = loss_and_grads(pixel_frame_subset([0, 1], T, 3, seed=0))
    assert torch.isfinite(sub_loss) and sub_loss != ref_loss


def test_config_validates_the_subset() -> None:
    base = {"data": {"root": "data", "num_frames": 9}, "model": {"preset": "tiny"}}
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="loss.pixel_frames_per_step must be an integer >= 1"):
            config_from_dict({**base, "loss": {"pixel_frames_per_step": bad}})
    with pytest.raises(ConfigError, match="loss.pixel_frames_per_step 10 exceeds data.num_frames 9"):
        config_from_dict({**base, "loss": {"pixel_frames_per_step": 10}})
    assert config_from_dict({**base, "loss": {"pixel_frames_per_step": 0.5}}).loss.pixel_frames_per_step == 0.5
    assert config_from_dict(base).loss.pixel_frames_per_step is None
