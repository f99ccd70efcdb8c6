"""Camera head: per-pixel-frame pose encodings from the geometry branch's camera tokens.

Follows the official FantasyWorld ``CameraHead`` (``vggt/heads/camera_head.py``), sub-module
names included, so the released weights load by prefix rename only:

1. camera tokens of the last geometry layer, ``(B, F, dim_in)``, one per latent frame;
2. latent -> pixel frame rate (``camera_time_upsample.expand_channels``: a 1x1 ``Conv1d`` to
   ``4 * dim_in`` channels): frame 0 stays one token, every later latent frame becomes 4
   tokens, so ``T = 4 (F - 1) + 1``; channel ``4 c + j`` of the conv output is channel ``c``
   of sub-frame ``j``;
3. ``num_iterations`` (4) refinement steps: embed the current pose (``empty_pose_tokens`` at
   first, then the detached previous prediction) with ``embed_pose``; ``poseLN_modulation``
   (SiLU + Linear to 3 x dim_in) gives shift/scale/gate; tokens become
   ``x + gate * (adaln_norm(x) * (1 + scale) + shift)``; the ``trunk`` (4 :class:`GeoBlock`,
   no qk-norm, no RoPE) and ``trunk_norm`` follow; ``pose_branch`` (MLP dim_in -> dim_in / 2 ->
   9) predicts a delta added to the running encoding;
4. activations: translation and quaternion linear, fields of view ReLU.

Output: VGGT ``absT_quaR_FoV`` encodings ``(B, T, 9)`` = ``[t_xyz, q_xyzw, fov_h, fov_w]`` of
OpenCV world-to-camera poses (fov in radians), one per refinement iteration.

Official facts worth knowing:

* the official trunk is called as ``nn.Sequential`` on the tokens alone, i.e. **without** any
  timestep: each trunk block's ``modulation`` ``(1, 6, dim_in)`` exists in the checkpoint but is
  never used. :meth:`CameraHead.forward` exposes ``trunk_temb`` ``(B, 6, dim_in)`` for an
  optional conditioning (e.g. a 2x-wide geometry time projection); leave it None to match
  the official model.
* the official code has no positional information in the trunk, so the head is equivariant
  to permuting frames 1..T-1; only the order in which outputs are labelled matters.
* ``time_layout="official"`` reproduces two quirks of the released code: the 4 sub-frames are
  laid out sub-frame-major (output frame ``1 + j (F - 1) + n`` comes from latent frame
  ``1 + n``, sub-frame ``j``) and the expanded tokens skip ``token_norm`` (only frame 0 is
  normalised; a comment in the official code acknowledges this). The default
  ``"interleaved"`` normalises all tokens, then maps latent frame ``k >= 1`` to pixel frames
  ``4 (k - 1) + 1 .. 4k`` in order, which is the layout our data and losses use.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fantasyworld.heads.activations import activate_pose
from fantasyworld.layers.geo_block import GeoBlock, GeoMlp

TimeLayout = Literal["interleaved", "official"]


class CameraTimeUpsample(nn.Module):
    """Latent-rate tokens ``(B, N, C)`` -> 4 tokens each ``(B, 4N, C)`` (official ChannelExpandAndReshape)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand_channels = nn.Conv1d(dim, 4 * dim, kernel_size=1)

    def forward(self, x: torch.Tensor, layout: TimeLayout = "interleaved") -> torch.Tensor:
        """Expand ``x`` ``(B, N, C)``.

        Returns:
            ``(B, 4N, C)``: ``interleaved`` puts sub-frame ``j`` of token ``n`` at ``4n + j``;
            ``official`` puts it at ``j N + n``.
        """
        b, n, c = x.shape
        y = self.expand_channels(x.transpose(1, 2)).view(b, c, 4, n)  # channel 4c + j -> (c, j)
        if layout == "interleaved":
            y = y.transpose(2, 3)  # (B, C, N, 4)
        return y.reshape(b, c, 4 * n).transpose(1, 2)


