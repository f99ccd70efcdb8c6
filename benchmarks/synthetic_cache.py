"""A synthetic latent cache at any size: random latents and text, a textured plane seen by a camera moving forward.

Written in the layout of ``fantasyworld data cache`` (``index.json`` + one safetensors file per
clip, keys of :mod:`fantasyworld.data.loader`), so the trainer reads it exactly as a real
cache. The geometry is consistent: a plane ``z = 4 + 0.5 sin(x)`` in world coordinates (OpenCV
axes), a camera at ``(0, 0, -0.05 t)`` looking along ``+z``, depth and world points from those
cameras and pixel intrinsics (focal ``0.8 W``). Depth and points are stored as float16 (the
dataset reads them back as float32).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["write_synthetic_cache"]


def _clip(frames: int, height: int, width: int, text_dim: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latent_frames = (frames - 1) // 4 + 1
    t = torch.arange(frames, dtype=torch.float32)
    w2c = torch.eye(4).repeat(frames, 1, 1)
    w2c[:, 2, 3] = 0.05 * t  # camera centre (0, 0, -0.05 t): w2c translation = -R c
    focal = 0.8 * width
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]]).repeat(frames, 1, 1)
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    x_n, y_n = (u - width / 2) / focal, (v - height / 2) / focal  # (H, W) normalised rays
    # plane z_world = 4 + 0.5 sin(x_world); camera z offset c_t = -0.05 t; one fixed-point step per frame
    depth = torch.empty(frames, height, width)
    points = torch.empty(frames, height, width, 3)
    for i in range(frames):
        c_t = -0.05 * float(t[i])
        z = torch.full((height, width), 4.0 - c_t)
        for _ in range(3):
            z = 4.0 + 0.5 * torch.sin(x_n * z) - c_t
        depth[i] = z
        points[i] = torch.stack([x_n * z, y_n * z, z + c_t], dim=-1)
    return {
        "latents": torch.randn(16, latent_frames, height // 8, width // 8, generator=g),
        "text_emb": torch.randn(512, text_dim, generator=g),
        "text_len": torch.tensor([12]),
        "depth": depth.half(), "points": points.half(),
        "valid": torch.ones(frames, height, width, dtype=torch.bool),
        "w2c": w2c, "intrinsics": K, "frame_indices": torch.arange(frames),
    }


def write_synthetic_cache(out_dir: str | Path, clips: int, frames: int, height: int, width: int, text_dim: int,
                          seed: int = 0) -> Path:
    """Write ``clips`` synthetic clips of ``frames`` x ``height`` x ``width`` (``4k + 1`` frames,
    multiples of 16) with text embeddings of width ``text_dim`` to ``out_dir``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(clips):
        name = f"synthetic_{i:03d}"
        save_file(_clip(frames, height, width, text_dim, seed + i), str(out / f"{name}.safetensors"),
                  metadata={"clip_id": name, "prompt": "a plane seen by a camera moving forward", "version": "1"})
        entries.append({"clip_id": name, "file": f"{name}.safetensors"})
    index = {"version": 1, "num_frames": frames, "stride": 1, "height": height, "width": width,
             "text_dim": text_dim, "clips": entries}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return out
