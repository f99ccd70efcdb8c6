"""Inputs of one FantasyWorld forward on the meta device, for the benchmarks that count tensors
without allocating them (``tensor_sizes.py``, ``activation_peak.py``)."""

from __future__ import annotations

from typing import Any

import torch

from fantasyworld.models.config import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, FantasyWorldConfig


def meta_forward_inputs(cfg: FantasyWorldConfig, frames: int, height: int, width: int, *,
                        dtype: torch.dtype = torch.float32, cameras: bool = True, text_tokens: int = 512
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(latents, timestep, text, kwargs)`` for ``model(latents, timestep, text, **kwargs)`` on
    one sample of ``frames x height x width`` pixels: latents ``(1, 16, 1 + (frames - 1) / 4,
    H / 8, W / 8)``, timestep 500, ``text_tokens`` text embeddings; in ``kwargs`` the Plücker
    rays ``(1, frames, plucker_channels, H, W)`` when ``cameras``, and for I2V presets the
    conditioning latent (and CLIP image tokens where the preset uses them)."""
    meta = {"device": "meta", "dtype": dtype}
    latent_shape = (1 + (frames - 1) // VAE_TEMPORAL_STRIDE, height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
    latents = torch.empty(1, 16, *latent_shape, **meta)
    kwargs: dict[str, Any] = {}
    if cameras:
        kwargs["plucker"] = torch.empty(1, frames, cfg.plucker_channels, height, width, **meta)
    if cfg.is_i2v:
        kwargs["cond_latent"] = torch.empty(1, cfg.wan["in_channels"] - 16, *latent_shape, **meta)
        if cfg.uses_clip:
            kwargs["image_emb"] = torch.empty(1, 257, cfg.wan["image_dim"], **meta)
    text = torch.empty(1, text_tokens, cfg.wan["text_dim"], **meta)
    return latents, torch.full((1,), 500.0, **meta), text, kwargs
