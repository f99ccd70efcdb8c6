"""Causal temporal upsampler of the DPT heads: ``F`` latent frames -> ``T = 4 (F - 1) + 1`` frames.

Re-implements the official FantasyWorld ``WanVAE_(z_dim=C, location="DPT")`` (file
``wan/modules/vae_modified.py``), whose state-dict layout we keep::

    conv2                 CausalConv3d(C, C, 1), pointwise, applied first
    decoder.upsamples.0   CausalTimeUpsample2x(C): time_conv = CausalConv3d(C, 2C, (3, 1, 1))
    decoder.upsamples.1   CausalResidualHalf(C): residual = [RMS-norm gamma, SiLU, CausalConv3d(C, C, 3)]
    decoder.upsamples.2   CausalTimeUpsample2x(C)
    decoder.upsamples.3   CausalResidualHalf(C)

Semantics (derived from the official frame-by-frame cached ``decode``, reproduced here for the
whole sequence at once or in chunks of latent frames with carried caches; both give the same
result):

* every temporal convolution is causal with 2 zero frames of left padding;
* a ``CausalTimeUpsample2x`` passes frame 0 through unchanged and runs ``time_conv`` on
  frames ``1..`` only (frame 0 is *not* in its receptive field; zeros precede frame 1); each
  of those frames yields 2 frames (channels ``[:C]`` then ``[C:]``), so ``n -> 2n - 1``;
* ``CausalResidualHalf`` is ``x + conv(SiLU(RMSNorm(x)))`` over all frames, frame 0 included.

Causality: output frame 0 depends on latent frame 0 only; for ``k >= 1`` latent frame ``k``
first influences output frame ``4 (k - 1) + 1`` and produces output frames
``4k - 3 .. 4k``. Output frames ``< 4 (k - 1) + 1`` never depend on latent frames ``>= k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Conv3d):
    """3D convolution, causal in time (``2 * padding_t`` zero frames on the left), same in space.

    ``forward(x, cache)`` takes an optional ``cache`` of the frames that precede ``x`` (at most
    ``2 * padding_t`` of them); missing history is zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_context = 2 * pt
        self._spatial_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """``x`` ``(B, C, t, H, W)`` -> ``(B, C_out, t, H, W)``."""
        pad_t = self.time_context
        if cache is not None and pad_t > 0:
            cache = cache[:, :, -pad_t:]
            x = torch.cat([cache.to(x.dtype), x], dim=2)
            pad_t -= cache.shape[2]
        x = F.pad(x, (*self._spatial_pad, pad_t, 0))
        return super().forward(x)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels of ``(B, C, T, H, W)``: ``normalize(x, dim=1) * sqrt(C) * gamma``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _tail(prev: torch.Tensor | None, x: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Last ``n`` frames of ``cat(prev, x)`` along time (the cache for the next chunk)."""
    seq = x if prev is None else torch.cat([prev, x], dim=2)
    return seq[:, :, -n:]


class CausalTimeUpsample2x(nn.Module):
    """Frame 0 passes through; frames ``1..`` each become 2 frames via a causal time conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))

    def forward(
        self, x: torch.Tensor, cache: torch.Tensor | None = None, has_first: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Upsample one chunk.

        Args:
            x: ``(B, C, t, H, W)``.
            cache: frames ``1..`` of earlier chunks (last 2), or None.
            has_first: whether ``x`` starts with the sequence's frame 0.

        Returns:
            ``(B, C, 2t - 1 if has_first else 2t, H, W)`` and the cache for the next chunk.
        """
        head = x[:, :, :1] if has_first else None
        rest = x[:, :, 1:] if has_first else x
        if rest.shape[2] == 0:
            assert head is not None
            return head, cache
        b, c, t, h, w = rest.shape
        y = self.time_conv(rest, cache)  # (B, 2C, t, H, W)
        y = y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        new_cache = _tail(cache, rest)
        return (y if head is None else torch.cat([head, y], dim=2)), new_cache


class CausalResidualHalf(nn.Module):
    """``x + CausalConv3d(SiLU(RMSNorm(x)))`` with a 3x3x3 kernel (official ``ResidualBlock_Half``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(ChannelRMSNorm(dim), nn.SiLU(), CausalConv3d(dim, dim, 3, padding=1))

    def forward(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, t, H, W)`` -> same shape, plus the conv-input cache for the next chunk."""
        h = self.residual[1](self.residual[0](x))
        out = x + self.residual[2](h, cache)
        return out, _tail(cache, h)


class _UpsampleStack(nn.Module):
    """Holds ``upsamples`` so state-dict keys read ``decoder.upsamples.N`` as in the official model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.upsamples = nn.ModuleList(
            [
                CausalTimeUpsample2x(dim),
                CausalResidualHalf(dim),
                CausalTimeUpsample2x(dim),
                CausalResidualHalf(dim),
            ]
        )


class CausalTemporalUpsampler(nn.Module):
    """4x causal temporal upsampler for one DPT feature level.

    Args:
        dim: channels ``C`` of the feature level.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv2 = CausalConv3d(dim, dim, 1)
        self.decoder = _UpsampleStack(dim)

    @staticmethod
    def num_output_frames(num_latent_frames: int) -> int:
        """``F -> 4 (F - 1) + 1``."""
        return 4 * (num_latent_frames - 1) + 1

    def forward(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Upsample in time.

        Args:
            z: latent-rate features ``(B, C, F, H, W)``.
            chunk_size: latent frames processed at once (caches carried between chunks, the
                result is identical); None processes all ``F`` together. ``1`` matches the
                official frame-by-frame decode.

        Returns:
            ``(B, C, 4 (F - 1) + 1, H, W)``.
        """
        x = self.conv2(z)
        num_frames = x.shape[2]
        step = num_frames if chunk_size is None else max(1, chunk_size)
        up0, res1, up2, res3 = self.decoder.upsamples
        caches: list[torch.Tensor | None] = [None, None, None, None]
        outs = []
        for start in range(0, num_frames, step):
            first = start == 0
            y = x[:, :, start : start + step]
            y, caches[0] = up0(y, caches[0], has_first=first)
            y, caches[1] = res1(y, caches[1])
            y, caches[2] = up2(y, caches[2], has_first=first)
            y, caches[3] = res3(y, caches[3])
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
