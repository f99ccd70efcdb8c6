"""Bidirectional cross-attention between the video and geometry streams (IRG layers).

One affinity matrix serves both directions: queries come from the video tokens and
keys from the geometry tokens; the video stream reads geometry values through
``softmax(Q K^T / sqrt(d))`` and the geometry stream reads video values through
``softmax(K Q^T / sqrt(d))``. Both sides are normalised by a non-affine LayerNorm, and
both residuals are gated by per-channel gammas initialised to zero, so a fresh layer is
the identity on both streams (SPEC 3.2 item 5; official ``CrossModalityBiAttentionBlock``).

Positions: video tokens carry Wan's 3D RoPE for (frame, row, column) at the shared
head width; geometry patch tokens get the same rotation as the video token at the same
(frame, row, column), and the 1 camera + 4 register tokens of each frame get the
identity rotation.

Parameter names follow the official checkpoint (``gamma_m1``, ``cross_attn.m1_proj`` ...):
``m1`` is the video stream, ``m2`` the geometry stream.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn

from fantasyworld.layers.attention import attention
from fantasyworld.layers.fp8_linear import linear_dtype


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, L, H, d) by (cos, sin) of shape (1, L, 1, d).

    Same convention as Wan (pairs (2i, 2i+1) form one complex number).
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2].float(), sin[..., 1::2].float()
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    return out.type_as(x)


@functools.lru_cache(maxsize=16)
def _rope_table(head_dim: int, device: torch.device) -> WanRotaryPosEmbed:
    """Wan's RoPE frequency tables for ``head_dim`` on ``device``, built on the host and copied
    once (a copy from pageable memory at every forward would make the host wait for the device);
    the tables themselves are evaluated per call, so nothing grid-sized is kept."""
    with torch.inference_mode(False):
        return WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=1024).to(device)


def bicross_rotary(
    grid: tuple[int, int, int], head_dim: int, num_special: int, device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """3D RoPE tables for the video tokens and for the geometry tokens.

    Returns ``((cos_v, sin_v), (cos_g, sin_g))`` with shapes (1, F*h*w, 1, d) and
    (1, F*(num_special + h*w), 1, d); special tokens get cos = 1, sin = 0.
    """
    f, h, w = grid
    rope = _rope_table(head_dim, torch.device(device))
    cos_v, sin_v = rope(torch.empty(1, 1, f, h, w, device=device))
    d = cos_v.shape[-1]
    cos_f = cos_v.reshape(f, h * w, d)
    sin_f = sin_v.reshape(f, h * w, d)
    ones = torch.ones(f, num_special, d, dtype=cos_f.dtype, device=device)
    cos_g = torch.cat([ones, cos_f], dim=1).reshape(1, -1, 1, d)
    sin_g = torch.cat([torch.zeros_like(ones), sin_f], dim=1).reshape(1, -1, 1, d)
    return (cos_v, sin_v), (cos_g, sin_g)


class BiAttentionProjections(nn.Module):
    """Projections of the shared-affinity attention (official ``BiMultiHeadAttention``)."""

    def __init__(self, video_dim: int, geo_dim: int, hidden_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.m1_proj = nn.Linear(video_dim, hidden_dim)
        self.m2_proj = nn.Linear(geo_dim, hidden_dim)
        self.values_m1_proj = nn.Linear(video_dim, hidden_dim)
        self.values_m2_proj = nn.Linear(geo_dim, hidden_dim)
        self.out_m1_proj = nn.Linear(hidden_dim, video_dim)
        self.out_m2_proj = nn.Linear(hidden_dim, geo_dim)
        for proj in (self.m1_proj, self.m2_proj, self.values_m1_proj, self.values_m2_proj,
                     self.out_m1_proj, self.out_m2_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        video: torch.Tensor,
        geo: torch.Tensor,
        rope_video: tuple[torch.Tensor, torch.Tensor] | None = None,
        rope_geo: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lv, Dv), (B, Lg, Dg) normalised streams -> their updates, same shapes."""
        heads = (self.num_heads, self.head_dim)
        q = self.m1_proj(video).unflatten(-1, heads)  # (B, Lv, H, d)
        k = self.m2_proj(geo).unflatten(-1, heads)  # (B, Lg, H, d)
        if rope_video is not None:
            q = apply_rotary(q, *rope_video)
        if rope_geo is not None:
            k = apply_rotary(k, *rope_geo)
        v_video = self.values_m1_proj(video).unflatten(-1, heads).transpose(1, 2)
        v_geo = self.values_m2_proj(geo).unflatten(-1, heads).transpose(1, 2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, L, d)
        to_video = attention(q, k, v_geo)  # video reads geometry
        to_geo = attention(k, q, v_video)  # geometry reads video (same affinity)
        to_video = self.out_m1_proj(to_video.transpose(1, 2).flatten(2))
        to_geo = self.out_m2_proj(to_geo.transpose(1, 2).flatten(2))
        return to_video, to_geo


class BiCrossAttention(nn.Module):
    """Gated bidirectional cross-attention block; identity on both streams at init."""

    def __init__(self, video_dim: int, geo_dim: int, hidden_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm_video = nn.LayerNorm(video_dim, eps=1e-6, elementwise_affine=False)
        self.norm_geo = nn.LayerNorm(geo_dim, eps=1e-6, elementwise_affine=False)
        self.cross_attn = BiAttentionProjections(video_dim, geo_dim, hidden_dim, num_heads)
        self.gamma_m1 = nn.Parameter(torch.zeros(video_dim))
        self.gamma_m2 = nn.Parameter(torch.zeros(geo_dim))

    def forward(
        self,
        video: torch.Tensor,
        geo: torch.Tensor,
        rope_video: tuple[torch.Tensor, torch.Tensor] | None = None,
        rope_geo: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, Lv, Dv), geo (B, Lg, Dg) -> updated (video, geo)."""
        dtype = linear_dtype(self.cross_attn.m1_proj)  # streams may differ in dtype (bf16 video, fp32 geometry)
        dv, dg = self.cross_attn(self.norm_video(video).to(dtype), self.norm_geo(geo).to(dtype), rope_video, rope_geo)
        return video + (self.gamma_m1 * dv).to(video.dtype), geo + (self.gamma_m2 * dg).to(geo.dtype)
