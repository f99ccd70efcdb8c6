"""Two-expert sampling (FantasyWorld-Wan2.2-Fun-A14B-Control-Camera) and its first/last-image input.

The Wan2.2 A14B model is two FantasyWorld models of the same architecture, a high-noise and
a low-noise expert, that share one Euler trajectory:

* **boundary rule** (the official): at step ``i`` the DiT timestep ``t_i = 1000 sigma_i`` is
  rounded to bfloat16 and the **high** expert runs iff ``bf16(t_i) > boundary`` (strict,
  boundary 900), the low expert otherwise. With 50 steps, shift 5 and the official grid the
  high expert runs steps 0-17 (bf16 t = 1000 ... 908) and the low expert steps 18-49: step
  18 has t = 898.88, which is exactly 900 in bfloat16, so ``>=`` would give it to the high
  expert (:func:`expert_steps`). The rule reads the bfloat16 value whatever the schedule;
  with ``schedule="project"`` the DiT itself gets the unrounded timestep;
* both experts see the same text embeddings, the same conditioning latent, and the camera
  through **their own** control adapter (the two adapters differ), computed once per expert;
  the same CFG scale applies to both (official: 5);
* **geometry** comes from the low expert only: ``"last-step"`` (the official) reads the heads
  inside the last sampling step's conditional pass, which must be a low step; ``"final"``
  runs one extra conditional low-expert forward on the final latent (as
  :mod:`fantasyworld.inference.sampler` does for one model); ``"none"``.

The first/last-image conditioning (:func:`first_last_condition_latent`) is the Wan2.2-Fun
one: the VAE latent of ``[first, zeros x (T-2), last]`` (or ``[first, zeros x (T-1)]``) and a
4-channel mask with pixel frame 0 repeated 4 times and folded into 4 channels per latent
frame, so latent frame 0 has all 4 mask channels 1 and, with a last image, latent frame
``F-1`` has only mask channel 3 set (pixel frame ``T-1``).

The loop itself is the single-model sampler's
(:func:`~fantasyworld.inference.sampler.run_sampling`, fed the per-step expert plan): only
the plan, each expert's camera tokens and the boundary checks live here.
"""

from __future__ import annotations

import dataclasses

import torch

from fantasyworld.heads.registry import ALL_HEADS
from fantasyworld.inference.sampler import Conditioning, Expert, SampleResult, check_modes, run_sampling
from fantasyworld.inference.step_cache import StepCacheSettings
from fantasyworld.models import encoders
from fantasyworld.models.config import VAE_TEMPORAL_STRIDE
from fantasyworld.models.flow_matching import SIGMA_SCHEDULES, round_timestep_bf16, sigma_to_timestep

__all__ = [
    "DEFAULT_BOUNDARY", "TWO_EXPERT_GEOMETRY", "expert_for_timestep", "expert_steps", "first_last_condition_latent",
    "first_last_mask", "sample_two_experts", "two_expert_plan",
]

#: The official boundary: the high expert runs while bf16(t) > 900.
DEFAULT_BOUNDARY = 900.0
TWO_EXPERT_GEOMETRY = ("last-step", "final", "none")


def expert_for_timestep(timestep: float | torch.Tensor, boundary: float = DEFAULT_BOUNDARY) -> str:
    """``"high"`` iff ``bf16(timestep) > boundary`` (strict), else ``"low"``."""
    t = float(round_timestep_bf16(torch.as_tensor(timestep, dtype=torch.float32)))
    return "high" if t > boundary else "low"


def expert_steps(num_steps: int = 50, shift: float = 5.0, boundary: float = DEFAULT_BOUNDARY,
                 schedule: str = "official") -> list[str]:
    """The expert of every sampling step, ``["high", ..., "low"]`` (length ``num_steps``)."""
    sigmas = SIGMA_SCHEDULES[schedule](num_steps, shift)[:-1]
    return [expert_for_timestep(sigma_to_timestep(s), boundary) for s in sigmas]


