"""Tiny checkpoints for tests, smoke runs and docs examples (CPU, seconds).

A freshly initialised stage-2 model is an identity on the video path (zero gammas, zero
adapter outputs), so the camera would not change the video at all. :func:`write_tiny_checkpoint`
can fill those zero-initialised tensors with small seeded noise, making every path live.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.wan_backbone import build_wan_transformer


def tiny_model(preset: str = "tiny", seed: int = 0, activate: bool = True, backbone_seed: int = 0
               ) -> FantasyWorldModel:
    """A tiny-preset model on the seeded random backbone that
    :meth:`FantasyWorldPipeline.from_pretrained` builds for ``backbone="random"``.

    Args:
        activate: replace all-zero FantasyWorld parameters (zero-initialised gammas and
            adapter output layers) with ``N(0, 0.05^2)`` noise so that the camera
            conditioning and the interaction modules change the video.
    """
    config = get_preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbone_seed)
        transformer = build_wan_transformer(config.wan)
        torch.manual_seed(seed)
        model = FantasyWorldModel(config, transformer)
    if activate:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.fantasyworld_modules().values():
                for param in module.parameters():
                    if param.numel() and not param.any():
                        param.copy_(0.05 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model.eval()


def write_tiny_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0, activate: bool = True,
                          step: int = 1) -> Path:
    """Write ``out_dir/config.json`` and ``out_dir/step-{step}.safetensors`` (stage 2) of
    :func:`tiny_model`; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(preset, seed, activate)
    model.config.save(out / "config.json")
    model.save_fantasyworld(out / f"step-{step}.safetensors", stage=2)
    return out