class CameraHead(nn.Module):
    """Iterative camera-pose head at the pixel frame rate.

    Args:
        dim_in: camera-token width (``2 * D_geo``; official 2048).
        trunk_depth: trunk blocks (official 4).
        num_heads: trunk attention heads (official 16).
        mlp_ratio: trunk MLP ratio (official 4).
        init_values: trunk LayerScale init (official 0.01).
        trans_act, quat_act, fl_act: activations of translation, quaternion and fields of
            view (official ``linear``, ``linear``, ``relu``).
        temporal_upsample: expand latent frames to pixel frames (official: yes). Without it
            ``T = F`` and there is no ``camera_time_upsample``.
        time_layout: ``interleaved`` (default, natural frame order) or ``official`` (bit-exact
            behaviour of the released code, see the module docstring).
    """

    target_dim = 9

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        trans_act: str = "linear",
        quat_act: str = "linear",
        fl_act: str = "relu",
        temporal_upsample: bool = True,
        time_layout: TimeLayout = "interleaved",
        trunk_modulated: bool = True,
    ) -> None:
        super().__init__()
        if time_layout not in ("interleaved", "official"):
            raise ValueError(f"time_layout must be 'interleaved' or 'official', got {time_layout!r}")
        self.trans_act, self.quat_act, self.fl_act = trans_act, quat_act, fl_act
        self.time_layout: TimeLayout = time_layout

        self.trunk = nn.Sequential(
            *[
                GeoBlock(
                    dim_in, num_heads, mlp_ratio, qk_norm=False, init_values=init_values, modulated=trunk_modulated
                )
                for _ in range(trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.camera_time_upsample = CameraTimeUpsample(dim_in) if temporal_upsample else None
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = GeoMlp(dim_in, dim_in // 2, self.target_dim)

    def num_output_frames(self, num_latent_frames: int) -> int:
        """``F -> 4 (F - 1) + 1`` with temporal upsampling, else ``F``."""
        return 4 * (num_latent_frames - 1) + 1 if self.camera_time_upsample is not None else num_latent_frames

    def _pixel_rate_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, F, C)`` camera tokens -> normalised pixel-rate tokens ``(B, T, C)``."""
        if self.camera_time_upsample is None or tokens.shape[1] == 1:
            return self.token_norm(tokens)
        if self.time_layout == "official":
            expanded = self.camera_time_upsample(tokens[:, 1:], "official")  # not normalised
            return torch.cat([self.token_norm(tokens[:, :1]), expanded], dim=1)
        normed = self.token_norm(tokens)
        return torch.cat([normed[:, :1], self.camera_time_upsample(normed[:, 1:], "interleaved")], dim=1)

    def forward(
        self,
        camera_tokens: torch.Tensor,
        num_iterations: int = 4,
        trunk_temb: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Predict pose encodings.

        Args:
            camera_tokens: camera tokens of the last geometry layer ``(B, F, dim_in)``
                (``tokens[-1][:, :, 0]`` of the aggregated ``(B, F, P, dim_in)`` list).
            num_iterations: refinement iterations (official 4).
            trunk_temb: optional trunk conditioning ``(B, 6, dim_in)`` added to every trunk
                block's ``modulation`` (see :class:`GeoBlock`); None (official) runs the trunk
                unmodulated.

        Returns:
            ``num_iterations`` activated encodings ``(B, T, 9)``
            ``[t_xyz, q_xyzw, fov_h, fov_w]``, ``T = 4 (F - 1) + 1``; the last is the final
            prediction. Earlier iterations feed later ones detached.
        """
        tokens = self._pixel_rate_tokens(camera_tokens)  # (B, T, C)
        b, t, _ = tokens.shape
        pred: torch.Tensor | None = None
        preds = []
        for _ in range(num_iterations):
            pose_in = self.empty_pose_tokens.expand(b, t, -1) if pred is None else pred.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(pose_in)).chunk(3, dim=-1)
            x = tokens + gate * (self.adaln_norm(tokens) * (1 + scale) + shift)
            for block in self.trunk:
                x = block(x, trunk_temb)
            delta = self.pose_branch(self.trunk_norm(x))  # (B, T, 9)
            pred = delta if pred is None else pred + delta
            preds.append(activate_pose(pred, self.trans_act, self.quat_act, self.fl_act))
        return preds
