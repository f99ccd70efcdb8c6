"""The official sampler (``schedule="official"``): its sigma grid, bfloat16-rounded timesteps,
Euler updates to 0 and geometry read inside the last step's conditional pass."""

from __future__ import annotations

import pytest
import torch

from fantasyworld.inference.options import GenerationOptions
from fantasyworld.inference.sampler import Conditioning, guided_flow, initial_noise, sample
from fantasyworld.inference.testing import tiny_model
from fantasyworld.inference.trajectories import named_trajectory
from fantasyworld.models.flow_matching import (
    euler_step,
    inference_sigmas,
    official_inference_sigmas,
    round_timestep_bf16,
)

T, H, W = 5, 32, 48


def test_official_grid_by_hand():
    sig = official_inference_sigmas(50, 5.0)
    assert sig.shape == (51,) and sig.dtype == torch.float32
    assert sig[0] == 1.0 and sig[-1] == 0.0
    # s = 1 - i / 50, sigma = 5 s / (1 + 4 s): s = 0.98 -> 4.9 / 4.92, s = 0.02 -> 0.1 / 1.08
    assert float(sig[1]) == pytest.approx(4.9 / 4.92, rel=1e-6)
    assert float(sig[-2]) == pytest.approx(0.1 / 1.08, rel=1e-6)  # 0.0926
    assert float(sig[25]) == pytest.approx(2.5 / 3.0, rel=1e-6)  # s = 0.5
    # the project's grid (diffusers) ends lower: 0.0244 at 50 steps; the largest gap is ~0.068
    ours = inference_sigmas(50, 5.0)
    assert float(ours[-2]) == pytest.approx(0.0244, abs=1e-4)
    assert float((sig - ours).abs().max()) == pytest.approx(0.068, abs=2e-3)
    # 1000 sigma_1 = 995.93 reaches the DiT as 996 (bfloat16 keeps multiples of 4 above 512)
    t = round_timestep_bf16(1000 * sig[1:2])
    assert float(1000 * sig[1]) == pytest.approx(995.93, abs=5e-3) and float(t) == 996.0
    assert float(round_timestep_bf16(torch.tensor([92.59]))) == 92.5


class _Recorder(torch.nn.Module):
    """Forwards to the model and records (batch, heads, timesteps) of each call."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.transformer = model.transformer  # the sampler reads the model dtype from it
        self.calls: list[tuple[int, tuple | None, torch.Tensor]] = []

    def forward(self, x, t, *args, heads=None, **kw):
        self.calls.append((x.shape[0], heads, t.clone()))
        return self.model(x, t, *args, heads=heads, **kw)


def test_official_sampling_follows_the_official_update_rule():
    model = tiny_model("tiny", seed=3)
    g = torch.Generator().manual_seed(7)
    text, neg = torch.randn(1, 12, 32, generator=g), torch.randn(1, 12, 32, generator=g)
    with torch.no_grad():
        pose = model.encode_camera(named_trajectory("orbit", T, H, W).plucker())
    cond = Conditioning(text, neg, pose)
    x0 = initial_noise((1, 16, 2, H // 8, W // 8), seed=2)
    rec = _Recorder(model)
    res = sample(rec, x0, cond, num_steps=4, guidance_scale=5.0, shift=5.0, geometry="last-step",
                 schedule="official", progress=False)
    sig = official_inference_sigmas(4, 5.0)
    torch.testing.assert_close(res.sigmas, sig)
    # every DiT call got the bf16-rounded 1000 sigma_i; heads only in the last (batched CFG) call
    for i, (batch, heads, t) in enumerate(rec.calls):
        assert batch == 2 and torch.equal(t, round_timestep_bf16(1000 * sig[i:i + 1]).expand(2))
        assert heads == (None if i < 3 else ("depth", "points", "camera"))
    assert len(rec.calls) == 4 and res.geometry_timestep == float(round_timestep_bf16(1000 * sig[3:4]))
    # step by step: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v(x_i, bf16(1000 sigma_i)), last step to 0
    x = x0.float()
    with torch.no_grad():
        for i in range(4):
            v, geo = guided_flow(model, x, sig[i], cond, 5.0, round_timestep=True,
                                 heads=("depth", "points", "camera") if i == 3 else None)
            x = euler_step(x, v, sig[i], sig[i + 1])
    assert torch.equal(res.latents, x)
    assert torch.equal(res.geometry["depth"], geo["depth"])


def test_auto_options_pick_the_official_recipe_for_official_checkpoints():
    opts = GenerationOptions()
    assert opts.resolved(official_compat=True) == ("official", "last-step")
    assert opts.resolved(official_compat=False) == ("project", "final")
    assert GenerationOptions(schedule="project", geometry="final").resolved(True) == ("project", "final")
    with pytest.raises(ValueError, match="schedule must be one of"):
        sample(tiny_model("tiny", seed=3), torch.zeros(1, 16, 2, 4, 6), Conditioning(torch.zeros(1, 4, 32)),
               num_steps=1, schedule="diffsynth", progress=False)
