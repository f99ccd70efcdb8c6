"""Model configuration and presets.

A :class:`FantasyWorldConfig` fully describes an architecture: the frozen Wan
transformer (``wan``: the keyword arguments of diffusers' ``WanTransformer3DModel``)
and every FantasyWorld module built around it. It is saved as ``config.json`` next to
each checkpoint, so a checkpoint always carries its own architecture.

Presets (see SPEC 3.1):

=======================================  ==========================  ====  ====  ==============
preset                                   Wan dim / ffn / heads / L   PCB   IRG   geometry dim/h
=======================================  ==========================  ====  ====  ==============
``tiny``                                 64 / 128 / 2 / 6            2     4     64 / 2
``tiny-i2v``                             same, image conditioning    2     4     64 / 2
``small``                                384 / 1536 / 6 / 10         4     6     256 / 4
``wan2.1-t2v-1.3b``                      1536 / 8960 / 12 / 30       12    18    1024 / 16
``wan2.1-i2v-14b-480p``                  5120 / 13824 / 40 / 40      16    24    1024 / 16
``wan2.2-fun-a14b-control-camera-high``  5120 / 13824 / 40 / 40      16    24    1024 / 16
``wan2.2-fun-a14b-control-camera-low``   same                        16    24    1024 / 16
``tiny-wan2.2-high`` / ``-low``         64 / 128 / 2 / 6            2     4     64 / 2
=======================================  ==========================  ====  ====  ==============

``small`` sits between ``tiny`` and the released models: big enough to learn geometry from
128x128 clips on one GPU in minutes (``benchmarks/learn_gpu.py``), small enough to
pretrain its own VAE and backbone there (``scripts/pretrain_tiny_backbone.py --preset
small``). Its text width is the tiny UMT5's (32), so the seeded tiny text encoder serves it;
geometry 256 wide with 4 heads of 64, IRG cross-attention 192 wide (4 heads of 48, a
multiple of 6 for the 3D RoPE), DPT levels 32 / 64 / 128 / 128 wide fused at 64 (the heads
are most of a step's FLOPs: 0.17 TFLOP per 17x128x128 sample in stage 1, forward and
backward, ``benchmarks/flops.py``), a 2-block camera trunk with 4 refinement iterations,
camera adapters on the 4 PCBs (the 1.3B layout). 25.8M trainable parameters in stage 1,
30.6M in stage 2, on a 25.0M frozen backbone.

The Wan2.2 presets (FantasyWorld-Wan2.2-Fun-A14B-Control-Camera) are one preset per
expert of the two-expert A14B model: the same architecture, ``expert="high"`` (runs while
the bfloat16-rounded timestep is > ``expert_boundary`` = 900) or ``expert="low"`` (the
rest, and the geometry). Their backbone has no CLIP branch (``image_dim=None``) but 36
input channels (noise + mask + first/last-image latent), and the camera enters through the
Wan2.2-Fun **control adapter** (``control_adapter_channels=24``: Plucker rays packed 4
frames per latent frame, pixel-unshuffled, conv to the Wan width, one residual block,
added to the patch embedding) instead of a pose encoder and cross-attention adapters.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
#: values of :attr:`FantasyWorldConfig.expert` ("" = a single model, not one of two experts)
EXPERTS = ("", "high", "low")


@dataclass
class FantasyWorldConfig:
    """Architecture of a FantasyWorld model.

    Token geometry: pixels (T, H, W) -> VAE latents (F = (T-1)/4 + 1, H/8, W/8) ->
    DiT tokens (F, h = H/16, w = W/16) with patch (1, 2, 2), so each token covers
    16x16 pixels and each latent frame 4 pixel frames (the first covers 1).
    """

    name: str
    #: keyword arguments of ``diffusers.WanTransformer3DModel`` (the frozen backbone)
    wan: dict[str, Any]
    #: number of preconditioning blocks (PCB); the remaining Wan blocks are IRG blocks
    num_pcb: int
    # --- geometry branch (VGGT-style) ---
    geo_dim: int = 1024
    geo_heads: int = 16
    geo_mlp_ratio: float = 4.0
    geo_layerscale_init: float = 0.01
    geo_rope_freq: float = 100.0
    num_register_tokens: int = 4
    #: a pose-conditioned camera token projector (official ``CamTokenProjector``: 4 frames
    #: x 9-d pose encoding -> token). The official inference does not feed it, so it is
    #: built only for weight compatibility and used only when ``use_pose_camera_token``.
    cam_token_projector: bool = False
    cam_token_projector_hidden: int = 128
    use_pose_camera_token: bool = False
    time_freq_dim: int = 256
    # --- bidirectional cross-attention (IRG) ---
    bicross_dim: int = 1152
    bicross_heads: int = 12
    # --- heads ---
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    #: IRG layers whose outputs feed DPT levels 0..3 (level 0 is the finest; the official
    #: head feeds the deepest layer to the finest level: 23, 17, 11, 7 for 24 layers)
    dpt_layers: tuple[int, int, int, int] = (23, 17, 11, 7)
    camera_head_depth: int = 4
    camera_head_iters: int = 4
    #: how the camera head expands latent frames to pixel frames: ``interleaved`` (latent
    #: frame k -> pixel frames 4k-3..4k) or ``official`` (the released model's ordering)
    camera_time_layout: str = "interleaved"
    #: give the camera-head trunk blocks ``modulation`` parameters. The official model has
    #: them but never feeds a timestep to the trunk, so they are weight-compatibility only
    #: (built for the 14B preset, frozen, unused).
    camera_trunk_modulation: bool = False
    # --- camera conditioning ---
    plucker_channels: int = 6
    pose_downscale: int = 8
    #: width of the per-token pose feature (official: 2048)
    pose_feature_dim: int = 2048
    #: Wan block indices whose cross-attention gets a camera adapter
    camera_adapter_blocks: tuple[int, ...] = ()
    #: legacy switch reproducing the official Plucker intrinsics bug (converted checkpoints)
    official_compat: bool = False
    # --- Wan2.2-Fun control adapter and the two-expert split ---
    #: input channels of the Wan2.2-Fun camera control adapter (24 = 6 Plucker channels x 4
    #: pixel frames per latent frame); 0: no control adapter (camera via ``pose_encoder`` and
    #: ``camera_adapters`` instead). The adapter is part of the frozen Wan base.
    control_adapter_channels: int = 0
    #: pixel-unshuffle factor of the control adapter (the VAE's spatial stride)
    control_adapter_downscale: int = 8
    #: which expert of a two-expert model this is: ``""`` (single model), ``"high"`` (the
    #: DiT timestep, rounded to bfloat16, is > ``expert_boundary``) or ``"low"`` (<= it)
    expert: str = ""
    #: the timestep that separates the two experts (official: 900, strict ``>`` for high)
    expert_boundary: float = 900.0
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def wan_dim(self) -> int:
        return int(self.wan["num_attention_heads"] * self.wan["attention_head_dim"])

    @property
    def num_wan_blocks(self) -> int:
        return int(self.wan["num_layers"])

    @property
    def num_irg(self) -> int:
        return self.num_wan_blocks - self.num_pcb

    @property
    def is_i2v(self) -> bool:
        """The backbone takes a conditioning latent (mask + image latent) beside the noise."""
        return int(self.wan["in_channels"]) > int(self.wan["out_channels"])

    @property
    def uses_clip(self) -> bool:
        """The backbone also reads CLIP image tokens (Wan2.1 I2V; not Wan2.2-Fun)."""
        return self.wan.get("image_dim") is not None

    @property
    def has_control_adapter(self) -> bool:
        """The camera enters through the Wan2.2-Fun control adapter (no pose encoder)."""
        return self.control_adapter_channels > 0

    @property
    def latent_channels(self) -> int:
        return int(self.wan["out_channels"])

    def validate(self) -> None:
        """Raise ``ValueError`` with an actionable message on inconsistent settings."""
        if not 0 < self.num_pcb < self.num_wan_blocks:
            raise ValueError(f"num_pcb={self.num_pcb} must be in (0, {self.num_wan_blocks})")
        if self.geo_dim % self.geo_heads:
            raise ValueError(f"geo_dim {self.geo_dim} not divisible by geo_heads {self.geo_heads}")
        if self.bicross_dim % self.bicross_heads:
            raise ValueError(f"bicross_dim {self.bicross_dim} not divisible by bicross_heads")
        if (self.bicross_dim // self.bicross_heads) % 6:
            raise ValueError("bicross head dim must be divisible by 6 (3D RoPE split)")
        if len(self.dpt_layers) != 4 or any(not 0 <= i < self.num_irg for i in self.dpt_layers):
            raise ValueError(f"dpt_layers {self.dpt_layers} must be 4 indices in [0, {self.num_irg})")
        bad = [i for i in self.camera_adapter_blocks if not 0 <= i < self.num_wan_blocks]
        if bad:
            raise ValueError(f"camera_adapter_blocks {bad} outside [0, {self.num_wan_blocks})")
        if self.camera_time_layout not in ("interleaved", "official"):
            raise ValueError(f"camera_time_layout must be 'interleaved' or 'official', got {self.camera_time_layout!r}")
        if self.use_pose_camera_token and not self.cam_token_projector:
            raise ValueError("use_pose_camera_token needs cam_token_projector=True")
        if self.uses_clip and not self.is_i2v:
            raise ValueError("image_dim (CLIP tokens) needs in_channels > out_channels (a conditioning latent)")
        if self.control_adapter_channels < 0:
            raise ValueError(f"control_adapter_channels must be >= 0, got {self.control_adapter_channels}")
        if self.has_control_adapter and self.camera_adapter_blocks:
            raise ValueError("a control-adapter model has no cross-attention camera adapters: "
                             f"set camera_adapter_blocks=() (got {self.camera_adapter_blocks})")
        if self.has_control_adapter and self.control_adapter_channels % self.plucker_channels:
            raise ValueError(f"control_adapter_channels {self.control_adapter_channels} must be a multiple of "
                             f"plucker_channels {self.plucker_channels} (frames packed per latent frame)")
        if self.expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {self.expert!r}")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dpt_out_channels"] = list(self.dpt_out_channels)
        d["dpt_layers"] = list(self.dpt_layers)
        d["camera_adapter_blocks"] = list(self.camera_adapter_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FantasyWorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FantasyWorldConfig keys: {unknown}")
        d = dict(d)
        for key in ("dpt_out_channels", "dpt_layers", "camera_adapter_blocks"):
            if key in d:
                d[key] = tuple(d[key])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FantasyWorldConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read model config: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> FantasyWorldConfig:
        d = copy.deepcopy(self.to_dict())
        d.update(changes)
        return FantasyWorldConfig.from_dict(d)


# --------------------------------------------------------------------------- Wan configs
# Exact diffusers configs of the released Wan2.1 transformers.
WAN21_T2V_1_3B: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
    added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
)
WAN21_I2V_14B_480P: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280,
    added_kv_proj_dim=5120, rope_max_seq_len=1024, pos_embed_seq_len=None,
)
WAN_TINY: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16,
    out_channels=16, text_dim=32, freq_dim=256, ffn_dim=128, num_layers=6,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
    added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
)
WAN_TINY_I2V: dict[str, Any] = dict(WAN_TINY, in_channels=36, image_dim=32, added_kv_proj_dim=64)
WAN_SMALL: dict[str, Any] = dict(WAN_TINY, num_attention_heads=6, attention_head_dim=64, ffn_dim=1536, num_layers=10)
# Wan2.2-Fun-A14B-Control-Camera, one expert: Wan2.2-A14B dims, 36 input channels, no CLIP
# branch (the control adapter is ours, beside the diffusers transformer).
WAN22_FUN_A14B: dict[str, Any] = dict(WAN21_I2V_14B_480P, image_dim=None, added_kv_proj_dim=None)
WAN_TINY_WAN22: dict[str, Any] = dict(WAN_TINY, in_channels=36)


def _wan22(name: str, expert: str) -> FantasyWorldConfig:
    # PCB 16 / IRG 24 as in the Wan2.1 release; no pose encoder, no cross-attention adapters.
    return FantasyWorldConfig(
        name=name, wan=dict(WAN22_FUN_A14B), num_pcb=16, dpt_layers=(23, 17, 11, 7), pose_feature_dim=2048,
        camera_adapter_blocks=(), cam_token_projector=True, camera_time_layout="official",
        camera_trunk_modulation=True, control_adapter_channels=24, expert=expert,
    )


def _tiny_wan22(name: str, expert: str) -> FantasyWorldConfig:
    cfg = _tiny(name, WAN_TINY_WAN22)
    cfg.camera_adapter_blocks = ()
    cfg.control_adapter_channels = 24
    cfg.expert = expert
    return cfg


def _tiny(name: str, wan: dict[str, Any]) -> FantasyWorldConfig:
    return FantasyWorldConfig(
        name=name, wan=dict(wan), num_pcb=2, geo_dim=64, geo_heads=2, bicross_dim=48,
        bicross_heads=2, dpt_features=16, dpt_out_channels=(8, 16, 32, 32), dpt_layers=(3, 2, 1, 0),
        camera_head_depth=1, camera_head_iters=2, pose_feature_dim=64,
        camera_adapter_blocks=(0, 1, 2), time_freq_dim=32, cam_token_projector_hidden=16,
    )


def _small() -> FantasyWorldConfig:
    return FantasyWorldConfig(
        name="small", wan=dict(WAN_SMALL), num_pcb=4, geo_dim=256, geo_heads=4, bicross_dim=192, bicross_heads=4,
        dpt_features=64, dpt_out_channels=(32, 64, 128, 128), dpt_layers=(5, 3, 2, 1), camera_head_depth=2,
        camera_head_iters=4, pose_feature_dim=256, camera_adapter_blocks=(0, 1, 2, 3),
    )


def _preset_table() -> dict[str, FantasyWorldConfig]:
    return {
        "tiny": _tiny("tiny", WAN_TINY),
        "tiny-i2v": _tiny("tiny-i2v", WAN_TINY_I2V),
        "small": _small(),
        # Seed: PCB 12 / IRG 18, camera adapters on the 12 PCBs. The pose feature width
        # is 1024 (the seed estimates ~30M adapter parameters; 2048 would give ~100M).
        "wan2.1-t2v-1.3b": FantasyWorldConfig(
            name="wan2.1-t2v-1.3b", wan=dict(WAN21_T2V_1_3B), num_pcb=12,
            dpt_layers=(17, 12, 8, 5), pose_feature_dim=1024,
            camera_adapter_blocks=tuple(range(12)),
        ),
        # Official FantasyWorld-Wan2.1-I2V-14B-480P: PCB 16 / IRG 24, adapters on blocks
        # 0..24, pose feature 2048, CamTokenProjector present (unused by its inference).
        "wan2.1-i2v-14b-480p": FantasyWorldConfig(
            name="wan2.1-i2v-14b-480p", wan=dict(WAN21_I2V_14B_480P), num_pcb=16,
            dpt_layers=(23, 17, 11, 7), pose_feature_dim=2048,
            camera_adapter_blocks=tuple(range(25)), cam_token_projector=True,
            camera_time_layout="official", camera_trunk_modulation=True,
        ),
        # Official FantasyWorld-Wan2.2-Fun-A14B-Control-Camera: one preset per expert.
        "wan2.2-fun-a14b-control-camera-high": _wan22("wan2.2-fun-a14b-control-camera-high", "high"),
        "wan2.2-fun-a14b-control-camera-low": _wan22("wan2.2-fun-a14b-control-camera-low", "low"),
        "tiny-wan2.2-high": _tiny_wan22("tiny-wan2.2-high", "high"),
        "tiny-wan2.2-low": _tiny_wan22("tiny-wan2.2-low", "low"),
    }


PRESET_NAMES = tuple(_preset_table())


def get_preset(name: str) -> FantasyWorldConfig:
    """Return a fresh copy of a named preset (raises ``KeyError`` naming the choices)."""
    table = _preset_table()
    if name not in table:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    cfg = table[name]
    cfg.validate()
    return cfg
