"""Two-expert sampling of the Wan2.2 variant: the boundary rule on a 50-step schedule, the
first/last-image latent and mask, and which expert runs each step on tiny CPU models."""

from __future__ import annotations

import torch

from fantasyworld.inference.sampler import Conditioning
from fantasyworld.inference.two_expert import (
    expert_for_timestep,
    expert_steps,
    first_last_condition_latent,
    first_last_mask,
    sample_two_experts,
)
from fantasyworld.models import encoders
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.flow_matching import official_inference_sigmas, round_timestep_bf16


def test_expert_switch_on_the_official_50_step_schedule() -> None:
    plan = expert_steps(50, shift=5.0, boundary=900.0, schedule="official")
    assert [i for i, e in enumerate(plan) if e == "high"] == list(range(18))  # steps 0-17
    assert [i for i, e in enumerate(plan) if e == "low"] == list(range(18, 50))  # steps 18-49
    t = 1000 * official_inference_sigmas(50, 5.0)[:-1]
    # step 17: 906.59 -> bf16 908 (high); step 18: 898.88 -> bf16 exactly 900, and 900 > 900 is false
    assert abs(float(t[17]) - 906.59) < 0.01 and float(round_timestep_bf16(t[17])) == 908.0
    assert abs(float(t[18]) - 898.88) < 0.01 and float(round_timestep_bf16(t[18])) == 900.0
    assert expert_for_timestep(t[18]) == "low" and expert_for_timestep(900.0) == "low"
    # the rule is on the bf16 value: 901 rounds to 900 in bf16 (spacing 4 above 512), still low
    assert expert_for_timestep(901.0) == "low" and expert_for_timestep(902.5) == "high"
    # diffusers' WanImageToVideoPipeline rule (fp32 t >= boundary) would agree here only by luck
    assert [i for i, v in enumerate(t.tolist()) if v >= 900.0] == list(range(18))


def test_first_last_mask_layout() -> None:
    m = first_last_mask(81, 3, 5, has_last=True)
    assert m.shape == (1, 4, 21, 3, 5)
    assert torch.equal(m[:, :, 0], torch.ones(1, 4, 3, 5))  # latent frame 0: all 4 channels
    assert torch.equal(m[:, :3, 20], torch.zeros(1, 3, 3, 5)) and torch.equal(m[:, 3, 20], torch.ones(1, 3, 5))
    assert m[:, :, 1:20].abs().sum() == 0
    m1 = first_last_mask(81, 3, 5, has_last=False)
    assert torch.equal(m1[:, :, 0], m[:, :, 0]) and m1[:, :, 1:].abs().sum() == 0


def test_first_last_condition_latent_is_mask_then_the_latent_of_first_zeros_last() -> None:
    vae = encoders.tiny_vae(0)
    gen = torch.Generator().manual_seed(0)
    first = torch.rand(1, 3, 32, 48, generator=gen) * 2 - 1
    last = torch.rand(1, 3, 32, 48, generator=gen) * 2 - 1
    cond = first_last_condition_latent(vae, first, 9, last)
    assert cond.shape == (1, 20, 3, 4, 6)
    video = torch.zeros(1, 3, 9, 32, 48)
    video[:, :, 0], video[:, :, 8] = first, last
    assert torch.equal(cond[:, 4:], encoders.encode_video(vae, video))
    assert torch.equal(cond[:, :4], first_last_mask(9, 4, 6, True))
    only_first = first_last_condition_latent(vae, first, 9)
    video[:, :, 8] = 0
    assert torch.equal(only_first[:, 4:], encoders.encode_video(vae, video))
    assert torch.equal(only_first[:, :4], first_last_mask(9, 4, 6, False))


def test_each_step_runs_the_expert_the_rule_names_and_geometry_comes_from_low() -> None:
    experts = {}
    for seed, name in enumerate(("high", "low")):
        torch.manual_seed(seed)
        experts[name] = FantasyWorldModel(get_preset(f"tiny-wan2.2-{name}")).eval()
    calls: list[tuple[str, float, bool]] = []
    for name, model in experts.items():
        model.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: calls.append((name, float(args[1][0]), bool(kwargs.get("heads")))),
            with_kwargs=True)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, 3, 4, 6, generator=gen)
    cond = Conditioning(torch.randn(1, 8, 32, generator=gen), torch.randn(1, 8, 32, generator=gen),
                        cond_latent=torch.randn(1, 20, 3, 4, 6, generator=gen))
    plucker = torch.randn(1, 9, 6, 32, 48, generator=gen)
    res = sample_two_experts(experts["high"], experts["low"], noise, cond, plucker, num_steps=6, progress=False)
    plan = expert_steps(6)
    assert plan == ["high", "high", "high", "low", "low", "low"]  # bf16 t: 1000, 960, 908, 832, 716, 500
    # batched CFG: one forward per step, by the planned expert, heads only in the last
    assert [c[0] for c in calls] == plan and [c[2] for c in calls] == [False] * 5 + [True]
    assert res.timings["steps_high"] == 3 and res.timings["steps_low"] == 3
    assert res.geometry["depth"].shape == (1, 9, 32, 48) and res.geometry_timestep == calls[-1][1]
    # each expert used its own control adapter: the high steps differ from running low throughout
    calls.clear()
    res_low = sample_two_experts(experts["low"], experts["low"], noise, cond, plucker, num_steps=6, progress=False)
    assert not torch.allclose(res.latents, res_low.latents)


def test_matches_the_official_two_expert_loop_written_out() -> None:
    """The official Wan2.2 loop, step by step: sigma = shift(linspace(1, 0, N + 1)[:-1]),
    t = bf16(1000 sigma), HIGH iff t > 900, v = neg + 5 (pos - neg) (two passes), Euler to the
    next sigma (0 after the last); geometry from the last step's conditional pass."""
    experts = {}
    for seed, name in enumerate(("high", "low")):
        torch.manual_seed(seed)
        experts[name] = FantasyWorldModel(get_preset(f"tiny-wan2.2-{name}")).eval()
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 16, 3, 4, 6, generator=gen)
    text, neg = torch.randn(1, 8, 32, generator=gen), torch.zeros(1, 8, 32)
    cond_latent = torch.randn(1, 20, 3, 4, 6, generator=gen)
    plucker = torch.randn(1, 9, 6, 32, 48, generator=gen)
    n = 5
    res = sample_two_experts(experts["high"], experts["low"], noise, Conditioning(text, neg, cond_latent=cond_latent),
                             plucker, num_steps=n, cfg_batch=False, progress=False)
    u = torch.linspace(1, 0, n + 1, dtype=torch.float64)[:-1]
    sig = (5 * u / (1 + 4 * u)).float().tolist() + [0.0]
    x = noise.clone()
    with torch.no_grad():
        for i in range(n):
            t = torch.tensor([1000 * sig[i]]).to(torch.bfloat16).float()
            model = experts["high" if float(t) > 900 else "low"]
            heads = ("depth", "points", "camera") if i == n - 1 else None
            pos = model(x, t, text, plucker=plucker, cond_latent=cond_latent, heads=heads)
            v_neg = model(x, t, neg, plucker=plucker, cond_latent=cond_latent, heads=None)["flow"]
            v = v_neg + 5.0 * (pos["flow"] - v_neg)
            x = x + v * (sig[i + 1] - sig[i])
    # same operations in the same order: equal to float32 rounding of the step arithmetic
    torch.testing.assert_close(res.latents, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.geometry["depth"], pos["depth"], rtol=0, atol=1e-6)