def first_last_mask(num_frames: int, height: int, width: int, has_last: bool, batch: int = 1,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 4-channel conditioning mask ``(B, 4, F, h, w)`` for ``T = num_frames`` pixel frames,
    latent size ``(h, w)``: pixel frame 0 (repeated 4 times) and, with ``has_last``, pixel
    frame ``T - 1`` are 1, folded 4 slots per latent frame (module docstring)."""
    if (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"num_frames must be 4k+1, got {num_frames}")
    f = (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1
    slots = torch.zeros(batch, num_frames + 3, height, width, dtype=dtype, device=device)
    slots[:, :4] = 1.0  # pixel frame 0, counted 4 times
    if has_last:
        slots[:, -1] = 1.0  # pixel frame T - 1
    return slots.view(batch, f, 4, height, width).transpose(1, 2)


@torch.no_grad()
def first_last_condition_latent(vae, first: torch.Tensor, num_frames: int, last: torch.Tensor | None = None
                                ) -> torch.Tensor:
    """Wan2.2-Fun conditioning ``(B, 20, F, H/8, W/8)``: :func:`first_last_mask` then the
    normalised VAE latent of ``[first, zeros, last]`` (or ``[first, zeros]``).

    Args:
        vae: ``AutoencoderKLWan``.
        first: ``(B, 3, H, W)`` in [-1, 1]; last: the same, or ``None``.
        num_frames: ``T = 4k + 1``.
    """
    b, c, h, w = first.shape
    video = torch.zeros(b, c, num_frames, h, w, dtype=first.dtype, device=first.device)
    video[:, :, 0] = first
    if last is not None:
        if last.shape != first.shape:
            raise ValueError(f"last image {tuple(last.shape)} must have the first image's shape {tuple(first.shape)}")
        video[:, :, -1] = last
    latent = encoders.encode_video(vae, video)  # (B, 16, F, h, w) fp32
    mask = first_last_mask(num_frames, latent.shape[3], latent.shape[4], last is not None, b, latent.dtype,
                           latent.device)
    return torch.cat([mask, latent], dim=1)


def _with_camera(model: torch.nn.Module, cond: Conditioning, plucker: torch.Tensor | None) -> Conditioning:
    """``cond`` with this expert's control-adapter tokens (they differ between the experts)."""
    if plucker is None:
        return dataclasses.replace(cond, pose_feature=None)
    dtype = model.transformer.patch_embedding.weight.dtype
    return dataclasses.replace(cond, pose_feature=model.encode_camera(plucker.to(dtype)))


def two_expert_plan(num_steps: int, shift: float, boundary: float, schedule: str, geometry: str) -> list[str]:
    """The expert of every step (:func:`expert_steps`), after checking the request: a known
    ``geometry`` mode and schedule, and ``last-step`` geometry only when the last step is a
    low-noise step (the heads are read from the low expert)."""
    check_modes(geometry, schedule, TWO_EXPERT_GEOMETRY)
    plan = expert_steps(num_steps, shift, boundary, schedule)
    if geometry == "last-step" and plan[-1] != "low":
        raise ValueError(f"geometry='last-step' reads the low expert at the last step, but with boundary {boundary} "
                         "the last step is a high-noise step")
    return plan


@torch.no_grad()
def sample_two_experts(
    high: torch.nn.Module,
    low: torch.nn.Module,
    noise: torch.Tensor,
    cond: Conditioning,
    plucker: torch.Tensor | None = None,
    *,
    num_steps: int = 50,
    guidance_scale: float = 5.0,
    shift: float = 5.0,
    boundary: float = DEFAULT_BOUNDARY,
    geometry: str = "last-step",
    heads: str | tuple[str, ...] = ALL_HEADS,
    cfg_batch: bool = True,
    progress: bool = True,
    schedule: str = "official",
    step_cache: StepCacheSettings | None = None,
) -> SampleResult:
    """Denoise ``noise`` ``(B, 16, F, H/8, W/8)`` with the two experts (module docstring).

    Args:
        high, low: the two :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel` experts.
        cond: text (and negative text) embeddings and the conditioning latent; its
            ``pose_feature`` is ignored (each expert encodes ``plucker`` itself).
        plucker: ``(B, T, 6, H, W)`` Plucker rays, or ``None`` (no camera).
        boundary: the bf16 timestep above which the high expert runs.
        geometry: ``"last-step"`` (official), ``"final"`` or ``"none"``; always the low expert.
        schedule: a key of :data:`~fantasyworld.models.flow_matching.SIGMA_SCHEDULES`
            (``official`` also feeds the DiT the bfloat16-rounded timestep).
        step_cache: optional first-block step caching, one reference per expert
            (:mod:`fantasyworld.inference.step_cache`; default off).

    Returns:
        :class:`~fantasyworld.inference.sampler.SampleResult` of the shared loop
        (:func:`~fantasyworld.inference.sampler.run_sampling`); ``timings`` also has
        ``steps_high`` / ``steps_low`` (the number of steps each expert ran).
    """
    plan = two_expert_plan(num_steps, shift, boundary, schedule, geometry)
    models = {"high": high, "low": low}
    experts = {name: Expert(m, _with_camera(m, cond, plucker)) for name, m in models.items()
               if name in plan or (name == "low" and geometry != "none")}
    res = run_sampling(experts, plan, noise, geometry_expert="low", guidance_scale=guidance_scale, shift=shift,
                       geometry=geometry, heads=heads, cfg_batch=cfg_batch, progress=progress, schedule=schedule,
                       step_cache=step_cache)
    res.timings.update({"steps_high": float(plan.count("high")), "steps_low": float(plan.count("low"))})
    return res
