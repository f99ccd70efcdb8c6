"""Wan2.1 rectified flow: noise schedule, training targets and the Euler sampling grid.

Conventions
-----------
- ``sigma`` in ``[0, 1]`` is the noise level: ``x_sigma = (1 - sigma) * x0 + sigma * eps``, so
  ``sigma = 1`` is pure noise and ``sigma = 0`` the clean latent.
- The network predicts the velocity ``d x_sigma / d sigma = eps - x0`` (Wan's "flow").
- The DiT is fed ``timestep = sigma * num_train_timesteps`` with Wan's
  ``num_train_timesteps = 1000`` (a float in ``[0, 1000]``, not an integer index).
- Shift (Wan default 5.0, SPEC section 4) warps a uniform ``u`` towards high noise:
  ``sigma = shift * u / (1 + (shift - 1) * u)``; ``shift = 1`` is the identity.
- Inference uses diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)`` grid, reproduced
  by :func:`inference_sigmas` (checked against diffusers 0.42.1 in the tests).
"""

from __future__ import annotations

import torch

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SIGMA_SCHEDULES",
    "add_noise",
    "euler_step",
    "expert_sigma_range",
    "flow_target",
    "inference_sigmas",
    "official_inference_sigmas",
    "round_timestep_bf16",
    "sample_training_sigmas",
    "shifted_sigmas",
    "sigma_to_timestep",
]

NUM_TRAIN_TIMESTEPS = 1000
"""Wan's ``num_train_timesteps``: the timestep fed to the DiT is ``sigma * 1000``."""


def shifted_sigmas(u: torch.Tensor, shift: float = 5.0) -> torch.Tensor:
    """Apply the timestep shift: ``shift * u / (1 + (shift - 1) * u)``, elementwise, any shape.

    Maps ``[0, 1]`` onto ``[0, 1]`` monotonically with fixed points 0 and 1.
    """
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_training_sigmas(
    batch_size: int,
    generator: torch.Generator | None = None,
    shift: float = 5.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    sigma_range: tuple[float, float, bool] | None = None,
) -> torch.Tensor:
    """Training noise levels ``(batch_size,)``: ``u ~ U[0, 1)`` per sample, then :func:`shifted_sigmas`.

    ``generator`` makes the draw reproducible (it must live on ``device``). ``sigma_range``
    (:func:`expert_sigma_range`) restricts the levels to one expert's side of a two-expert
    boundary: the same shifted distribution, conditioned on the range (one draw per sample).
    """
    u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    if sigma_range is None:
        return shifted_sigmas(u, shift).to(dtype)
    return _restricted_sigmas(u, shift, sigma_range, dtype)


def _unshift(sigma: float, shift: float) -> float:
    """Inverse of :func:`shifted_sigmas`: the ``u`` with ``shifted_sigmas(u) = sigma``."""
    return sigma / (shift - (shift - 1.0) * sigma)


def _restricted_sigmas(u: torch.Tensor, shift: float, sigma_range: tuple[float, float, bool],
                       dtype: torch.dtype) -> torch.Tensor:
    """The shifted distribution conditioned on ``sigma_range = (lo, hi, lo_open)``: ``u`` is
    mapped affinely onto the preimage of the range, then shifted; with ``lo_open`` the
    value ``lo`` itself is excluded (``1000 sigma > 1000 lo`` holds after the cast to
    ``dtype`` too)."""
    lo, hi, lo_open = sigma_range
    u_lo, u_hi = _unshift(lo, shift), _unshift(hi, shift)
    if lo_open:
        u = u_hi - (u_hi - u_lo) * u  # (u_lo, u_hi]
    else:
        u = u_lo + (u_hi - u_lo) * u  # [u_lo, u_hi)
    sigma = shifted_sigmas(u, shift).to(dtype)
    if lo_open:
        floor = torch.tensor(lo, dtype=dtype)
        while float(sigma_to_timestep(floor)) <= lo * NUM_TRAIN_TIMESTEPS:
            floor = torch.nextafter(floor, torch.tensor(2.0, dtype=dtype))
        sigma = sigma.clamp(min=float(floor))
    else:
        ceil = torch.tensor(hi, dtype=dtype)
        while float(sigma_to_timestep(ceil)) > hi * NUM_TRAIN_TIMESTEPS:
            ceil = torch.nextafter(ceil, torch.tensor(-1.0, dtype=dtype))
        sigma = sigma.clamp(max=float(ceil))
    return sigma


