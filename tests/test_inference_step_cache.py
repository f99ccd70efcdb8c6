"""First-block step caching: off and threshold 0 change nothing, a large threshold skips the
steps the rules allow (and says so), a skipped step is the probe plus the stored residual,
CFG halves decide alike, every expert has its own reference, geometry is always computed in full."""

from __future__ import annotations

import pytest
import torch

from fantasyworld.inference.sampler import Conditioning, guided_flow, initial_noise, sample
from fantasyworld.inference.step_cache import StepCache, StepCacheSettings, relative_l1
from fantasyworld.inference.testing import tiny_model
from fantasyworld.inference.trajectories import named_trajectory
from fantasyworld.inference.two_expert import sample_two_experts
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel

pytestmark = pytest.mark.usefixtures("one_thread")
T, H, W = 5, 32, 48
HUGE = 1e9  # every relative L1 is below it: every step the rules allow is skipped


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny", seed=3)


@pytest.fixture(scope="module")
def cond(model) -> Conditioning:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        pose = model.encode_camera(named_trajectory("orbit", T, H, W).plucker())
    return Conditioning(torch.randn(1, 12, 32, generator=g), torch.randn(1, 12, 32, generator=g), pose)


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return initial_noise((1, 16, 2, H // 8, W // 8), seed=1)


class _Recorder(torch.nn.Module):
    """The model, recording each forward's ``step_cache`` keyword (absent: ``"absent"``)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.transformer, self.seen = inner, inner.transformer, []

    def forward(self, *args, **kw):
        self.seen.append(kw.get("step_cache", "absent"))
        return self.inner(*args, **kw)


def _irg_runs(model: torch.nn.Module):
    """A list that grows by one each time the first IRG layer (the geometry stream) runs."""
    runs: list[int] = []
    handle = model.irg_layers[0].register_forward_hook(lambda *_: runs.append(1))
    return runs, handle


def test_off_passes_nothing_to_the_model_and_threshold_zero_is_bit_identical(model, cond, noise) -> None:
    rec = _Recorder(model)
    off = sample(rec, noise, cond, num_steps=5, progress=False)
    # off: the forward is called exactly as without the option (no keyword at all), no report
    assert rec.seen == ["absent"] * 6 and off.step_cache is None
    zero = sample(model, noise, cond, num_steps=5, step_cache=StepCacheSettings(0.0, 1, 1), progress=False)
    # d < 0 never holds: nothing skipped, and the probes / stored residuals change no number
    assert zero.step_cache["skipped"] == 0 and zero.step_cache["computed"] == 5
    assert zero.step_cache["distance"][0] is None and all(d > 0 for d in zero.step_cache["distance"][1:])
    assert torch.equal(zero.latents, off.latents)
    for key in ("depth", "world_points", "pose_enc"):
        assert torch.equal(zero.geometry[key], off.geometry[key]), key


def test_large_threshold_skips_the_allowed_steps_and_reports_them(model, cond, noise) -> None:
    off = sample(model, noise, cond, num_steps=7, progress=False)
    runs, handle = _irg_runs(model)
    try:
        res = sample(model, noise, cond, num_steps=7, step_cache=StepCacheSettings(HUGE, 2, 2), progress=False)
    finally:
        handle.remove()
    rep = res.step_cache
    # steps 0, 1 and 5, 6 always run in full; 2, 3, 4 reuse the residual of step 1
    assert rep["skipped_steps"] == [2, 3, 4] and (rep["skipped"], rep["computed"]) == (3, 4)
    assert len(runs) == 4 + 1  # the geometry stream ran at the 4 computed steps and the final geometry pass
    assert torch.isfinite(res.latents).all() and not torch.equal(res.latents, off.latents)
    # the final geometry pass is a full forward on the final latent
    t = torch.tensor([res.geometry_timestep])
    with torch.no_grad():
        ref = model(res.latents, t, cond.text_emb, pose_feature=cond.pose_feature)
    for key in ("depth", "world_points", "pose_enc"):
        assert torch.equal(res.geometry[key], ref[key]), key


def test_a_skipped_step_is_the_probe_plus_the_stored_residual(model, cond, noise) -> None:
    """Two steps on the same latent and noise level: the second is skipped (its probe moved by
    exactly 0) and must give the full step's flow, since probe + (last - probe) = last."""
    cache = StepCache(StepCacheSettings(1e-3, first_steps=1, last_steps=0), ["model", "model"])
    flows = []
    with torch.no_grad():
        for i in range(2):
            cache.begin_step(i)
            v, _ = guided_flow(model, noise, 0.6, cond, 5.0, step_cache=cache)
            flows.append(v)
    assert cache.skipped == [1] and cache.distance[1] == 0.0
    # float32 rounding of one add and one subtract on tokens of magnitude ~1
    torch.testing.assert_close(flows[1], flows[0], rtol=0, atol=1e-5)


def test_cfg_halves_take_one_decision_batched_or_apart(model, cond, noise) -> None:
    settings = StepCacheSettings(0.2, 1, 1)
    batched = sample(model, noise, cond, num_steps=8, cfg_batch=True, step_cache=settings, progress=False)
    apart = sample(model, noise, cond, num_steps=8, cfg_batch=False, step_cache=settings, progress=False)
    assert 0 < batched.step_cache["skipped"] < 6  # the threshold sits inside the distances: a real decision
    assert batched.step_cache["skipped_steps"] == apart.step_cache["skipped_steps"]
    # batched vs separate CFG only reorders float32 sums (as without the cache, 1e-5)
    torch.testing.assert_close(batched.latents, apart.latents, rtol=1e-5, atol=1e-5)


def test_heads_steps_are_never_skipped(model, cond, noise) -> None:
    res = sample(model, noise, cond, num_steps=4, geometry="last-step", step_cache=StepCacheSettings(HUGE, 1, 0),
                 progress=False)
    assert res.step_cache["skipped_steps"] == [1, 2]  # step 3 reads the heads: in full although last_steps=0
    assert res.geometry["depth"].shape == (1, T, H, W)


def test_each_expert_keeps_its_own_reference() -> None:
    experts = {}
    for seed, name in enumerate(("high", "low")):
        torch.manual_seed(seed)
        experts[name] = FantasyWorldModel(get_preset(f"tiny-wan2.2-{name}")).eval()
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, 3, 4, 6, generator=gen)
    cond = Conditioning(torch.randn(1, 8, 32, generator=gen), torch.randn(1, 8, 32, generator=gen),
                        cond_latent=torch.randn(1, 20, 3, 4, 6, generator=gen))
    plucker = torch.randn(1, 9, 6, 32, 48, generator=gen)
    res = sample_two_experts(experts["high"], experts["low"], noise, cond, plucker, num_steps=6, geometry="final",
                             step_cache=StepCacheSettings(HUGE, 1, 0), progress=False)
    # plan high x3, low x3: step 3 is the low expert's first (no reference): computed
    assert res.step_cache["skipped_steps"] == [1, 2, 4, 5]
    assert res.step_cache["distance"][3] is None


def test_settings_are_checked_and_the_pipeline_reports_the_skips(tmp_path) -> None:
    from fantasyworld.inference.pipeline import FantasyWorldPipeline
    from fantasyworld.inference.testing import write_tiny_checkpoint

    for bad in (dict(threshold=-0.1), dict(threshold=0.1, first_steps=-1), dict(threshold=0.1, probe_blocks=0)):
        with pytest.raises(ValueError, match="step cache"):
            StepCacheSettings(**bad)
    assert relative_l1(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])) == pytest.approx(1.0)
    pipe = FantasyWorldPipeline.from_pretrained(write_tiny_checkpoint(tmp_path / "ckpt", "tiny", seed=2))
    kw = dict(camera="orbit", seed=0, num_frames=5, height=32, width=32, num_steps=6, progress=False,
              max_points=100)
    assert "step_cache" not in pipe("a room", **kw).settings  # off: the record is as without the option
    res = pipe("a room", step_cache=HUGE, step_cache_first_steps=1, step_cache_last_steps=2, **kw)
    assert res.settings["step_cache"]["skipped_steps"] == [1, 2, 3]
    with pytest.raises(ValueError, match="probe_blocks"):  # the tiny preset has 2 preconditioning blocks
        pipe("a room", step_cache=0.1, step_cache_probe_blocks=3, **kw)
