"""Clip tensors -> model inputs and loss targets: the one place a clip batch becomes a forward.

Used by the trainer (:meth:`~fantasyworld.training.trainer.Trainer.prepare`), the evaluation
(:func:`~fantasyworld.eval.evaluate.predict_from_latents`) and the GPU benchmark, so all three
feed the model the same tensors. Letters: B batch, T pixel frames (``4k + 1``), F latent
frames ``(T - 1) / 4 + 1``, H x W pixels, L text tokens, D text width.

A clip batch (:func:`~fantasyworld.data.loader.collate` of dataset items) holds either raw
``video`` (B, 3, T, H, W) in [-1, 1] and ``prompt`` (B strings), or a latent cache's
``latents`` (B, 16, F, H/8, W/8), ``text_emb`` (B, L, D) and, for image-to-video,
``cond_latent`` (B, 20, F, H/8, W/8) and ``clip_image_emb`` (B, 257, 1280); always the
geometry ground truth ``depth`` (B, T, H, W), ``points`` (B, T, H, W, 3), ``valid``
(B, T, H, W) bool, ``w2c`` (B, T, 4, 4), ``intrinsics`` (B, T, 3, 3); for training also
``sample_position`` (B,) int64, the samples' positions in the data stream.

Training noise (:func:`position_noise`): per sample, a CPU generator seeded with
:func:`sample_seed` of ``(run seed, stream position)`` draws first the noise level
``sigma`` (Wan's shifted schedule, :func:`~fantasyworld.models.flow_matching.sample_training_sigmas`)
and then the noise ``eps`` (16, F, H/8, W/8), so a sample's randomness depends neither on
how the global batch is split over devices and accumulation steps nor on resumption.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from fantasyworld.geometry.plucker import plucker_rays
from fantasyworld.models import encoders as enc
from fantasyworld.models.flow_matching import add_noise, flow_target, sample_training_sigmas, sigma_to_timestep

__all__ = [
    "GEOMETRY_KEYS",
    "ClipEncoders",
    "camera_rays",
    "clean_inputs",
    "noisy_latents",
    "pixel_frame_count",
    "pixel_frame_subset",
    "position_noise",
    "sample_seed",
    "to_device",
    "training_inputs",
]

GEOMETRY_KEYS = ("depth", "points", "valid", "w2c", "intrinsics")
"""The geometry ground truth of a clip batch, passed through to the losses."""


class ClipEncoders(Protocol):
    """The frozen encoders a raw clip needs (the trainer and the pipeline both carry them):
    ``vae``, ``text_encoder`` + ``tokenizer``, and for image-to-video ``image_encoder`` +
    ``image_processor`` (``None`` where not loaded)."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    image_encoder: Any
    image_processor: Any


def sample_seed(seed: int, position: int, stream: int = 0) -> int:
    """A 63-bit seed for the randomness of the sample at global stream ``position``.

    ``stream`` separates independent uses (0: diffusion noise and noise level, 1: the data
    order of an epoch, 2: the pixel-frame subset of :func:`pixel_frame_subset`).
    """
    return int(np.random.SeedSequence([seed, stream, position]).generate_state(2, np.uint64)[0] >> 1)


