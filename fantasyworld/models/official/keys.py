"""The released FantasyWorld-Wan2.1-I2V-14B-480P weights: where each official key goes.

Official model object (``FantasyWorldFusionModel``) vs ours (:class:`FantasyWorldModel`):

=====================================================  =============================================
official key                                           ours
=====================================================  =============================================
``pipe.dit.*`` (Wan naming; blocks 0..PCB-1,           ``transformer.*`` (diffusers naming); **not**
embeddings, head)                                      in our checkpoint: loaded from the Wan dir
``IRGBlock.i.x_dit.*`` (copy of Wan block PCB+i)       ``transformer.blocks.{PCB+i}.*`` (likewise)
``pipe.dit.blocks.b.cross_attn.processor.*``           ``camera_adapters.b.*``
``IRGBlock.i.x_dit.cross_attn.processor.*``            ``camera_adapters.{PCB+i}.*``
``IRGBlock.i.x_agg.*``                                 ``geometry.global_blocks.i.*``
``IRGBlock.i.bicross_attention.*``                     ``interactions.i.*``
``vggt.aggregator.camera_token`` / ``register_token``  ``geometry.camera_token`` / ``register_token``
``vggt.aggregator.CamTokenProjector.*``                ``geometry.cam_token_projector.*``
``vggt.aggregator.frame_blocks.*``                     ``geometry.frame_blocks.*``
``vggt.{projection_head,time_embedding,                ``geometry.{same}.*``
time_projection,depth_head,point_head,camera_head}.*``
``camera_condition.pose_encoder.*``                    ``pose_encoder.*``
``pipe.{text_encoder,image_encoder,vae}.*``            not converted (loaded from the Wan dir)
``pipe.dit.control_adapter.*`` (Wan2.2-Fun only)       ``control_adapter.*`` (Wan base, like
                                                       ``pipe.dit.*``: loaded from the Wan dir)
=====================================================  =============================================

The released FantasyWorld-Wan2.2-Fun-A14B-Control-Camera has one such model object per
expert (``high_noise_model.pth``, ``low_noise_model.pth``); the same map applies with the
``wan2.2-fun-a14b-control-camera-{high,low}`` presets: no camera processors, no pose
encoder, no CLIP branch, and the control adapter in the Wan base.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fantasyworld.errors import CheckpointError
from fantasyworld.models.config import FantasyWorldConfig
from fantasyworld.models.wan_loading import diffusers_keys_to_wan

#: Our preset that matches the released model.
OFFICIAL_PRESET = "wan2.1-i2v-14b-480p"
#: File name of the key manifest of the official model object.
MANIFEST_NAME = "official_fantasyworld_wan21_i2v_14b_keys.jsonl"
#: Our presets for the two experts of FantasyWorld-Wan2.2-Fun-A14B-Control-Camera.
OFFICIAL_WAN22_PRESETS = {"high": "wan2.2-fun-a14b-control-camera-high", "low": "wan2.2-fun-a14b-control-camera-low"}
#: Key manifests of the two official Wan2.2 model objects (HIGH also holds T5 and the VAE).
WAN22_MANIFEST_NAMES = {"high": "official_wan22_high_keys.jsonl", "low": "official_wan22_low_keys.jsonl"}
#: Files written by the converter.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "fantasyworld.safetensors"
OVERRIDE_FILE = "wan_override.safetensors"
REPORT_FILE = "conversion_report.json"

# ------------------------------------------------------------------------------ groups
WAN_DIT = "wan_dit"
WAN_IRG_COPY = "wan_irg_copy"
WAN_OTHER = "wan_other"
WAN_CONTROL = "wan_control_adapter"
ADAPTER_PCB = "camera_adapters_pcb"
ADAPTER_IRG = "camera_adapters_irg"
BICROSS = "bicross_attention"
GLOBAL_BLOCKS = "geometry_global_blocks"
AGGREGATOR = "geometry_aggregator"
DEPTH_HEAD = "depth_head"
POINT_HEAD = "point_head"
CAMERA_HEAD = "camera_head"
GEO_TIME = "geometry_time_and_projection"
POSE_ENCODER = "pose_encoder"

#: Human-readable description of each group (for reports and docs).
GROUP_TITLES: dict[str, str] = {
    WAN_DIT: "Wan DiT in pipe.dit (blocks 0..PCB-1, embeddings, head): Wan base, checked",
    WAN_IRG_COPY: "Wan block copies IRGBlock.N.x_dit (Wan blocks PCB..): Wan base, checked",
    WAN_OTHER: "Wan text encoder / image encoder / VAE: not converted",
    WAN_CONTROL: "Wan2.2-Fun control adapter in pipe.dit (camera): Wan base, checked",
    ADAPTER_PCB: "camera adapters in pipe.dit cross-attention -> camera_adapters",
    ADAPTER_IRG: "camera adapters in IRGBlock.N.x_dit cross-attention -> camera_adapters",
    BICROSS: "IRG bidirectional cross-attention -> interactions",
    GLOBAL_BLOCKS: "IRGBlock.N.x_agg -> geometry.global_blocks",
    AGGREGATOR: "vggt.aggregator (frame blocks, tokens, CamTokenProjector) -> geometry",
    DEPTH_HEAD: "vggt.depth_head -> geometry.depth_head",
    POINT_HEAD: "vggt.point_head -> geometry.point_head",
    CAMERA_HEAD: "vggt.camera_head -> geometry.camera_head",
    GEO_TIME: "vggt.projection_head / time_embedding / time_projection -> geometry",
    POSE_ENCODER: "camera_condition.pose_encoder -> pose_encoder",
}
WAN_GROUPS = (WAN_DIT, WAN_IRG_COPY, WAN_CONTROL)
#: prefix of the control adapter, in the official object / the Wan base files / our model
_OFFICIAL_CONTROL = "pipe.dit.control_adapter."
_WAN_CONTROL = "control_adapter."

# official vggt prefix -> (our prefix, group); exact names end without a dot
_VGGT_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("vggt.aggregator.camera_token", "geometry.camera_token", AGGREGATOR),
    ("vggt.aggregator.register_token", "geometry.register_token", AGGREGATOR),
    ("vggt.aggregator.CamTokenProjector.", "geometry.cam_token_projector.", AGGREGATOR),
    ("vggt.aggregator.frame_blocks.", "geometry.frame_blocks.", AGGREGATOR),
    ("vggt.projection_head.", "geometry.projection_head.", GEO_TIME),
    ("vggt.time_embedding.", "geometry.time_embedding.", GEO_TIME),
    ("vggt.time_projection.", "geometry.time_projection.", GEO_TIME),
    ("vggt.depth_head.", "geometry.depth_head.", DEPTH_HEAD),
    ("vggt.point_head.", "geometry.point_head.", POINT_HEAD),
    ("vggt.camera_head.", "geometry.camera_head.", CAMERA_HEAD),
    ("camera_condition.pose_encoder.", "pose_encoder.", POSE_ENCODER),
)
_WAN_OTHER_PREFIXES = ("pipe.text_encoder.", "pipe.image_encoder.", "pipe.vae.")
_RE_PCB_PROC = re.compile(r"^pipe\.dit\.blocks\.(\d+)\.cross_attn\.processor\.(.+)$")
_RE_IRG = re.compile(r"^IRGBlock\.(\d+)\.(x_dit|x_agg|bicross_attention)\.(.+)$")
_RE_WAN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_RE_OUR_INDEXED = re.compile(r"^(camera_adapters|interactions|geometry\.global_blocks)\.(\d+)\.(.+)$")


class OfficialCheckpointError(CheckpointError):
    """The official file cannot be converted; the message says why and names keys."""


@dataclass(frozen=True)
class KeyTarget:
    """Where an official key goes.

    Attributes:
        group: one of the group constants (``WAN_DIT``, ``BICROSS`` ...).
        ours: our state-dict key (``transformer.*`` for Wan keys); ``None`` for
            ``WAN_OTHER`` (text encoder, image encoder, VAE), which we do not convert.
        wan_name: for Wan DiT keys, the original Wan name (``blocks.16.self_attn.q.weight``)
            under which the Wan base files store the same tensor.
    """

    group: str
    ours: str | None
    wan_name: str | None = None


class OfficialKeyMap:
    """Bidirectional key mapping for one :class:`FantasyWorldConfig` (any size, the 14B
    preset or a tiny one with the same structure)."""

    def __init__(self, config: FantasyWorldConfig) -> None:
        self.config = config
        self._w2d: dict[str, str] | None = None
        self._d2w: dict[str, str] | None = None

    # ------------------------------------------------------------------ Wan names
    def _build_wan_names(self) -> None:
        from fantasyworld.models.wan_backbone import build_wan_transformer

        keys = list(build_wan_transformer(self.config.wan, device="meta").state_dict())
        d2w = {k: next(iter(diffusers_keys_to_wan({k: None}))) for k in keys}
        if len(set(d2w.values())) != len(d2w):
            raise RuntimeError("Wan key renaming is not one-to-one")
        self._d2w = d2w
        self._w2d = {w: d for d, w in d2w.items()}

    @property
    def wan_to_diffusers(self) -> dict[str, str]:
        """Original Wan name -> diffusers name (without ``transformer.``)."""
        if self._w2d is None:
            self._build_wan_names()
        return self._w2d  # type: ignore[return-value]

    @property
    def diffusers_to_wan(self) -> dict[str, str]:
        """Diffusers name (without ``transformer.``) -> original Wan name."""
        if self._d2w is None:
            self._build_wan_names()
        return self._d2w  # type: ignore[return-value]

    # ------------------------------------------------------------------ official -> ours
    def to_ours(self, key: str) -> KeyTarget | None:
        """Map an official key; ``None`` when it has no place in our architecture.

        The returned ``ours`` name is a candidate: callers check that our model has it
        (:func:`map_official_keys` does).
        """
        c = self.config
        if key.startswith(_WAN_OTHER_PREFIXES):
            return KeyTarget(WAN_OTHER, None)
        m = _RE_PCB_PROC.match(key)
        if m:
            block = int(m.group(1))
            if block >= c.num_pcb:
                return None  # the official replaced blocks >= PCB by nn.Identity
            return KeyTarget(ADAPTER_PCB, f"camera_adapters.{block}.{m.group(2)}")
        m = _RE_IRG.match(key)
        if m:
            layer, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if layer >= c.num_irg:
                return None
            if part == "x_agg":
                return KeyTarget(GLOBAL_BLOCKS, f"geometry.global_blocks.{layer}.{rest}")
            if part == "bicross_attention":
                return KeyTarget(BICROSS, f"interactions.{layer}.{rest}")
            block = c.num_pcb + layer
            if rest.startswith("cross_attn.processor."):
                return KeyTarget(ADAPTER_IRG, f"camera_adapters.{block}.{rest[len('cross_attn.processor.'):]}")
            wan_name = f"blocks.{block}.{rest}"
            diff = self.wan_to_diffusers.get(wan_name)
            return KeyTarget(WAN_IRG_COPY, f"transformer.{diff}" if diff else None, wan_name)
        if key.startswith(_OFFICIAL_CONTROL) and c.has_control_adapter:
            wan_name = key[len("pipe.dit."):]
            return KeyTarget(WAN_CONTROL, wan_name, wan_name)  # same name in the base files and ours
        if key.startswith("pipe.dit."):
            wan_name = key[len("pipe.dit."):]
            bm = _RE_WAN_BLOCK.match(wan_name)
            if bm and int(bm.group(1)) >= c.num_pcb:
                return None
            diff = self.wan_to_diffusers.get(wan_name)
            return KeyTarget(WAN_DIT, f"transformer.{diff}" if diff else None, wan_name)
        for off, ours, group in _VGGT_PREFIXES:
            if off.endswith("."):
                if key.startswith(off):
                    return KeyTarget(group, ours + key[len(off):])
            elif key == off:
                return KeyTarget(group, ours)
        return None

    # ------------------------------------------------------------------ ours -> official
    def to_official(self, key: str) -> str:
        """Official name of one of our state-dict keys (``transformer.*`` included).

        Raises ``KeyError`` for a key that has no official counterpart.
        """
        c = self.config
        if key.startswith(_WAN_CONTROL) and c.has_control_adapter:
            return "pipe.dit." + key
        if key.startswith("transformer."):
            wan_name = self.diffusers_to_wan[key[len("transformer."):]]
            bm = _RE_WAN_BLOCK.match(wan_name)
            if bm and int(bm.group(1)) >= c.num_pcb:
                return f"IRGBlock.{int(bm.group(1)) - c.num_pcb}.x_dit.{bm.group(2)}"
            return f"pipe.dit.{wan_name}"
        m = _RE_OUR_INDEXED.match(key)
        if m:
            kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "camera_adapters":
                if idx < c.num_pcb:
                    return f"pipe.dit.blocks.{idx}.cross_attn.processor.{rest}"
                return f"IRGBlock.{idx - c.num_pcb}.x_dit.cross_attn.processor.{rest}"
            if kind == "interactions":
                return f"IRGBlock.{idx}.bicross_attention.{rest}"
            return f"IRGBlock.{idx}.x_agg.{rest}"
        for off, ours, _ in _VGGT_PREFIXES:
            if ours.endswith("."):
                if key.startswith(ours):
                    return off + key[len(ours):]
            elif key == ours:
                return off
        raise KeyError(f"{key}: no official counterpart")


# ------------------------------------------------------------------------------ mapping
@dataclass
class GroupCount:
    """Keys and parameters of one group."""

    keys: int = 0
    params: int = 0


@dataclass
class MappingResult:
    """Outcome of mapping a set of official keys onto our model (no tensors involved).

    Attributes:
        fantasyworld: official key -> our key, FantasyWorld modules (go into our checkpoint).
        wan: official key -> target, Wan DiT tensors (compared with the Wan base).
        wan_other: official keys of the text encoder / image encoder / VAE (not converted).
        unmapped: official keys with no place in our model (with the reason).
        shape_errors: official keys whose shape differs from ours.
        missing: our checkpoint keys that no official key provides.
        missing_compat_only: the subset of ``missing`` that is compatibility-only (no path
            to any output: the unused CamTokenProjector and camera-head trunk modulation).
        wan_not_in_official: our ``transformer.*`` keys no official key provides (they come
            from the Wan base directory only).
        groups: per group, keys and parameters.
    """

    fantasyworld: dict[str, str] = field(default_factory=dict)
    wan: dict[str, KeyTarget] = field(default_factory=dict)
    wan_other: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    shape_errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_compat_only: list[str] = field(default_factory=list)
    wan_not_in_official: list[str] = field(default_factory=list)
    groups: dict[str, GroupCount] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every official key has a place and every needed key of ours is given."""
        return not (self.unmapped or self.shape_errors or set(self.missing) - set(self.missing_compat_only))

    def summary(self) -> str:
        """One line per group: keys and parameters (millions)."""
        lines = []
        for name, title in GROUP_TITLES.items():
            g = self.groups.get(name)
            if g and g.keys:
                lines.append(f"  {g.keys:5d} keys {g.params / 1e6:10.2f}M  {title}")
        return "\n".join(lines)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def our_reference_shapes(config: FantasyWorldConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]],
                                                               list[str]]:
    """Build our model on the meta device and return ``(checkpoint key -> shape for stage 2,
    Wan base key -> shape (``transformer.*`` and ``control_adapter.*``), compatibility-only
    checkpoint keys)``."""
    from fantasyworld.models.fantasyworld import FantasyWorldModel

    model = FantasyWorldModel(config, device="meta")
    state = model.state_dict()
    ckpt = {k: tuple(state[k].shape) for k in model.stage_state_keys(2)}
    wan = {k: tuple(v.shape) for k, v in state.items() if k.startswith(("transformer.", _WAN_CONTROL))}
    compat = [f"geometry.{n}" for n in model.geometry.compatibility_only_parameters()]
    return ckpt, wan, compat


