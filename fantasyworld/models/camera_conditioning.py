"""Camera conditioning: Plucker pose encoder and camera adapters (SPEC 3.4).

* :class:`PoseEncoder` (official AC3D-style ``CameraPoseEncoder``) turns per-pixel Plucker
  rays (B, T, 6, H, W) into one pose feature per video token, (B, F*h*w, P):
  pixel-unshuffle 8 -> 1x1 convs + GroupNorm -> causal temporal pooling T -> (T+1)/2 ->
  1x1 conv -> pooling -> (T+3)/4 = F latent frames -> Conv3d (1,2,2) to the Wan width ->
  MLP with LayerNorms to width P.
* :class:`CameraAdapter` sits inside a Wan block's cross-attention: it takes the
  attention output before the output projection (B, L, D), combines
  ``Linear(pose feature) + MLP(attention output)`` and maps it through an MLP whose last
  layer is zero-initialised to a shift of width D that is added before the projection.
  At initialisation the shift is exactly zero.

Parameter names follow the official checkpoint (``controlnet_encode_first``,
``k_proj.group1`` ...) so released weights map by a prefix rename.
"""

from __future__ import annotations

import torch
from torch import nn


def causal_temporal_pool(x: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, int]:
    """Average consecutive frame pairs, keeping the first frame alone.

    Args:
        x: (B*T, C, H, W) frames of ``num_frames`` per sample.
    Returns:
        (B*T', C, H, W) with T' = 1 + (T-1)//2 for odd T (T/2 for even T), and T'.
    """
    bt, c, h, w = x.shape
    b = bt // num_frames
    seq = x.reshape(b, num_frames, c, h, w)
    if num_frames % 2 == 1:
        rest = seq[:, 1:]
        if rest.shape[1] > 0:
            rest = rest.reshape(b, rest.shape[1] // 2, 2, c, h, w).mean(dim=2)
        seq = torch.cat([seq[:, :1], rest], dim=1)
    else:
        seq = seq.reshape(b, num_frames // 2, 2, c, h, w).mean(dim=2)
    t_new = seq.shape[1]
    return seq.reshape(b * t_new, c, h, w), t_new


class PoseEncoder(nn.Module):
    """Plucker rays -> per-video-token pose features.

    Args:
        in_channels: channels of the ray map (6 for Plucker).
        wan_dim: width of the Wan tokens (the Conv3d patch embedding output).
        feature_dim: width P of the output pose feature (official 2048).
        downscale: pixel-unshuffle factor (8, the VAE's spatial stride).
    """

    def __init__(self, in_channels: int, wan_dim: int, feature_dim: int, downscale: int = 8) -> None:
        super().__init__()
        c0 = in_channels * downscale**2
        self.unshuffle = nn.PixelUnshuffle(downscale)
        self.controlnet_encode_first = nn.Sequential(
            nn.Conv2d(c0, c0, 1), nn.GroupNorm(2, c0), nn.Conv2d(c0, c0, 1), nn.GroupNorm(2, c0), nn.ReLU()
        )
        self.controlnet_encode_second = nn.Sequential(nn.Conv2d(c0, 2 * c0, 1), nn.GroupNorm(2, 2 * c0), nn.ReLU())
        self.patch_embedding = nn.Conv3d(2 * c0, wan_dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.fc = nn.Sequential(
            nn.Linear(wan_dim, wan_dim // 2), nn.LayerNorm(wan_dim // 2), nn.GELU(),
            nn.Linear(wan_dim // 2, feature_dim), nn.LayerNorm(feature_dim),
        )

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        """rays (B, T, C, H, W), T = 4k+1, H and W multiples of 16 -> (B, F*h*w, P)."""
        b, t, c, h, w = rays.shape
        x = self.unshuffle(rays.reshape(b * t, c, h, w))  # (B*T, C*64, H/8, W/8)
        x = self.controlnet_encode_first(x)
        x, t = causal_temporal_pool(x, t)
        x = self.controlnet_encode_second(x)
        x, t = causal_temporal_pool(x, t)
        x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)  # (B, C', F, H/8, W/8)
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, F*h*w, D)
        return self.fc(x)


class _AdapterKey(nn.Module):
    """``group1``: pose feature projection; ``group2``: MLP on the attention output."""

    def __init__(self, wan_dim: int, feature_dim: int) -> None:
        super().__init__()
        hidden = min(wan_dim, feature_dim) // 2
        self.group1 = nn.Linear(feature_dim, feature_dim)
        self.group2 = nn.Sequential(nn.Linear(wan_dim, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))


class _AdapterValue(nn.Module):
    """``group2``: MLP from the combined feature to a shift of Wan width, last layer zero."""

    def __init__(self, wan_dim: int, feature_dim: int) -> None:
        super().__init__()
        hidden = feature_dim // 5
        self.group2 = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, wan_dim))
        nn.init.zeros_(self.group2[-1].weight)
        nn.init.zeros_(self.group2[-1].bias)


class CameraAdapter(nn.Module):
    """Adds a pose-dependent shift to a Wan cross-attention output (before ``to_out``)."""

    def __init__(self, wan_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.k_proj = _AdapterKey(wan_dim, feature_dim)
        self.v_proj = _AdapterValue(wan_dim, feature_dim)

    def forward(self, attn_out: torch.Tensor, pose_feature: torch.Tensor) -> torch.Tensor:
        """attn_out (B, L, D), pose_feature (B, L, P) -> attn_out + shift, (B, L, D)."""
        dtype = self.k_proj.group1.weight.dtype  # compute in the adapter's dtype (fp32 master weights)
        combined = self.k_proj.group1(pose_feature.to(dtype)) + self.k_proj.group2(attn_out.to(dtype))
        return attn_out + self.v_proj.group2(combined).to(attn_out.dtype)
