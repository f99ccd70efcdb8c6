"""Loading the Wan2.2-Fun-A14B-Control-Camera base (one expert) from the release's directories.

Layout (as released; no network access, ever)::

    ROOT/                                  Wan2.2-Fun-A14B-Control-Camera
      high_noise_model/  config.json  diffusion_pytorch_model*.safetensors (+ .index.json)
      low_noise_model/   config.json  diffusion_pytorch_model*.safetensors (+ .index.json)

Each expert folder holds one DiT in original Wan names (``blocks.0.self_attn.q.weight`` ...)
plus the camera control adapter (``control_adapter.conv.*``,
``control_adapter.residual_blocks.0.conv{1,2}.*``); ``config.json`` has Wan's keys (``dim``,
``num_heads``, ``in_dim`` ...). ``ROOT`` may also be the expert folder itself. There is no
CLIP branch: an ``img_emb`` key is an unexpected key.

Loading is strict: missing, unexpected or mis-shaped keys raise :class:`CheckpointError`
naming them, for the transformer and for the adapter. An optional LoRA
(:mod:`fantasyworld.models.lora`) is merged in float32 before any cast, so every block, the
IRG blocks included, sees the merged weights. The weights keep the file's dtype until the
final cast (a LoRA update is computed in float32 and stored in the weight's dtype, as the
official merges into its bf16 weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from fantasyworld.errors import CheckpointError
from fantasyworld.layers.control_adapter import ControlAdapter
from fantasyworld.models.config import FantasyWorldConfig
from fantasyworld.models.lora import merge_lora_into
from fantasyworld.models.wan_backbone import build_wan_transformer, rebuild_rope
from fantasyworld.models.wan_loading import (
    _read_shards,
    _safetensors_files,
    cast_keeping_fp32,
    check_state_dict,
    diffusers_config_to_wan,
    diffusers_keys_to_wan,
)

__all__ = [
    "CONTROL_PREFIX", "OFFICIAL_LORA_MULTIPLIER", "Wan22Base", "expert_dir", "load_wan22_base",
    "read_wan22_config", "save_wan22_base",
]

#: Prefix of the control adapter's keys in the release files (and in our model).
CONTROL_PREFIX = "control_adapter."
#: The multiplier the official inference merges each expert's reward LoRA with.
OFFICIAL_LORA_MULTIPLIER = 0.55


def expert_dir(root: str | Path, expert: str) -> Path:
    """``ROOT/{expert}_noise_model`` if it exists, else ``ROOT`` when it is an expert folder."""
    root = Path(root)
    if not root.exists():
        raise CheckpointError(f"{root}: Wan2.2-Fun directory does not exist")
    for folder in (root / f"{expert}_noise_model", root):
        if (folder / "config.json").is_file():
            return folder
    raise CheckpointError(f"{root}: not a Wan2.2-Fun-A14B-Control-Camera directory (expected "
                          f"{expert}_noise_model/config.json, or config.json in the expert folder itself)")


def read_wan22_config(folder: str | Path) -> tuple[dict, int]:
    """``(diffusers kwargs, control adapter input channels)`` of an expert folder's ``config.json``."""
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the Wan config ({exc})") from exc
    if cfg.get("add_control_adapter") is False:
        raise CheckpointError(f"{path}: add_control_adapter is false: not a Control-Camera model")
    try:
        dim, heads = int(cfg["dim"]), int(cfg["num_heads"])
        wan = dict(
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
            attention_head_dim=dim // heads, in_channels=int(cfg["in_dim"]), out_channels=int(cfg["out_dim"]),
            text_dim=int(cfg.get("text_dim", 4096)), freq_dim=int(cfg.get("freq_dim", 256)),
            ffn_dim=int(cfg["ffn_dim"]), num_layers=int(cfg["num_layers"]),
            cross_attn_norm=bool(cfg.get("cross_attn_norm", True)),
            qk_norm="rms_norm_across_heads" if cfg.get("qk_norm", True) else None, eps=float(cfg.get("eps", 1e-6)),
            image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: Wan config lacks or mangles a required key ({exc})") from exc
    return wan, int(cfg.get("in_dim_control_adapter", 24))


def check_wan22_config(folder: str | Path, config: FantasyWorldConfig) -> None:
    """Raise :class:`CheckpointError` unless the folder's DiT is the preset's, key by key."""
    wan, control = read_wan22_config(folder)
    diff = [f"{k}: backbone {wan.get(k)!r} vs preset {v!r}" for k, v in config.wan.items()
            if k in wan and (tuple(v) if isinstance(v, list) else v) != wan.get(k)]
    if control != config.control_adapter_channels:
        diff.append(f"in_dim_control_adapter: backbone {control} vs preset {config.control_adapter_channels}")
    if diff:
        raise CheckpointError(f"{folder}: the Wan2.2-Fun transformer is not the preset's: " + "; ".join(diff))


class Wan22Base:
    """The frozen base of one expert: the diffusers transformer and the control adapter."""

    def __init__(self, transformer: WanTransformer3DModel, control_adapter: ControlAdapter,
                 lora_merged: list[str] | None = None) -> None:
        self.transformer = transformer
        self.control_adapter = control_adapter
        #: original Wan names of the weights a LoRA was merged into
        self.lora_merged = lora_merged or []


def _wan_names(transformer: WanTransformer3DModel, control: ControlAdapter) -> dict[str, str]:
    """Original Wan weight name -> our name (``transformer.*`` diffusers / ``control_adapter.*``)."""
    names = {w: f"transformer.{d}" for d, w in
             ((d, next(iter(diffusers_keys_to_wan({d: None})))) for d in transformer.state_dict())}
    names.update({CONTROL_PREFIX + k: CONTROL_PREFIX + k for k in control.state_dict()})
    return names


def load_wan22_base(
    root: str | Path,
    config: FantasyWorldConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    lora: str | Path | None = None,
    lora_multiplier: float = OFFICIAL_LORA_MULTIPLIER,
) -> Wan22Base:
    """Load ``config.expert``'s transformer and control adapter strictly from ``root``.

    Args:
        root: the Wan2.2-Fun-A14B-Control-Camera directory (or the expert folder).
        config: a control-adapter preset with ``expert`` set (its ``wan`` dict is checked
            against ``config.json`` key by key).
        dtype, device: where and in which precision to put the weights (the transformer's
            ``_keep_in_fp32_modules`` stay fp32).
        lora: optional LoRA safetensors merged (in float32, before the cast) with
            ``lora_multiplier`` (official: 0.55 with the expert's reward LoRA).
    """
    if not config.has_control_adapter or not config.expert:
        raise ValueError(f"preset {config.name} is not one expert of a control-adapter model")
    folder = expert_dir(root, config.expert)
    check_wan22_config(folder, config)
    state = _read_shards(_safetensors_files(folder))
    control_state = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    dit_state = {k: v for k, v in state.items() if not k.startswith(CONTROL_PREFIX)}
    transformer = build_wan_transformer(config.wan, device="meta")
    # checked in the file's own (original Wan) names, so errors name the keys as stored
    expected_wan = {k: v.shape for k, v in diffusers_keys_to_wan(transformer.state_dict()).items()}
    check_state_dict(expected_wan, dit_state, str(folder))
    dit_state = convert_wan_transformer_to_diffusers(dit_state)
    check_state_dict({k: v.shape for k, v in transformer.state_dict().items()}, dit_state, str(folder))
    with torch.device("meta"):
        control = ControlAdapter(config.control_adapter_channels, config.wan_dim, config.control_adapter_downscale)
    expected = {k: v.shape for k, v in control.state_dict().items()}
    try:
        check_state_dict(expected, control_state, str(folder))
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (control adapter, keys under {CONTROL_PREFIX!r})") from exc
    # the file's dtype is kept until the cast (no float32 copy of a bf16 release)
    transformer.load_state_dict(dit_state, strict=True, assign=True)
    control.load_state_dict(control_state, strict=True, assign=True)
    merged: list[str] = []
    if lora is not None:  # each update computed in float32, stored in the weight's dtype
        params = {f"transformer.{k}": v for k, v in transformer.named_parameters()}
        params.update({CONTROL_PREFIX + k: v for k, v in control.named_parameters()})
        merged = merge_lora_into(params, _wan_names(transformer, control), lora, lora_multiplier)
    cast_keeping_fp32(transformer, dtype)  # on the CPU, before the move
    rebuild_rope(transformer, device)  # not in the state dict: still on meta
    transformer = transformer.to(device)
    control = control.to(device=device, dtype=dtype)
    for m in (transformer, control):
        m.requires_grad_(False).eval()
    return Wan22Base(transformer, control, merged)


def save_wan22_base(transformer: WanTransformer3DModel, control_adapter: ControlAdapter, root: str | Path,
                    expert: str) -> Path:
    """Write one expert in the release layout, ``ROOT/{expert}_noise_model/`` (tests, exports)."""
    folder = Path(root) / f"{expert}_noise_model"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = diffusers_config_to_wan(dict(transformer.config))
    cfg.update(model_type="i2v", add_control_adapter=True,
               in_dim_control_adapter=int(control_adapter.conv.in_channels // control_adapter.unshuffle.downscale_factor
                                          ** 2))
    cfg.pop("image_dim", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.contiguous() for k, v in diffusers_keys_to_wan(transformer.state_dict()).items()}
    state.update({CONTROL_PREFIX + k: v.contiguous() for k, v in control_adapter.state_dict().items()})
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder
