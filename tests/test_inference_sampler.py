"""Sampler: batched CFG equals separate passes, determinism, heads once, camera conditioning."""

from __future__ import annotations

import pytest
import torch

from fantasyworld.inference.sampler import Conditioning, guided_flow, initial_noise, sample
from fantasyworld.inference.testing import tiny_model
from fantasyworld.inference.trajectories import named_trajectory
from fantasyworld.models.flow_matching import inference_sigmas

T, H, W = 5, 32, 48


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny", seed=3)


def _cond(model, camera: str = "orbit") -> Conditioning:
    g = torch.Generator().manual_seed(7)
    text = torch.randn(1, 12, 32, generator=g)
    neg = torch.randn(1, 9, 32, generator=g)  # different length: padded with zeros
    plucker = named_trajectory(camera, T, H, W).plucker()
    with torch.no_grad():
        pose = model.encode_camera(plucker)
    return Conditioning(text, neg, pose)


def test_batched_cfg_equals_two_separate_passes(model) -> None:
    cond = _cond(model)
    x = initial_noise((1, 16, 2, H // 8, W // 8), seed=1)
    with torch.no_grad():
        v_batched, _ = guided_flow(model, x, 0.7, cond, 5.0, cfg_batch=True)
        v_split, _ = guided_flow(model, x, 0.7, cond, 5.0, cfg_batch=False)
        # and against the CFG formula from two plain forwards
        t = torch.tensor([700.0])
        assert cond.negative_text_emb.shape == (1, 12, 32)  # padded to the prompt's length
        v_c = model(x, t, cond.text_emb, pose_feature=cond.pose_feature, heads=None)["flow"]
        v_u = model(x, t, cond.negative_text_emb, pose_feature=cond.pose_feature, heads=None)["flow"]
    assert v_batched.abs().mean() > 0.01
    torch.testing.assert_close(v_batched, v_split, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_batched, v_u + 5.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)
    a = sample(model, x, cond, num_steps=3, cfg_batch=True, progress=False)
    b = sample(model, x, cond, num_steps=3, cfg_batch=False, progress=False)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=1e-5)
    for key in ("depth", "world_points", "pose_enc"):
        torch.testing.assert_close(a.geometry[key], b.geometry[key], atol=1e-4, rtol=1e-4)


def test_same_seed_same_noise_and_no_global_rng(model) -> None:
    state = torch.random.get_rng_state()
    n1, n2 = initial_noise((1, 16, 2, 4, 6), 5), initial_noise((1, 16, 2, 4, 6), 5)
    assert torch.equal(n1, n2) and not torch.equal(n1, initial_noise((1, 16, 2, 4, 6), 6))
    cond = _cond(model)
    a = sample(model, n1, cond, num_steps=2, progress=False)
    b = sample(model, n2, cond, num_steps=2, progress=False)
    assert torch.equal(a.latents, b.latents)
    assert torch.equal(a.geometry["depth"], b.geometry["depth"])
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


class _CountingModel(torch.nn.Module):
    """Wraps the model and records the batch size and heads of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.transformer = inner.transformer
        self.calls: list[tuple[int, tuple | None, float]] = []

    def forward(self, latents, timestep, text_emb, **kw):
        self.calls.append((latents.shape[0], kw.get("heads"), float(timestep[0])))
        return self.inner(latents, timestep, text_emb, **kw)


def test_heads_run_once_and_see_the_documented_state(model) -> None:
    cond = _cond(model)
    x = initial_noise((1, 16, 2, H // 8, W // 8), seed=2)
    sigmas = inference_sigmas(3, 5.0)
    counted = _CountingModel(model)
    final = sample(counted, x, cond, num_steps=3, geometry="final", progress=False)
    # 3 batched CFG forwards without heads, then one conditional forward with heads
    assert [(b, h) for b, h, _ in counted.calls] == [(2, None)] * 3 + [(1, ("depth", "points", "camera"))]
    assert counted.calls[-1][2] == pytest.approx(1000 * float(sigmas[-2]))
    with torch.no_grad():
        ref = model(final.latents, torch.tensor([1000 * float(sigmas[-2])]), cond.text_emb,
                    pose_feature=cond.pose_feature)
    torch.testing.assert_close(final.geometry["depth"], ref["depth"])
    torch.testing.assert_close(final.geometry["w2c"], ref["w2c"])

    counted.calls.clear()
    last = sample(counted, x, cond, num_steps=3, geometry="last-step", progress=False)
    assert [(b, h) for b, h, _ in counted.calls] == [(2, None)] * 2 + [(2, ("depth", "points", "camera"))]
    assert last.geometry["depth"].shape == (1, T, H, W)
    torch.testing.assert_close(last.latents, final.latents)
    counted.calls.clear()
    none = sample(counted, x, cond, num_steps=2, geometry="none", progress=False)
    assert none.geometry == {} and all(h is None for _, h, _ in counted.calls)


def test_camera_path_changes_plucker_pose_features_and_video(model) -> None:
    orbit, dolly = named_trajectory("orbit", T, H, W), named_trajectory("dolly-in", T, H, W)
    p_orbit, p_dolly = orbit.plucker(), dolly.plucker()
    assert p_orbit.shape == (1, T, 6, H, W)
    torch.testing.assert_close(p_orbit[:, 0], p_dolly[:, 0])  # frame 0 is the identity for both
    assert (p_orbit[:, 1:] - p_dolly[:, 1:]).abs().max() > 0.05
    c_orbit, c_dolly = _cond(model, "orbit"), _cond(model, "dolly-in")
    assert (c_orbit.pose_feature - c_dolly.pose_feature).abs().max() > 1e-3
    x = initial_noise((1, 16, 2, H // 8, W // 8), seed=4)
    a = sample(model, x, c_orbit, num_steps=2, geometry="none", progress=False)
    b = sample(model, x, c_dolly, num_steps=2, geometry="none", progress=False)
    assert (a.latents - b.latents).abs().max() > 1e-4


def test_guidance_scale_one_runs_only_the_conditional_pass(model) -> None:
    cond = _cond(model)
    counted = _CountingModel(model)
    x = initial_noise((1, 16, 2, H // 8, W // 8), seed=2)
    sample(counted, x, cond, num_steps=2, guidance_scale=1.0, geometry="none", progress=False)
    assert [b for b, _, _ in counted.calls] == [1, 1]
