"""DPT dense head with causal temporal upsampling (official ``DPTHead_3D_Causal``).

Input: 4 intermediate token tensors of the geometry branch, each ``(B, F, P, dim_in)`` with
``P = patch_start_idx + h * w`` (5 special tokens first) and ``dim_in = 2 * D_geo`` (frame and
global outputs concatenated). Output: values and confidence at pixel resolution
``(H, W) = (h * patch_size, w * patch_size)`` and pixel frame rate ``T = 4 (F - 1) + 1``.

Pipeline (official order, verified against FantasyWorld ``vggt/heads/dpt_head.py``):

1. per level ``i`` and latent frame: ``norm`` (LayerNorm, shared by the levels) -> patch tokens
   to a ``(dim_in, h, w)`` map -> ``projects[i]`` (1x1 conv to ``out_channels[i]``) -> UV
   sin/cos position embedding (x0.1) -> ``resize_layers[i]``: levels at 4x, 2x, 1x, 1/2x the
   token grid;
2. ``temporal_upsamplers[i]`` on each level, ``F -> 4 (F - 1) + 1`` frames (this module's
   only temporal mixing; it is causal, see :mod:`fantasyworld.heads.temporal_upsample`);
3. per pixel frame: RefineNet fusion (``scratch``) -> ``output_conv1`` -> bilinear resize to
   ``(H, W)`` -> position embedding -> ``output_conv2`` -> activation.

The official call passes the IRG layers ``[23, 17, 11, 7]`` to levels 0..3 (deepest layer to
the finest level); that choice belongs to the caller (:attr:`DPTHead.intermediate_layer_idx`,
recorded here; the model picks the layers, ``GeometryBranch.run_heads``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from fantasyworld.heads.activations import activate_head
from fantasyworld.heads.resize import RESIZE_MODES, resize_bilinear
from fantasyworld.heads.temporal_upsample import CausalTemporalUpsampler


def _uv_pos_embed(h: int, w: int, channels: int, aspect_ratio: float, device: torch.device) -> torch.Tensor:
    """VGGT/MoGe UV sin-cos embedding ``(channels, h, w)`` (float32) for an ``h x w`` map.

    The UV grid spans ``+-span * (n - 1) / n`` with spans ``(ar, 1) / sqrt(1 + ar^2)``; ``x``
    fills the first ``channels / 2`` channels, ``y`` the rest, each ``[sin | cos]`` at
    frequencies ``100 ** (-j / (channels / 4))``.
    """
    if channels % 4 != 0:
        raise ValueError(f"position embedding needs channels divisible by 4, got {channels}")
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, device=device, dtype=torch.float64)
    ys = torch.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, device=device, dtype=torch.float64)
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)

    def sincos(pos: torch.Tensor) -> torch.Tensor:
        ang = pos[:, None] * omega  # (n, quarter)
        return torch.cat([ang.sin(), ang.cos()], dim=1)  # (n, 2 * quarter)

    ex = sincos(xs)[None, :, :].expand(h, w, 2 * quarter)  # (h, w, C/2)
    ey = sincos(ys)[:, None, :].expand(h, w, 2 * quarter)
    return torch.cat([ex, ey], dim=-1).permute(2, 0, 1).float()  # (C, h, w)


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``.

    The official unit uses an in-place ReLU, so its skip connection adds ``relu(x)``, not
    ``x``; we reproduce that explicitly (it is what the released weights were trained with).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: ``out_conv(resize(rcu2(x + rcu1(skip))))``; resize to ``size`` or x2."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.has_residual = has_residual
        #: bilinear resize implementation (:mod:`fantasyworld.heads.resize`; set by the head)
        self.resize_mode = "kernel"
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``x`` ``(N, C, h, w)`` (+ ``skip`` same shape) -> ``(N, C, *size)`` (default ``2h, 2w``)."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(resize_bilinear(x, size, self.resize_mode))


class DPTHead(nn.Module):
    """Dense prediction head (depth or point map) at pixel resolution and pixel frame rate.

    Args:
        dim_in: token width (``2 * D_geo``; official 2048).
        output_dim: raw output channels; the last is confidence (depth 2, points 4).
        activation: value activation (depth ``exp``, points ``inv_log``).
        conf_activation: confidence activation (``expp1``: ``1 + exp``).
        features: fusion width (official 256).
        out_channels: per-level widths (official ``[256, 512, 1024, 1024]``).
        patch_size: pixels per token side (Wan VAE 8 x DiT patch 2 = 16).
        patch_start_idx: leading special tokens per frame (1 camera + 4 register = 5).
        pos_embed: add the UV position embedding (official: yes).
        temporal_upsample: causal 4x temporal upsampling (official: yes); without it the output
            has ``T = F`` frames and the head has no ``temporal_upsamplers``.
        intermediate_layer_idx: geometry layers feeding levels 0..3 (recorded for
            the caller; official ``(23, 17, 11, 7)``).
        latent_frames_chunk_size: latent frames per step of the per-frame projection stage
            (official 4).
        frames_chunk_size: pixel frames per step of the fusion/output stage (official 16).
        temporal_chunk_size: latent frames per step inside the temporal upsamplers (None: all).
            The three chunk sizes trade memory for speed and never change the result.

    Speed options of the pixel-rate fusion stage (runtime attributes, set with :meth:`set_layout`;
    neither changes the result beyond rounding, tested in float32 to 5e-6 relative):
    ``channels_last`` (the fusion convolutions and resizes in NHWC: cuDNN's bf16 kernels are
    NHWC, so NCHW maps cost a transpose around every convolution) and ``resize``
    (``kernel`` or ``matmul``, :mod:`fantasyworld.heads.resize`).
    """

    def __init__(
        self,
        dim_in: int,
        output_dim: int = 2,
        activation: str = "exp",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        patch_size: int = 16,
        patch_start_idx: int = 5,
        pos_embed: bool = True,
        temporal_upsample: bool = True,
        intermediate_layer_idx: Sequence[int] = (23, 17, 11, 7),
        latent_frames_chunk_size: int = 4,
        frames_chunk_size: int = 16,
        temporal_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels needs 4 entries, got {list(out_channels)}")
        self.output_dim = output_dim
        self.activation = activation
        self.conf_activation = conf_activation
        self.patch_size = patch_size
        self.patch_start_idx = patch_start_idx
        self.pos_embed = pos_embed
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        self.latent_frames_chunk_size = latent_frames_chunk_size
        self.frames_chunk_size = frames_chunk_size
        #: recompute each frame chunk's fusion stage in backward (memory knob; set by the model)
        self.checkpoint_fusion = False
        self.temporal_chunk_size = temporal_chunk_size
        #: ``(temporal_chunk_size, frames_chunk_size)`` used instead when no gradient is recorded
        #: (inference; set by the memory tiers): both chunkings are exact, so only memory changes
        self.inference_chunks: tuple[int, int] | None = None
        self.channels_last = False
        self.resize = "kernel"
        oc = list(out_channels)

        # 1. token maps -> 4 levels at 4x, 2x, 1x, 1/2x the token grid
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, 1) for c in oc])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        # 2. latent -> pixel frame rate, one upsampler per level
        self.temporal_upsamplers = (
            nn.ModuleList([CausalTemporalUpsampler(c) for c in oc]) if temporal_upsample else None
        )
        # 3. RefineNet fusion and output convs (official names under `scratch`)
        self.scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, output_dim, 1)
        )

    def set_layout(self, channels_last: bool | None = None, resize: str | None = None) -> DPTHead:
        """Choose the fusion stage's memory layout and resize implementation (None: unchanged).

        ``channels_last`` also stores the fusion convolutions' weights in NHWC (the values are
        unchanged, so checkpoints and the state dict are not affected).
        """
        if resize is not None:
            if resize not in RESIZE_MODES:
                raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
            self.resize = resize
            for block in (self.scratch.refinenet1, self.scratch.refinenet2, self.scratch.refinenet3,
                          self.scratch.refinenet4):
                block.resize_mode = resize
        if channels_last is not None:
            self.channels_last = bool(channels_last)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.scratch.to(memory_format=fmt)
        return self

    @classmethod
    def depth(cls, dim_in: int, **kwargs) -> DPTHead:
        """Depth head: ``output_dim=2``, ``exp`` depth, ``1 + exp`` confidence."""
        return cls(dim_in, output_dim=2, activation="exp", conf_activation="expp1", **kwargs)

    @classmethod
    def points(cls, dim_in: int, **kwargs) -> DPTHead:
        """Point-map head: ``output_dim=4``, ``sign * (exp|y| - 1)`` xyz, ``1 + exp`` confidence."""
        return cls(dim_in, output_dim=4, activation="inv_log", conf_activation="expp1", **kwargs)

    def num_output_frames(self, num_latent_frames: int) -> int:
        """``F -> 4 (F - 1) + 1`` with temporal upsampling, else ``F``."""
        if self.temporal_upsamplers is None:
            return num_latent_frames
        return CausalTemporalUpsampler.num_output_frames(num_latent_frames)

    def _add_pos_embed(self, x: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        """``x`` ``(N, C, h, w)`` + 0.1 * UV embedding (no-op when ``pos_embed`` is off)."""
        if not self.pos_embed:
            return x
        pe = _uv_pos_embed(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio, x.device)
        return x + (0.1 * pe).to(x.dtype)

    def _levels(self, tokens: Sequence[torch.Tensor], h: int, w: int) -> list[torch.Tensor]:
        """Stage 1: 4 level maps, each ``(B, C_i, F, h_i, w_i)`` at the latent frame rate."""
        b, num_frames = tokens[0].shape[:2]
        aspect = w / h
        per_level: list[list[torch.Tensor]] = [[], [], [], []]
        step = max(1, self.latent_frames_chunk_size)
        for start in range(0, num_frames, step):
            for i, tok in enumerate(tokens):
                x = tok[:, start : start + step, self.patch_start_idx :]  # (B, f, h*w, D)
                f = x.shape[1]
                x = self.norm(x.reshape(b * f, h * w, -1))
                x = x.transpose(1, 2).reshape(b * f, -1, h, w)  # (B*f, D, h, w)
                x = self._add_pos_embed(self.projects[i](x), aspect)
                x = self.resize_layers[i](x)  # (B*f, C_i, h_i, w_i)
                per_level[i].append(x.reshape(b, f, *x.shape[1:]))
        # (B, F, C_i, h_i, w_i) -> (B, C_i, F, h_i, w_i)
        return [torch.cat(chunks, dim=1).transpose(1, 2) for chunks in per_level]

    def _fuse(self, feats: list[torch.Tensor], out_hw: tuple[int, int], aspect: float) -> torch.Tensor:
        """Stage 3 on ``N`` frames: 4 maps ``(N, C_i, h_i, w_i)`` -> raw output ``(N, output_dim, H, W)``."""
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i + 1}_rn")(f) for i, f in enumerate(feats))
        out = s.refinenet4(l4, size=l3.shape[-2:])
        out = s.refinenet3(out, l3, size=l2.shape[-2:])
        out = s.refinenet2(out, l2, size=l1.shape[-2:])
        out = s.refinenet1(out, l1)
        out = resize_bilinear(s.output_conv1(out), out_hw, self.resize)
        out = self._add_pos_embed(out, aspect)
        return s.output_conv2(out)

    def _frame_maps(self, x: torch.Tensor, start: int, stop: int, frames: torch.Tensor | None) -> torch.Tensor:
        """Pixel frames ``start:stop`` of a level ``(B, C, T, h, w)`` (of the subset ``frames``
        ``(B, K)`` when given) as one batch of maps ``(B*t, C, h, w)``, channels-last if asked."""
        b = x.shape[0]
        if frames is not None:
            rows = torch.arange(b, device=x.device)[:, None]
            x = x.transpose(1, 2)[rows, frames[:, start:stop]].transpose(1, 2)  # (B, C, t, h, w)
        else:
            x = x[:, :, start:stop]
        if self.channels_last:
            nthwc = x.permute(0, 2, 3, 4, 1).contiguous()  # (B, t, h, w, C): one copy, NHWC
            return nthwc.flatten(0, 1).permute(0, 3, 1, 2)
        return x.transpose(1, 2).flatten(0, 1)

    def forward(
        self, tokens: Sequence[torch.Tensor], grid_hw: tuple[int, int], frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict dense values and confidence.

        Args:
            tokens: 4 tensors ``(B, F, P, dim_in)``, ``P = patch_start_idx + h * w``, patch
                tokens row-major; entry ``i`` feeds level ``i`` (layer ``intermediate_layer_idx[i]``).
            grid_hw: token grid ``(h, w)``.
            frames: optional ``(B, K)`` int64 pixel-frame indices (each in ``[0, T)``): only these
                frames go through the full-resolution fusion stage (the latent-rate stage and the
                temporal upsampling still see every frame; causality is unchanged), and the outputs
                hold those ``K`` frames in the given order instead of all ``T``.

        Returns:
            ``values``: ``(B, T, H, W)`` when there is one value channel (depth, > 0 with
            ``exp``), else ``(B, T, H, W, output_dim - 1)`` (points: xyz);
            ``conf``: ``(B, T, H, W)`` (> 1 with ``expp1``).
            ``T = 4 (F - 1) + 1`` (or ``F`` without temporal upsampling), ``H = h * patch_size``,
            ``W = w * patch_size``. Values are float32 when the input is. With ``frames``, ``T``
            is replaced by ``K``.
        """
        if len(tokens) != 4:
            raise ValueError(f"DPTHead takes 4 token tensors, got {len(tokens)}")
        h, w = grid_hw
        b, num_frames, p, _ = tokens[0].shape
        if p != self.patch_start_idx + h * w:
            raise ValueError(f"tokens have P={p}, expected {self.patch_start_idx} + {h}*{w}")
        out_hw = (h * self.patch_size, w * self.patch_size)
        aspect = out_hw[1] / out_hw[0]

        temporal_chunk, frames_chunk = self.temporal_chunk_size, self.frames_chunk_size
        if self.inference_chunks is not None and not torch.is_grad_enabled():
            temporal_chunk, frames_chunk = self.inference_chunks
        levels = self._levels(tokens, h, w)  # 4 x (B, C_i, F, h_i, w_i)
        if self.temporal_upsamplers is not None:
            levels = [up(x, temporal_chunk) for up, x in zip(self.temporal_upsamplers, levels)]
        num_out = levels[0].shape[2] if frames is None else frames.shape[1]

        def fuse_and_activate(*chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            raw = self._fuse(list(chunk), out_hw, aspect)
            return activate_head(raw, self.activation, self.conf_activation)

        values, confs = [], []
        step = max(1, frames_chunk)
        for start in range(0, num_out, step):
            # (B, C_i, t, h_i, w_i) -> (B*t, C_i, h_i, w_i)
            chunk = [self._frame_maps(x, start, start + step, frames) for x in levels]
            if self.checkpoint_fusion and torch.is_grad_enabled():
                # keep one frame chunk's full-resolution activations alive at a time in backward
                v, c = torch.utils.checkpoint.checkpoint(fuse_and_activate, *chunk, use_reentrant=False)
            else:
                v, c = fuse_and_activate(*chunk)
            t = v.shape[0] // b
            values.append(v.reshape(b, t, *v.shape[1:]))
            confs.append(c.reshape(b, t, *c.shape[1:]))
        value = torch.cat(values, dim=1)  # (B, T, H, W, output_dim - 1)
        if value.shape[-1] == 1:
            value = value.squeeze(-1)
        return value, torch.cat(confs, dim=1)
