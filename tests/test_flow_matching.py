"""Wan rectified flow: schedule values, noising, targets, and the diffusers inference grid.

Tolerances: schedule values are float32 (diffusers' dtype), so 1e-6 absolute is a few ulps
of values in [0, 1]; analytic checks in float64 use 1e-12.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fantasyworld.models.flow_matching import (
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    euler_step,
    flow_target,
    inference_sigmas,
    sample_training_sigmas,
    shifted_sigmas,
    sigma_to_timestep,
)


def test_shifted_sigmas_hand_values():
    u = torch.tensor([0.0, 0.5, 1.0, 0.2], dtype=torch.float64)
    # shift 5: 5*0.5/(1+4*0.5) = 2.5/3 ; 5*0.2/(1+0.8) = 1/1.8
    expected = torch.tensor([0.0, 2.5 / 3.0, 1.0, 1.0 / 1.8], dtype=torch.float64)
    torch.testing.assert_close(shifted_sigmas(u, 5.0), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(shifted_sigmas(u, 1.0), u, atol=1e-12, rtol=0)


def test_training_sigmas_reproducible_in_range_and_shifted():
    a = sample_training_sigmas(4096, torch.Generator().manual_seed(0), shift=5.0)
    b = sample_training_sigmas(4096, torch.Generator().manual_seed(0), shift=5.0)
    assert a.shape == (4096,) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    # With u ~ U[0,1], P(sigma <= s) = P(u <= s / (shift - (shift-1) s)); at s=0.5: u <= 1/6.
    frac = (a <= 0.5).float().mean().item()
    assert abs(frac - 1 / 6) < 0.03  # ~5 binomial std errors for n=4096


def test_add_noise_target_and_timestep():
    x0 = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    sigma = torch.tensor([0.0, 0.25], dtype=torch.float64)
    xt = add_noise(x0, eps, sigma)
    torch.testing.assert_close(xt[0], x0[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * eps[1], atol=1e-12, rtol=0)
    target = flow_target(x0, eps)
    torch.testing.assert_close(target, eps - x0, atol=0, rtol=0)
    # The velocity is the sigma-derivative of the interpolation, so one exact Euler step from
    # sigma to 0 with the true velocity recovers x0.
    back = euler_step(xt, target, sigma, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(back, x0, atol=1e-12, rtol=0)
    assert NUM_TRAIN_TIMESTEPS == 1000
    torch.testing.assert_close(sigma_to_timestep(sigma), torch.tensor([0.0, 250.0], dtype=torch.float64))


@pytest.mark.parametrize("num_steps,shift", [(50, 5.0), (10, 3.0), (1, 5.0), (30, 1.0)])
def test_inference_sigmas_match_diffusers(num_steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(num_steps)
    ours = inference_sigmas(num_steps, shift)
    assert ours.shape == (num_steps + 1,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, sched.sigmas.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sigma_to_timestep(ours[:-1]), sched.timesteps.float(), atol=1e-3, rtol=0)
    assert ours[0] == 1.0 and ours[-1] == 0.0