def expert_sigma_range(expert: str, boundary: float) -> tuple[float, float, bool] | None:
    """The training noise levels of one expert of a two-expert model, as
    ``(lo, hi, lo_open)`` for :func:`sample_training_sigmas`: the high expert gets
    ``1000 sigma > boundary`` (``(boundary / 1000, 1]``), the low expert ``1000 sigma <=
    boundary`` (``[0, boundary / 1000]``), the sides of the inference rule; ``None`` for a
    single model (``expert == ""``)."""
    if not expert:
        return None
    b = boundary / NUM_TRAIN_TIMESTEPS
    if not 0.0 < b < 1.0:
        raise ValueError(f"expert boundary {boundary} must lie in (0, {NUM_TRAIN_TIMESTEPS})")
    if expert == "high":
        return (b, 1.0, True)
    if expert == "low":
        return (0.0, b, False)
    raise ValueError(f"expert must be 'high' or 'low', got {expert!r}")


def _broadcast_sigma(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` (or scalar) sigmas -> shape ``(B, 1, ..., 1)`` broadcastable against ``like``."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[0], *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Noisy latent ``x_sigma = (1 - sigma) * x0 + sigma * noise``.

    Args:
        x0: clean latents ``(B, ...)`` (e.g. ``(B, 16, F, h, w)``).
        noise: standard normal, same shape as ``x0``.
        sigma: ``(B,)`` per-sample noise levels, or a scalar.
    """
    s = _broadcast_sigma(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity target ``noise - x0`` (the derivative of :func:`add_noise` in sigma)."""
    return noise - x0


def sigma_to_timestep(sigma: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """DiT timestep ``sigma * num_train_timesteps`` (float, Wan convention)."""
    return sigma * num_train_timesteps


def inference_sigmas(
    num_steps: int, shift: float = 5.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """Euler sampling grid ``(num_steps + 1,)`` float32, from 1.0 down to a terminal 0.

    Identical to ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps).sigmas``
    (diffusers 0.42.1, static shifting): the unshifted grid is ``linspace(1, s_min, num_steps)``
    with ``s_min = shift(1 / num_train_timesteps)`` (the scheduler's smallest training sigma,
    already shifted once), the shift is applied to that grid, and 0 is appended. The
    matching DiT timesteps are ``sigma_to_timestep(sigmas[:-1])``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s_min = float(shifted_sigmas(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift))
    u = torch.linspace(1.0, s_min, num_steps, dtype=torch.float64)
    sigmas = shifted_sigmas(u, shift).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def official_inference_sigmas(num_steps: int, shift: float = 5.0) -> torch.Tensor:
    """The official FantasyWorld sampler's grid ``(num_steps + 1,)`` float32 (DiffSynth-style
    flow matching with ``sigma_min = 0`` and one extra step).

    ``s = linspace(1, 0, num_steps + 1)`` without its last element, shifted once
    (``shift s / (1 + (shift - 1) s)``), then a terminal 0 the last Euler step goes to. With
    50 steps and shift 5 the last sampled sigma is ``0.5 / 5.4 = 0.0926`` (the project's grid,
    :func:`inference_sigmas`, ends at 0.0244).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    sigmas = shifted_sigmas(u, shift).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


#: Sampling grids by name: ``project`` (diffusers' ``FlowMatchEulerDiscreteScheduler``, the
#: default for this project's checkpoints) and ``official`` (the released sampler).
SIGMA_SCHEDULES = {"project": inference_sigmas, "official": official_inference_sigmas}


def round_timestep_bf16(timestep: torch.Tensor) -> torch.Tensor:
    """``timestep`` rounded to bfloat16 and back to float32, as the official sampler feeds the
    DiT (e.g. 995.93 -> 996: above 512 bfloat16 keeps multiples of 4)."""
    return timestep.to(torch.bfloat16).to(torch.float32)


def euler_step(
    sample: torch.Tensor, flow: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
) -> torch.Tensor:
    """One Euler step of the flow ODE: ``x + (sigma_next - sigma) * flow`` (sigma decreasing)."""
    dt = _broadcast_sigma(sigma_next, sample) - _broadcast_sigma(sigma, sample)
    return sample + dt * flow
