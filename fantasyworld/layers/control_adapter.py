"""The Wan2.2-Fun camera control adapter and its Plucker packing.

The Wan2.2-Fun-A14B-Control-Camera backbone reads the camera as a dense ray map added to
the patch embedding, once, before the first block (diffusers 0.42.1 has no such module):

* :func:`pack_plucker_frames` turns per-pixel Plucker rays ``(B, T, 6, H, W)`` (``T = 4F - 3``
  pixel frames) into ``(B, 24, F, H, W)``: the first frame is repeated 4 times (``4F``
  frames) and each latent frame ``j`` stacks its 4 pixel frames channel-major, so channel
  ``4 c + s`` of latent frame ``j`` is Plucker channel ``c`` of pixel frame ``max(0, 4 j + s - 3)``;
* :class:`ControlAdapter` maps that to patch-embedding tokens: per latent frame,
  ``PixelUnshuffle(8)`` (``24 * 64 = 1536`` channels at ``H/8 x W/8``), a ``Conv2d`` with
  kernel = stride = 2 to the Wan width ``D`` (the DiT's 2x2 patch grid ``H/16 x W/16``),
  then one residual block ``x + conv2(relu(conv1(x)))`` of two 3x3 convolutions. The output
  ``(B, D, F, H/16, W/16)`` is added element-wise to ``patch_embedding(latents)``.

Parameter names follow the released files (``conv``, ``residual_blocks.0.conv1``/``conv2``)
so they load by a prefix rename.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ControlAdapter", "ControlResidualBlock", "pack_plucker_frames"]


def pack_plucker_frames(rays: torch.Tensor, frames_per_latent: int = 4) -> torch.Tensor:
    """Plucker rays ``(B, T, C, H, W)`` with ``T = 4F - 3`` -> control input ``(B, 4C, F, H, W)``.

    The first pixel frame is repeated ``frames_per_latent`` times so that every latent frame
    has 4 pixel frames; channel ``4 c + s`` of latent frame ``j`` is channel ``c`` of pixel
    frame ``max(0, 4 j + s - 3)`` (module docstring).
    """
    b, t, c, h, w = rays.shape
    k = frames_per_latent
    if (t - 1) % k:
        raise ValueError(f"the control adapter needs {k}m+1 pixel frames, got {t}")
    x = torch.cat([rays[:, :1].expand(b, k - 1, c, h, w), rays], dim=1)  # (B, 4F, C, H, W)
    f = x.shape[1] // k
    x = x.reshape(b, f, k, c, h, w).transpose(2, 3)  # (B, F, C, 4, H, W)
    return x.reshape(b, f, c * k, h, w).transpose(1, 2)  # (B, 4C, F, H, W)


class ControlResidualBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))`` with two 3x3 convolutions of width ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) -> (N, D, h, w)."""
        return x + self.conv2(torch.relu(self.conv1(x)))


class ControlAdapter(nn.Module):
    """Packed Plucker rays -> tokens added to the patch embedding.

    Args:
        in_channels: channels of the packed input (24 = 6 Plucker channels x 4 frames).
        out_dim: the Wan width ``D`` (5120 for A14B).
        downscale: pixel-unshuffle factor (8, the VAE's spatial stride).
        patch: kernel and stride of the projection (2, the DiT's spatial patch).
    """

    def __init__(self, in_channels: int, out_dim: int, downscale: int = 8, patch: int = 2) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(downscale)
        self.conv = nn.Conv2d(in_channels * downscale**2, out_dim, kernel_size=patch, stride=patch)
        self.residual_blocks = nn.Sequential(ControlResidualBlock(out_dim))

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        """control ``(B, C, F, H, W)`` -> ``(B, D, F, H/16, W/16)`` (for ``downscale * patch = 16``)."""
        b, c, f, h, w = control.shape
        x = control.transpose(1, 2).reshape(b * f, c, h, w)
        x = self.residual_blocks(self.conv(self.unshuffle(x)))  # (B*F, D, h, w)
        return x.reshape(b, f, *x.shape[1:]).transpose(1, 2)
