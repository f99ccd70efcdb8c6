"""The trainable geometry branch: latent bridge, special tokens, timestep modulation,
VGGT-style frame/global blocks and the registered heads (SPEC 3.2 items 3-5 and 7;
:mod:`fantasyworld.heads.registry`).

Token layouts (letter legend: B batch, F latent frames, P = 5 + h*w tokens per frame,
D geometry width):

* frame attention works on ``(B*F, P, D)`` (attention inside each latent frame);
* global attention works on ``(B, F*P, D)`` (all frames);
* each frame's tokens are ``[camera, register x4, patches (row-major)]``.

Parameter names follow the official ``vggt.*`` modules (``projection_head``,
``camera_token``, ``frame_blocks.N``, ``depth_head`` ...); the official keeps its global
blocks inside ``IRGBlock.N.x_agg``, which map to ``global_blocks.N`` here.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from fantasyworld.heads.registry import ALL_HEADS, HEADS, HeadInputs, HeadSpec, resolve_heads
from fantasyworld.layers.geo_block import GeoBlock
from fantasyworld.layers.rope2d import Rope2D, Rotary2D, frame_positions
from fantasyworld.models.config import FantasyWorldConfig

NUM_CAMERA_TOKENS = 1


class CamTokenProjector(nn.Module):
    """Optional pose-conditioned camera token: 4 pixel frames x 9-d pose -> one token.

    The official model carries this module but its inference never feeds it. Here the
    grouping is causal, matching the VAE: latent frame 0 <- pixel frame 0 (repeated 4x),
    latent frame k >= 1 <- pixel frames 4k-3 .. 4k. (The official pads the *end* with
    copies of frame 0, which misaligns groups; we do not copy that.)
    """

    def __init__(self, out_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(36, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, pose_enc: torch.Tensor) -> torch.Tensor:
        """pose_enc (B, T, 9), T = 4k+1 -> camera tokens (B*F, 1, D), F = k+1."""
        return self.mlp(group_by_latent_frame(pose_enc)).reshape(-1, 1, self.mlp[-1].out_features)


def group_by_latent_frame(pose_enc: torch.Tensor) -> torch.Tensor:
    """Pixel-rate pose encodings ``(B, T, 9)``, ``T = 4k+1`` -> ``(B, k+1, 36)``, the 4 pixel
    frames of each latent frame side by side (causal, as the VAE: latent frame 0 <- pixel
    frame 0 four times, latent frame ``j >= 1`` <- pixel frames ``4j-3 .. 4j``)."""
    b, t, _ = pose_enc.shape
    first = pose_enc[:, :1].expand(b, 4, 9)
    return torch.cat([first, pose_enc[:, 1:]], dim=1).reshape(b, (t + 3) // 4, 36)


def _expand_special(token: torch.Tensor, b: int, f: int) -> torch.Tensor:
    """(1, 2, X, D) learned tokens -> (B*F, X, D): index 0 for frame 0, index 1 for the rest."""
    first = token[:, :1].expand(b, 1, *token.shape[2:])
    rest = token[:, 1:].expand(b, f - 1, *token.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(b * f, *token.shape[2:])


class GeometryBranch(nn.Module):
    """Geometry tokens, blocks and heads. The IRG loop itself lives in the full model."""

    #: modules computed in float32 even under bf16 (tiny MLPs on the timestep)
    _keep_in_fp32_modules = ("time_embedding", "time_projection")

    def __init__(self, config: FantasyWorldConfig) -> None:
        super().__init__()
        c = config
        d = c.geo_dim
        self.config = c
        self.patch_start_idx = NUM_CAMERA_TOKENS + c.num_register_tokens
        # 1. latent bridge: PCB tokens (Wan width) -> geometry tokens
        self.projection_head = nn.Conv3d(c.wan_dim, d, kernel_size=1)
        # 2. special tokens: [first frame, other frames]
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, d) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, c.num_register_tokens, d) * 1e-6)
        self.cam_token_projector = (
            CamTokenProjector(d, c.cam_token_projector_hidden) if c.cam_token_projector else None
        )
        # 3. geometry timestep modulation: sinusoid -> MLP -> 6 x D
        self.time_embedding = nn.Sequential(nn.Linear(c.time_freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        # 4. alternating-attention blocks, one frame + one global block per IRG layer
        def block() -> GeoBlock:
            return GeoBlock(d, c.geo_heads, c.geo_mlp_ratio, qk_norm=True, init_values=c.geo_layerscale_init)

        self.frame_blocks = nn.ModuleList([block() for _ in range(c.num_irg)])
        self.global_blocks = nn.ModuleList([block() for _ in range(c.num_irg)])
        self.rope = Rope2D(c.geo_rope_freq)
        # 5. heads on concatenated (frame, global) intermediates: width 2D, one per registered head
        self.head_specs: tuple[HeadSpec, ...] = tuple(HEADS.values())
        for spec in self.head_specs:
            self.add_module(spec.module, spec.build(c, 2 * d, self.patch_start_idx))

    @property
    def head_names(self) -> tuple[str, ...]:
        """Names of the heads this branch built (the registry's at construction), in run order."""
        return tuple(spec.name for spec in self.head_specs)

    def compatibility_only_parameters(self) -> list[str]:
        """Names (relative to this module) of parameters kept only so official weights
        load: they have no path to any output, so they are never trained."""
        names = []
        if self.cam_token_projector is not None and not self.config.use_pose_camera_token:
            names += [f"cam_token_projector.{n}" for n, _ in self.cam_token_projector.named_parameters()]
        names += [n for n, _ in self.named_parameters() if n.startswith("camera_head.trunk.")
                  and n.endswith(".modulation")]
        return names

    # ------------------------------------------------------------------ pieces
    def time_modulation(self, timestep: torch.Tensor) -> torch.Tensor:
        """Diffusion timestep (B,) in [0, 1000] -> modulation input (B, 6, D), float32."""
        freq = get_timestep_embedding(
            timestep.float(), self.config.time_freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        with torch.autocast(device_type="cuda" if timestep.is_cuda else "cpu", enabled=False):
            lin = self.time_embedding[0]
            e = self.time_embedding(freq.to(lin.weight.dtype)).float()
            e6 = self.time_projection(e.to(lin.weight.dtype)).float()
        return e6.unflatten(1, (6, self.config.geo_dim))

    def bridge(
        self, video_tokens: torch.Tensor, grid: tuple[int, int, int], camera_pose_enc: torch.Tensor | None = None
    ) -> torch.Tensor:
        """PCB output (B, F*h*w, D_wan) -> geometry tokens (B*F, P, D) with special tokens.

        ``camera_pose_enc`` (B, T, 9) feeds the optional pose-conditioned camera token.
        """
        b = video_tokens.shape[0]
        f, h, w = grid
        x = video_tokens.reshape(b, f, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, D_wan, F, h, w)
        x = self.projection_head(x.to(self.projection_head.weight.dtype))
        patches = x.permute(0, 2, 3, 4, 1).reshape(b * f, h * w, -1)  # (B*F, h*w, D)
        if self.config.use_pose_camera_token:
            if camera_pose_enc is None:
                raise ValueError("use_pose_camera_token is set: pass camera_pose_enc (B, T, 9)")
            cam = self.cam_token_projector(camera_pose_enc.to(patches.dtype))
        else:
            cam = _expand_special(self.camera_token, b, f)
        reg = _expand_special(self.register_token, b, f)
        return torch.cat([cam.to(patches.dtype), reg.to(patches.dtype), patches], dim=1)

    def rotary(self, grid: tuple[int, int, int], device: torch.device) -> tuple[Rotary2D, Rotary2D]:
        """2D RoPE for the frame layout (P tokens) and the global layout (F*P tokens)."""
        f, h, w = grid
        pos = frame_positions(h, w, self.patch_start_idx, device=device)  # (P, 2)
        head_dim = self.config.geo_dim // self.config.geo_heads
        return self.rope.bind(pos, head_dim), self.rope.bind(pos.repeat(f, 1), head_dim)

    def run_heads(
        self,
        intermediates: list[torch.Tensor],
        last: torch.Tensor,
        image_hw: tuple[int, int],
        which: str | tuple[str, ...] | None = ALL_HEADS,
        pixel_frames: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The selected heads (:func:`~fantasyworld.heads.registry.resolve_heads`) on the
        concatenated intermediates, in registration order.

        Args:
            intermediates: the 4 DPT inputs, each (B, F, P, 2D), in ``dpt_layers`` order
                (entry i feeds DPT level i; level 0 is the finest).
            last: the last IRG layer's output (B, F, P, 2D) for the camera head.
            image_hw: pixel size (H, W) = 16 * (h, w).
            pixel_frames: optional (B, K) int64 pixel-frame indices; the pixel-rate heads' outputs
                then hold only those frames (B, K, H, W, ...) (:class:`HeadInputs`).
        Returns:
            the outputs of each head that ran (:mod:`fantasyworld.heads.registry`): ``depth``
            (B, T, H, W), ``depth_conf`` (B, T, H, W), ``world_points`` (B, T, H, W, 3),
            ``world_points_conf`` (B, T, H, W), ``pose_enc`` (B, T, 9) and ``pose_enc_list``
            (one (B, T, 9) per refinement iteration), T = 4(F-1)+1, plus the decoded cameras
            ``w2c`` (B, T, 4, 4) (OpenCV, relative to frame 0 as trained) and pixel
            ``intrinsics`` (B, T, 3, 3).
        """
        selected = resolve_heads(which, self.head_names)
        inputs = HeadInputs(intermediates, last, image_hw, self.config, pixel_frames)
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        for spec in self.head_specs:
            if spec.name in selected:
                result = spec.run(getattr(self, spec.module), inputs)
                if pixel_frames is not None and spec.pixel_rate and not spec.frame_subset:
                    result = {k: select_frames(v, pixel_frames) if torch.is_tensor(v) else v for k, v in result.items()}
                out.update(result)
        return out


def select_frames(value: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Frames ``frames`` (B, K) of a per-frame tensor (B, T, ...) -> (B, K, ...)."""
    rows = torch.arange(value.shape[0], device=value.device)[:, None]
    return value[rows, frames.to(value.device)]