def position_noise(positions: list[int], shape: tuple[int, ...], seed: int, shift: float,
                   sigma_range: tuple[float, float, bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample training noise keyed by stream position (module docstring).

    Args:
        positions: the B samples' stream positions.
        shape: one sample's latent shape, ``(16, F, H/8, W/8)``.
        seed: the run seed.
        shift: Wan's timestep shift.
        sigma_range: one expert's side of a two-expert boundary
            (:func:`~fantasyworld.models.flow_matching.expert_sigma_range`), or ``None``.

    Returns:
        ``(noise, sigma)``: ``(B, *shape)`` standard normal and ``(B,)`` noise levels, fp32 on
        the CPU.
    """
    noises, sigmas = [], []
    for pos in positions:
        gen = torch.Generator().manual_seed(sample_seed(seed, pos))
        sigmas.append(sample_training_sigmas(1, gen, shift, sigma_range=sigma_range))
        noises.append(torch.randn(shape, generator=gen))
    return torch.stack(noises), torch.cat(sigmas)


def pixel_frame_count(per_step: float, num_frames: int) -> int:
    """Frames of the subset: ``per_step`` frames if ``>= 1``, else ``max(1, round(per_step * T))``,
    never more than ``T = num_frames``."""
    k = int(per_step) if per_step >= 1 else max(1, round(per_step * num_frames))
    return min(k, num_frames)


def pixel_frame_subset(positions: list[int], num_frames: int, count: int, seed: int) -> torch.Tensor:
    """Per sample, ``count`` distinct pixel frames of ``T = num_frames``, sorted: ``(B, K)`` int64.

    Drawn uniformly without replacement from a CPU generator seeded by
    ``sample_seed(seed, position, stream=2)``: independent of the noise (stream 0), different at
    every step (positions advance), and the same however the batch is split over devices.
    """
    rows = []
    for pos in positions:
        gen = torch.Generator().manual_seed(sample_seed(seed, pos, stream=2))
        rows.append(torch.randperm(num_frames, generator=gen)[:count].sort().values)
    return torch.stack(rows)


def to_device(tensor: torch.Tensor, device: torch.device, pin: bool = False) -> torch.Tensor:
    """``tensor`` on ``device`` without making the host wait for the device.

    A host tensor goes to a CUDA device by an asynchronous copy from page-locked memory
    (``pin``: pin it first; the training loader pins its batches already): a copy from
    pageable memory, or a blocking one, would wait for every queued kernel on each call. A
    tensor already on ``device`` (a device-resident cache) is returned as it is; on the CPU
    this is ``tensor.to(device)``.
    """
    if tensor.device == device or device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if pin and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=tensor.is_pinned())


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_sigma, timestep)``: ``(1 - sigma) x0 + sigma noise`` (B, 16, F, h, w) and the DiT
    timestep ``1000 sigma`` (B,)."""
    return add_noise(x0, noise, sigma), sigma_to_timestep(sigma)


def camera_rays(w2c: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Plucker rays (B, T, 6, H, W) of the cameras ``w2c`` (B, T, 4, 4) and ``intrinsics``
    (B, T, 3, 3), computed in ``dtype`` on the cameras' device."""
    return plucker_rays(w2c.to(dtype), intrinsics.to(dtype), height, width)


@torch.no_grad()
def clean_inputs(batch: dict[str, Any], device: torch.device, is_i2v: bool, encoders: ClipEncoders | None = None,
                 text_emb: torch.Tensor | None = None, clip: bool | None = None) -> dict[str, torch.Tensor]:
    """The clean conditioning of a clip batch, fp32 on ``device``.

    A cache batch (``latents`` present) is moved and upcast; a raw batch is encoded with
    ``encoders`` (``text_emb`` given: used instead of encoding ``batch["prompt"]``).
    ``clip`` (default: ``is_i2v``): also the CLIP image tokens (Wan2.1 I2V; a Wan2.2-Fun
    preset has the conditioning latent but no CLIP branch).

    Returns:
        ``x0`` (B, 16, F, H/8, W/8), ``text_emb`` (B, L, D) and, for image-to-video,
        ``cond_latent`` (B, 20, F, H/8, W/8) and ``image_emb`` (B, N, D_clip).
    """
    clip = is_i2v if clip is None else clip
    out: dict[str, torch.Tensor] = {}
    if "latents" in batch:
        out["x0"] = to_device(batch["latents"], device).float()
        out["text_emb"] = to_device(batch["text_emb"], device).float()
        if is_i2v:
            out["cond_latent"] = to_device(batch["cond_latent"], device).float()
        if clip:
            out["image_emb"] = to_device(batch["clip_image_emb"], device).float()
        return out
    if encoders is None:
        raise ValueError("a raw clip batch (video + prompt) needs the frozen encoders")
    video = to_device(batch["video"], device)
    out["x0"] = enc.encode_video(encoders.vae, video)
    if text_emb is None:
        text_emb, _ = enc.encode_text(encoders.text_encoder, encoders.tokenizer, list(batch["prompt"]))
    out["text_emb"] = text_emb
    if is_i2v:
        out["cond_latent"] = enc.i2v_condition_latent(encoders.vae, video)
    if clip:
        out["image_emb"] = enc.encode_image_clip(encoders.image_encoder, encoders.image_processor, video[:, :, 0])
    return out


@torch.no_grad()
def training_inputs(batch: dict[str, Any], *, device: torch.device, stage: int, seed: int, shift: float,
                    is_i2v: bool, encoders: ClipEncoders | None = None, clip: bool | None = None,
                    camera: bool | None = None, sigma_range: tuple[float, float, bool] | None = None
                    ) -> dict[str, Any]:
    """Model inputs and loss targets of one training micro-batch (call outside autocast).

    Args:
        batch: a clip batch with ``sample_position`` (module docstring).
        device: where the model runs.
        stage: 1 (no flow target, no camera conditioning) or 2 (both).
        seed: the run seed (noise keyed by ``(seed, position)``).
        shift: Wan's timestep shift of the training noise levels.
        is_i2v: the preset conditions on the first frame.
        encoders: the frozen encoders (raw batches only).
        clip: the preset reads CLIP image tokens (default: ``is_i2v``).
        camera: also return ``plucker`` (default: stage 2 only; a control-adapter preset
            reads the camera in stage 1 too).
        sigma_range: restrict the noise levels to one expert's side of a two-expert
            boundary (:func:`~fantasyworld.models.flow_matching.expert_sigma_range`).

    Returns:
        ``latents`` (noisy, (B, 16, F, H/8, W/8) fp32), ``timestep`` (B,), ``text_emb``
        (B, L, D), for image-to-video ``cond_latent`` / ``image_emb``, ``flow_target``
        (stage 2: ``eps - x0``, else ``None``), stage 2 ``plucker`` (B, T, 6, H, W) fp32 and
        the ground truth of :data:`GEOMETRY_KEYS`, all on ``device``.
    """
    out: dict[str, Any] = {k: to_device(batch[k], device) for k in GEOMETRY_KEYS}
    clean = clean_inputs(batch, device, is_i2v, encoders, clip=clip)
    x0 = clean.pop("x0")
    out.update(clean)
    noise, sigma = position_noise(batch["sample_position"].tolist(), tuple(x0.shape[1:]), seed, shift, sigma_range)
    noise, sigma = to_device(noise, device, pin=True), to_device(sigma, device, pin=True)
    out["latents"], out["timestep"] = noisy_latents(x0, noise, sigma)
    out["flow_target"] = flow_target(x0, noise) if stage == 2 else None
    if (stage == 2) if camera is None else camera:
        _, _, hh, ww = out["depth"].shape
        out["plucker"] = camera_rays(out["w2c"], out["intrinsics"], hh, ww)
    return out