def map_official_keys(
    shapes: Mapping[str, Sequence[int]],
    config: FantasyWorldConfig,
    keymap: OfficialKeyMap | None = None,
    reference: tuple[dict, dict, list] | None = None,
) -> MappingResult:
    """Map official keys (with their shapes) onto our model built from ``config``.

    Args:
        shapes: official key -> shape (a state dict's tensors' shapes, or the manifest).
        config: our architecture.
        keymap: reuse a key map (built from ``config`` if ``None``).
        reference: output of :func:`our_reference_shapes` (computed if ``None``).
    """
    keymap = keymap or OfficialKeyMap(config)
    ckpt, wan, compat = reference or our_reference_shapes(config)
    res = MappingResult(groups={g: GroupCount() for g in GROUP_TITLES})
    given_ours: set[str] = set()
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        target = keymap.to_ours(key)
        if target is None:
            res.unmapped.append(f"{key} (no counterpart in our architecture)")
            continue
        if target.group == WAN_OTHER:
            res.wan_other.append(key)
        else:
            table = wan if target.group in WAN_GROUPS else ckpt
            if target.ours is None or target.ours not in table:
                res.unmapped.append(f"{key} (-> {target.ours or target.wan_name}, which our model lacks)")
                continue
            if table[target.ours] != shape:
                res.shape_errors.append(f"{key} -> {target.ours}: official {shape} vs ours {table[target.ours]}")
                continue
            if target.ours in given_ours:
                res.unmapped.append(f"{key} (-> {target.ours}, already given by another key)")
                continue
            given_ours.add(target.ours)
            if target.group in WAN_GROUPS:
                res.wan[key] = target
            else:
                res.fantasyworld[key] = target.ours
        count = res.groups[target.group]
        count.keys += 1
        count.params += _numel(shape)
    res.missing = sorted(set(ckpt) - given_ours)
    res.missing_compat_only = sorted(set(res.missing) & set(compat))
    res.wan_not_in_official = sorted(set(wan) - given_ours)
    return res


# ------------------------------------------------------------------------------ manifest
def load_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"key", "shape", "dtype", "group", "component", ...}`` of the manifest."""
    rows = []
    with Path(path).open() as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def manifest_meta_state(rows: Iterable[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Meta tensors (no memory) with the manifest's shapes and dtypes."""
    out = {}
    for row in rows:
        dtype = getattr(torch, str(row.get("dtype", "float32")), torch.float32)
        out[row["key"]] = torch.empty(tuple(row["shape"]), dtype=dtype, device="meta")
    return out
