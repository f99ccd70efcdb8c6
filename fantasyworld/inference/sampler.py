"""Flow-matching Euler sampler with classifier-free guidance and last-step geometry.

Sampling (official FantasyWorld / Wan defaults: 50 steps, shift 5, CFG 5):

* ``schedule="project"`` (this project's checkpoints): the sigma grid is
  :func:`~fantasyworld.models.flow_matching.inference_sigmas` (diffusers'
  ``FlowMatchEulerDiscreteScheduler(shift)``), ``sigma_0 = 1`` (pure noise) down to a
  terminal 0; the DiT is fed ``timestep = 1000 sigma``;
* ``schedule="official"`` (the released sampler, used for ``official_compat``
  checkpoints): the grid is :func:`~fantasyworld.models.flow_matching.official_inference_sigmas`
  (``linspace(1, 0, steps + 1)`` without its last element, shifted; last sigma 0.0926 at 50
  steps), the DiT timestep ``1000 sigma`` is rounded to bfloat16 (995.93 -> 996) and the
  last Euler step goes to 0; pair it with ``geometry="last-step"`` as the official does;
* each step predicts the velocity ``v = eps - x0`` and takes
  ``x <- x + (sigma_next - sigma) v``; the Euler state is kept in fp32 whatever the
  model dtype;
* CFG: ``v = v_uncond + g (v_cond - v_uncond)``. The conditional and unconditional passes
  run as **one** forward with batch ``2B`` (conditional half first). Both halves see the
  same camera (pose features), the same I2V image latent and CLIP tokens; only the text
  differs (prompt vs negative prompt), as in Wan's and the official pipelines. With
  ``guidance_scale == 1`` only the conditional pass runs.

Geometry (heads run once, never at the intermediate steps):

* ``"final"`` (default): after the last Euler step, one extra conditional forward
  (batch ``B``) on the **final denoised latent** ``x0`` (the latent that is decoded to
  the video) at the timestep of the last sampling step, ``1000 * sigmas[-2]`` (~5 for
  shift 5, 50 steps: the least noisy level the model saw during sampling and a level it
  is trained on). Depth, points and cameras therefore describe the decoded video.
  Cost: one forward of batch ``B`` plus the heads (measured 1.12 s vs 1.01 s per CFG
  step at 1.3B dims, 81x336x592, bf16, H200: ~2% of a 50-step run).
* ``"last-step"``: the heads run inside the last sampling forward and are read from its
  conditional half. They see the state *before* the last Euler update,
  ``x_{sigma_last} = (1 - sigma_last) x0 + sigma_last eps`` with ``sigma_last =
  sigmas[-2]``, i.e. a slightly noisier latent than the one decoded. No extra forward,
  but the heads run on ``2B`` samples.
* ``"none"``: no geometry.

Step caching (optional, off by default; :mod:`fantasyworld.inference.step_cache`): a step
whose first Wan block's output barely moved since the last computed step reuses that step's
video residual instead of running the remaining blocks. Steps that read the heads, the first
and last steps and the ``final`` geometry forward always run in full.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from fantasyworld.heads.registry import ALL_HEADS, head_names, resolve_heads
from fantasyworld.inference.step_cache import StepCache, StepCacheSettings
from fantasyworld.models.flow_matching import SIGMA_SCHEDULES, euler_step, round_timestep_bf16, sigma_to_timestep

GEOMETRY_MODES = ("final", "last-step", "none")


@dataclass
class Conditioning:
    """Everything but the latent that a forward needs, for a batch of ``B`` samples.

    Attributes:
        text_emb: ``(B, L, text_dim)`` prompt embeddings (zero after the prompt's tokens).
        negative_text_emb: ``(B, L', text_dim)`` negative-prompt embeddings, or ``None``
            (no CFG possible). Both are zero-padded to a common length on construction.
        pose_feature: ``(B, L_video, P)`` from ``model.encode_camera(plucker)`` (computed
            once per generation: it does not depend on the timestep), or ``None``.
        cond_latent: I2V ``(B, 20, F, H/8, W/8)`` mask + first-frame latent, or ``None``.
        image_emb: I2V CLIP tokens ``(B, N, image_dim)``, or ``None``.
    """

    text_emb: torch.Tensor
    negative_text_emb: torch.Tensor | None = None
    pose_feature: torch.Tensor | None = None
    cond_latent: torch.Tensor | None = None
    image_emb: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Wan's cross-attention has no mask: zero padding changes the output, so both texts
        # get the same length whether the passes are batched or not.
        if self.negative_text_emb is not None and self.negative_text_emb.shape[1] != self.text_emb.shape[1]:
            self.text_emb, self.negative_text_emb = _pad_same_length(self.text_emb, self.negative_text_emb)

    def model_kwargs(self, cfg_batch: bool, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
        """Keyword inputs of one forward: conditional only, or ``[cond; uncond]`` stacked
        along the batch (text differs, everything else repeats)."""
        def rep(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            x = x.to(dtype)
            return torch.cat([x, x]) if cfg_batch else x

        text = torch.cat([self.text_emb, self.negative_text_emb]) if cfg_batch else self.text_emb
        return {"text_emb": text.to(dtype), "pose_feature": rep(self.pose_feature),
                "cond_latent": rep(self.cond_latent), "image_emb": rep(self.image_emb)}

    def unconditional(self) -> Conditioning:
        """The unconditional half as its own :class:`Conditioning` (for unbatched CFG)."""
        return Conditioning(self.negative_text_emb, None, self.pose_feature, self.cond_latent, self.image_emb)


def _pad_same_length(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad two ``(B, L, D)`` embeddings to the same ``L`` (Wan reads zeros as padding)."""
    n = max(a.shape[1], b.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))  # noqa: E731
    return pad(a), pad(b.to(a.device))


@dataclass
class SampleResult:
    """Sampler output.

    Attributes:
        latents: ``(B, 16, F, H/8, W/8)`` fp32 final denoised latents (normalised space).
        geometry: head outputs of the conditional samples (``depth`` ``(B, T, H, W)``,
            ``world_points`` ``(B, T, H, W, 3)``, ``pose_enc`` ``(B, T, 9)``, ``w2c``,
            ``intrinsics`` ...), empty with ``geometry="none"``.
        sigmas: ``(num_steps + 1,)`` the grid used.
        geometry_timestep: DiT timestep the heads saw (``None`` without geometry).
        timings: seconds per phase (``denoise``, ``geometry``).
        expert_steps: the number of sampling steps each expert key ran.
        step_cache: the step cache's report (skipped steps, distances), ``None`` when off.
    """

    latents: torch.Tensor
    geometry: dict[str, torch.Tensor] = field(default_factory=dict)
    sigmas: torch.Tensor | None = None
    geometry_timestep: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    expert_steps: dict[str, int] = field(default_factory=dict)
    step_cache: dict[str, Any] | None = None


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return model.transformer.patch_embedding.weight.dtype


def _select(out: dict, batch: int) -> dict[str, torch.Tensor]:
    """Keep the first ``batch`` samples (the conditional half) of each head output."""
    keep = {}
    for key, value in out.items():
        if key == "flow" or value is None:
            continue
        if isinstance(value, list):
            keep[key] = [v[:batch].float() for v in value]
        else:
            keep[key] = value[:batch].float()
    return keep


def guided_flow(
    model: torch.nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    cond: Conditioning,
    guidance_scale: float,
    *,
    cfg_batch: bool = True,
    heads: str | tuple[str, ...] | None = None,
    round_timestep: bool = False,
    step_cache: StepCache | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One guided velocity prediction.

    Args:
        model: :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel` (stage 2).
        x: ``(B, 16, F, H/8, W/8)`` current latents (any float dtype; cast to the model's).
        sigma: current noise level in ``[0, 1]``.
        cond: the conditioning of the ``B`` samples.
        guidance_scale: CFG scale ``g``; 1 (or no negative embedding) disables CFG.
        cfg_batch: run conditional and unconditional passes as one ``2B`` forward (else two
            ``B`` forwards, for memory-bound cases and for tests).
        heads: heads to run (read from the conditional samples): names of the heads
            registry, ``ALL_HEADS`` or ``None`` (none).
        round_timestep: feed the DiT the bfloat16-rounded timestep (the official sampler).
        step_cache: the run's :class:`~fantasyworld.inference.step_cache.StepCache` after its
            ``begin_step`` (each forward gets the slot of its CFG half), or ``None`` (off).

    Returns:
        ``(v, geometry)``: the guided velocity ``(B, 16, F, H/8, W/8)`` fp32 and the head
        outputs of the conditional samples.
    """
    b = x.shape[0]
    dtype = _model_dtype(model)
    use_cfg = guidance_scale != 1.0 and cond.negative_text_emb is not None
    t = _timestep(torch.as_tensor(sigma, dtype=torch.float32, device=x.device), round_timestep).reshape(1)
    def cache(half: str) -> dict[str, Any]:  # no keyword at all when off: the plain forward
        return {} if step_cache is None else {"step_cache": step_cache.slot(half, b)}

    if use_cfg and cfg_batch:
        x_in = torch.cat([x, x]).to(dtype)
        out = model(x_in, t.expand(2 * b), **cond.model_kwargs(True, dtype), stage=2, heads=heads, **cache("both"))
        v_cond, v_uncond = out["flow"].float().chunk(2)
    else:
        out = model(x.to(dtype), t.expand(b), **cond.model_kwargs(False, dtype), stage=2, heads=heads,
                    **cache("cond"))
        v_cond = out["flow"].float()
        if not use_cfg:
            return v_cond, _select(out, b)
        out_u = model(x.to(dtype), t.expand(b), **cond.unconditional().model_kwargs(False, dtype),
                      stage=2, heads=None, **cache("uncond"))
        v_uncond = out_u["flow"].float()
    v = v_uncond + guidance_scale * (v_cond - v_uncond)
    return v, _select(out, b)


@dataclass
class Expert:
    """One model of a sampling run and the conditioning it sees.

    Attributes:
        model: a stage-2 :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel`.
        cond: its :class:`Conditioning` (``pose_feature``: this model's own camera features or
            control-adapter tokens; the rest is shared by every expert of a run).
    """

    model: torch.nn.Module
    cond: Conditioning


def check_modes(geometry: str, schedule: str, modes: tuple[str, ...] = GEOMETRY_MODES) -> None:
    """Raise ``ValueError`` naming the choices when ``geometry`` is not one of ``modes`` or
    ``schedule`` not a key of :data:`~fantasyworld.models.flow_matching.SIGMA_SCHEDULES`."""
    if geometry not in modes:
        raise ValueError(f"geometry must be one of {modes}, got {geometry!r}")
    if schedule not in SIGMA_SCHEDULES:
        raise ValueError(f"schedule must be one of {tuple(SIGMA_SCHEDULES)}, got {schedule!r}")


@torch.no_grad()
def run_sampling(
    experts: Mapping[str, Expert],
    plan: Sequence[str],
    noise: torch.Tensor,
    *,
    geometry_expert: str,
    guidance_scale: float = 5.0,
    shift: float = 5.0,
    geometry: str = "final",
    heads: str | tuple[str, ...] = ALL_HEADS,
    cfg_batch: bool = True,
    progress: bool = True,
    schedule: str = "project",
    step_cache: StepCacheSettings | None = None,
) -> SampleResult:
    """The Euler/CFG loop shared by every sampler: step ``i`` runs ``experts[plan[i]]``.

    Args:
        experts: the models of the run by key (one for :func:`sample`; ``high`` and ``low``
            for :func:`~fantasyworld.inference.two_expert.sample_two_experts`).
        plan: the expert key of every step (``len(plan)`` steps on the grid of ``schedule``).
        noise: ``(B, 16, F, H/8, W/8)`` standard-normal start latents.
        geometry_expert: the key whose heads give the geometry (``last-step``: it must run
            the last step; ``final``: it runs the extra forward on the final latent).
        step_cache: first-block step caching (:mod:`fantasyworld.inference.step_cache`), or
            ``None`` (off: every step runs in full, as without the option).
        others: as :func:`sample` (module docstring for the ``geometry`` modes).

    Returns:
        :class:`SampleResult`; ``expert_steps`` counts the steps each key ran, ``step_cache``
        is the cache's report (``None`` when off).
    """
    check_modes(geometry, schedule)
    num_steps = len(plan)
    if geometry != "none" and geometry_expert not in experts:
        raise ValueError(f"geometry expert {geometry_expert!r} is not one of the experts {tuple(experts)}")
    if geometry == "last-step" and plan[-1] != geometry_expert:
        raise ValueError(f"geometry='last-step' reads the {geometry_expert} expert at the last step, "
                         f"but the last step runs the {plan[-1]} expert")
    official = schedule == "official"
    heads = resolve_heads(heads, head_names())  # registry names, registration order
    sigmas = SIGMA_SCHEDULES[schedule](num_steps, shift).to(noise.device)
    x = noise.float()
    geo: dict[str, torch.Tensor] = {}
    geo_t: float | None = None
    cache = None if step_cache is None else StepCache(step_cache, plan)
    start = time.perf_counter()
    bar = tqdm(total=num_steps, desc="denoise", unit="step", disable=not progress, leave=False)
    for i, key in enumerate(plan):
        last = i == num_steps - 1
        want = heads if (last and geometry == "last-step") else None
        expert = experts[key]
        if cache is not None:
            cache.begin_step(i, heads=bool(want))
        v, out = guided_flow(expert.model, x, sigmas[i], expert.cond, guidance_scale, cfg_batch=cfg_batch,
                             heads=want, round_timestep=official, step_cache=cache)
        if want:
            geo, geo_t = out, float(_timestep(sigmas[i], official))
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        bar.update(1)
    bar.close()
    _sync(noise.device)
    timings = {"denoise": time.perf_counter() - start}
    if geometry == "final":
        start = time.perf_counter()
        expert = experts[geometry_expert]
        geo_t = float(_timestep(sigmas[-2], official))
        t = torch.full((x.shape[0],), geo_t, device=x.device)
        dtype = _model_dtype(expert.model)
        out = expert.model(x.to(dtype), t, **expert.cond.model_kwargs(False, dtype), stage=2, heads=heads)
        geo = _select(out, x.shape[0])
        _sync(noise.device)
        timings["geometry"] = time.perf_counter() - start
    return SampleResult(latents=x, geometry=geo, sigmas=sigmas.cpu(), geometry_timestep=geo_t, timings=timings,
                        expert_steps={k: list(plan).count(k) for k in experts},
                        step_cache=None if cache is None else cache.report())


#: the expert key of a one-model run
SINGLE = "model"


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    noise: torch.Tensor,
    cond: Conditioning,
    *,
    num_steps: int = 50,
    guidance_scale: float = 5.0,
    shift: float = 5.0,
    geometry: str = "final",
    heads: str | tuple[str, ...] = ALL_HEADS,
    cfg_batch: bool = True,
    progress: bool = True,
    schedule: str = "project",
    step_cache: StepCacheSettings | None = None,
) -> SampleResult:
    """Denoise ``noise`` ``(B, 16, F, H/8, W/8)`` (standard normal) into latents and geometry.

    See the module docstring for the schedule, CFG batching and the ``geometry`` modes.
    The function draws no random numbers: it is deterministic given ``noise``.
    ``schedule``: a key of :data:`~fantasyworld.models.flow_matching.SIGMA_SCHEDULES`
    (``official`` also rounds the DiT timestep to bfloat16). ``heads``: the heads run for the
    geometry (:mod:`fantasyworld.heads.registry`; default every registered head). ``step_cache``:
    optional first-block step caching (:mod:`fantasyworld.inference.step_cache`; default off).
    One model throughout: :func:`run_sampling` with the plan ``[SINGLE] * num_steps``.
    """
    check_modes(geometry, schedule)
    return run_sampling({SINGLE: Expert(model, cond)}, [SINGLE] * num_steps, noise, geometry_expert=SINGLE,
                        guidance_scale=guidance_scale, shift=shift, geometry=geometry, heads=heads,
                        cfg_batch=cfg_batch, progress=progress, schedule=schedule, step_cache=step_cache)


def _timestep(sigma: torch.Tensor, rounded: bool) -> torch.Tensor:
    t = sigma_to_timestep(sigma)
    return round_timestep_bf16(t) if rounded else t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard-normal latents drawn from a CPU ``torch.Generator`` seeded with ``seed``
    (no global RNG; the same numbers on every device), then moved to ``device``."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device)
