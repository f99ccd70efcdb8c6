"""The released FantasyWorld-Wan2.1-I2V-14B-480P weights: key mapping, converter and the
official inference's numeric quirks (compatibility switch).

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
=====================================================  =============================================

The converter never executes pickled code: ``model.pth`` is read with
``torch.load(weights_only=True)`` (memory-mapped when the file is in the zip format), so a
file that needs anything beyond tensors and plain containers is refused.

The Wan weights are not part of a FantasyWorld checkpoint. The official file carries
copies of the IRG Wan blocks (``IRGBlock.i.x_dit``; ~9.7B parameters); the converter
compares every one of them (and any ``pipe.dit`` tensor present) with the Wan base
weights and refuses when one differs, because a fine-tuned backbone is a different
model. With ``backbone_override=True`` the differing tensors are written next to the
checkpoint as ``wan_override.safetensors`` (diffusers names) instead, to be applied with
:func:`apply_backbone_override` after loading the base transformer.

Compatibility quirks of the official inference (used for converted checkpoints, whose
``config.json`` has ``official_compat=True``); see :func:`official_camera_inputs`:

* Plücker intrinsics are multiplied by ``W``/``H`` a second time
  (``plucker_rays(..., legacy_official_intrinsics=True)``), after a round trip through
  VGGT's pose encoding that puts the principal point at ``(W/2, H/2)``;
* camera JSON: ``cameras_interp`` camera-to-world, ``focal_length`` in pixels, centre
  ``((W-1)/2, (H-1)/2)`` (:func:`fantasyworld.geometry.camera_io.read_official_json`);
* translations of the first-frame-relative cameras are divided by a scene scale, the
  mean distance (95th-percentile outliers removed) of the first frame's unprojected
  depth to the camera (:func:`official_scene_scale`); the official estimates that depth
  with MoGe, here the depth source is pluggable (a callable, a depth map or a given
  scale).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.wan_loading import (
    CheckpointError,
    _safetensors_files,
    describe_key_mismatch,
    detect_layout,
    diffusers_keys_to_wan,
    read_wan_config,
)

#: Our preset that matches the released model.
OFFICIAL_PRESET = "wan2.1-i2v-14b-480p"
#: File name of the key manifest of the official model object.
MANIFEST_NAME = "official_fantasyworld_wan21_i2v_14b_keys.jsonl"
#: Files written by the converter.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "fantasyworld.safetensors"
OVERRIDE_FILE = "wan_override.safetensors"
REPORT_FILE = "conversion_report.json"

# ------------------------------------------------------------------------------ groups
WAN_DIT = "wan_dit"
WAN_IRG_COPY = "wan_irg_copy"
WAN_OTHER = "wan_other"
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
WAN_GROUPS = (WAN_DIT, WAN_IRG_COPY)

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
    transformer key -> shape, compatibility-only checkpoint keys)``."""
    from fantasyworld.models.fantasyworld import FantasyWorldModel

    model = FantasyWorldModel(config, device="meta")
    state = model.state_dict()
    ckpt = {k: tuple(state[k].shape) for k in model.stage_state_keys(2)}
    wan = {k: tuple(v.shape) for k, v in state.items() if k.startswith("transformer.")}
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


# ------------------------------------------------------------------------------ reading
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "weights")


def _classify_load_error(path: Path, exc: Exception) -> OfficialCheckpointError:
    msg = str(exc)
    glob = re.search(r"GLOBAL ([\w.]+)", msg)
    if glob:
        return OfficialCheckpointError(
            f"{path}: refusing to load: the file contains pickled Python objects ({glob.group(1)}) that would "
            "execute code when unpickled; a weights file needs only tensors. Re-save it as a plain state dict "
            "of tensors (or safetensors) from a trusted environment."
        )
    return OfficialCheckpointError(
        f"{path}: not a readable PyTorch weights file (corrupted, truncated or not a checkpoint): "
        f"{type(exc).__name__}: {msg.splitlines()[0] if msg else ''}".rstrip()
    )


def _looks_like_legacy_torch(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2)
    return head == b"\x80\x02"  # pickle protocol 2, as torch.save(_use_new_zipfile_serialization=False) writes


def read_official_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read ``model.pth`` safely.

    Uses ``torch.load(weights_only=True)`` (never runs pickled code), memory-mapped for the
    zip format so tensors are paged in on demand. A dict nested under one of
    ``state_dict``/``model``/``module``/``model_state_dict``/``weights`` is unwrapped and a
    common ``module.`` prefix (DDP) removed.

    Returns:
        ``(state dict, notes)``; notes describe any unwrapping.
    Raises:
        OfficialCheckpointError: missing file, corrupted file, pickled objects beyond
            tensors, or content that is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: file does not exist")
    is_zip = zipfile.is_zipfile(path)
    with path.open("rb") as fh:
        zip_header = fh.read(4) == b"PK\x03\x04"
    if zip_header and not is_zip:
        raise OfficialCheckpointError(f"{path}: corrupted or truncated checkpoint (a zip-format torch file whose "
                                      "central directory is missing); download it again")
    if not is_zip and not _looks_like_legacy_torch(path):
        raise OfficialCheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip nor the legacy torch.save "
                                      "format); the file is corrupted or of another kind")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError,
            ImportError, TypeError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise _classify_load_error(path, exc) from exc
    notes: list[str] = []
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if inner:
            others = sorted(str(k) for k in obj if k != inner[0])
            notes.append(f"using the state dict under {inner[0]!r}" + (f"; ignoring {others}" if others else ""))
            obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), "
                                      f"got {type(obj).__name__}")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str))
    if bad:
        raise OfficialCheckpointError(f"{path}: entries that are not named tensors: "
                                      + describe_key_mismatch([], bad).split(": ", 1)[1])
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the 'module.' prefix")
    if not state:
        raise OfficialCheckpointError(f"{path}: the state dict is empty")
    return state, notes


# ------------------------------------------------------------------------------ Wan base
class WanBaseReader:
    """Lazy per-tensor access to the Wan base weights of a backbone directory (either
    layout, see :mod:`fantasyworld.models.wan_loading`), looked up by original Wan name.
    Tensors are read one at a time (safetensors, memory-mapped)."""

    def __init__(self, root: str | Path, keymap: OfficialKeyMap) -> None:
        self.root = Path(root)
        self.layout, folder = detect_layout(self.root)
        self.keymap = keymap
        self._index: dict[str, Path] = {}
        for f in _safetensors_files(folder):
            try:
                with safe_open(str(f), framework="pt", device="cpu") as fh:
                    for k in fh.keys():
                        self._index[k] = f
            except Exception as exc:  # safetensors raises several error types
                raise CheckpointError(f"{f}: unreadable safetensors file ({exc})") from exc
        self._handles: dict[Path, Any] = {}

    def _file_key(self, wan_name: str) -> str | None:
        if self.layout == "wan":
            return wan_name
        return self.keymap.wan_to_diffusers.get(wan_name)

    def has(self, wan_name: str) -> bool:
        key = self._file_key(wan_name)
        return key is not None and key in self._index

    def get(self, wan_name: str) -> torch.Tensor:
        """The base tensor stored under original Wan name ``wan_name``."""
        key = self._file_key(wan_name)
        if key is None or key not in self._index:
            raise KeyError(wan_name)
        f = self._index[key]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt", device="cpu")
        return self._handles[f].get_tensor(key)

    def close(self) -> None:
        self._handles.clear()


def tensors_equal_at_common_precision(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    """Exact equality after casting both to the less precise of their dtypes (the official
    file is bf16, the Wan base fp32: a bf16 copy of the base compares equal).

    Returns ``(equal, max abs difference in float32)``.
    """
    if a.shape != b.shape:
        return False, float("inf")
    if a.dtype != b.dtype:
        low = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(b.dtype).eps else b.dtype
        a, b = a.to(low), b.to(low)
    if torch.equal(a, b):
        return True, 0.0
    return False, float((a.float() - b.float()).abs().max())


@dataclass
class BackboneDifference:
    """One official Wan tensor that differs from the Wan base (or is absent there)."""

    official_key: str
    ours: str
    max_abs_diff: float
    reason: str = "differs"

    def __str__(self) -> str:
        if self.reason != "differs":
            return f"{self.official_key} ({self.reason})"
        return f"{self.official_key} (max |diff| {self.max_abs_diff:.3g})"


def compare_backbone(
    state: Mapping[str, torch.Tensor], wan_targets: Mapping[str, KeyTarget], reader: WanBaseReader
) -> list[BackboneDifference]:
    """Compare each official Wan DiT tensor with the base; return those that differ."""
    diffs = []
    for key, target in wan_targets.items():
        assert target.wan_name is not None and target.ours is not None
        if not reader.has(target.wan_name):
            diffs.append(BackboneDifference(key, target.ours, float("inf"), "absent from the Wan base files"))
            continue
        equal, delta = tensors_equal_at_common_precision(state[key], reader.get(target.wan_name))
        if not equal:
            diffs.append(BackboneDifference(key, target.ours, delta))
    return diffs


def check_wan_config(wan_dir: str | Path, config: FantasyWorldConfig) -> None:
    """Raise :class:`OfficialCheckpointError` unless the Wan dir's transformer is the preset's."""
    cfg = read_wan_config(wan_dir)
    diff = [f"{k}: backbone {cfg.get(k)!r} vs preset {v!r}" for k, v in config.wan.items()
            if k in cfg and (tuple(v) if isinstance(v, list) else v) != cfg.get(k)]
    if diff:
        raise OfficialCheckpointError(f"{wan_dir}: the Wan transformer is not the one the official model was "
                                      f"built on: " + "; ".join(diff))


# ------------------------------------------------------------------------------ convert
@dataclass
class ConversionReport:
    """What :func:`convert_official` did."""

    out_dir: Path
    mapping: MappingResult
    notes: list[str] = field(default_factory=list)
    filled_compat_only: list[str] = field(default_factory=list)
    backbone_checked: int = 0
    backbone_overridden: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        m = self.mapping
        return {
            "out_dir": str(self.out_dir),
            "groups": {g: {"keys": c.keys, "params": c.params} for g, c in m.groups.items() if c.keys},
            "converted_keys": len(m.fantasyworld),
            "wan_tensors_checked_equal_to_base": self.backbone_checked - len(self.backbone_overridden),
            "wan_tensors_overridden": self.backbone_overridden,
            "not_converted_wan_components": len(m.wan_other),
            "filled_compatibility_only_keys": self.filled_compat_only,
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        lines = [f"converted {len(self.mapping.fantasyworld)} official keys into {self.out_dir}",
                 self.mapping.summary()]
        lines.append(f"  Wan DiT tensors compared with the base: {self.backbone_checked} "
                     f"({len(self.backbone_overridden)} differ, written as an override)")
        if self.filled_compat_only:
            lines.append(f"  compatibility-only keys absent from the file, zero-filled: {len(self.filled_compat_only)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fail_mapping(source: Path, res: MappingResult) -> None:
    parts = []
    if res.unmapped:
        text = describe_key_mismatch([], res.unmapped, limit=20)
        parts.append(text.replace("unexpected keys", "unmapped official keys"))
    if res.shape_errors:
        parts.append(describe_key_mismatch([], [], res.shape_errors, limit=20))
    hard_missing = sorted(set(res.missing) - set(res.missing_compat_only))
    if hard_missing:
        parts.append(describe_key_mismatch(hard_missing, [], limit=20).replace(
            "missing keys", "keys of our model that no official key provides"))
    raise OfficialCheckpointError(f"{source}: cannot convert: " + "; ".join(parts))


def _atomic_publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    backup = None
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif overwrite:
            backup = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(backup)
        else:
            raise OfficialCheckpointError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite)")
    tmp.rename(out_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def convert_official(
    model_pth: str | Path,
    wan_dir: str | Path,
    out_dir: str | Path,
    *,
    preset: str = OFFICIAL_PRESET,
    config: FantasyWorldConfig | None = None,
    backbone_override: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert the released ``model.pth`` into our checkpoint directory.

    Writes ``out_dir/config.json`` (the preset with ``official_compat=True``),
    ``out_dir/fantasyworld.safetensors`` (stage-2 keys, :meth:`FantasyWorldModel.save_fantasyworld`
    format, loadable with ``load_fantasyworld(path, stage=2)``), ``out_dir/conversion_report.json``
    and, only with ``backbone_override``, ``out_dir/wan_override.safetensors``.

    Args:
        model_pth: the official weights (a state dict saved with ``torch.save``).
        wan_dir: the Wan2.1-I2V-14B-480P directory (original or diffusers layout); the
            official Wan block copies are compared with it tensor by tensor.
        out_dir: output directory; must not exist or be empty unless ``overwrite``.
        preset: our preset (the structure must match the official model).
        config: an explicit config instead of ``preset`` (tests use tiny ones);
            ``official_compat`` is set on it.
        backbone_override: when official Wan tensors differ from the base, write them as
            an override file instead of refusing.
        dtype: cast the FantasyWorld weights (default: keep the file's dtype, bf16).
        overwrite: replace an existing non-empty ``out_dir``.
        log: progress callback (e.g. ``print``).

    Raises:
        OfficialCheckpointError: unreadable/unsafe file, unmapped keys on either side, shape
            mismatches, a backbone that differs from the base (without
            ``backbone_override``), a Wan dir of another architecture. Nothing is written then.
    """
    t0 = time.time()
    say = log or (lambda _msg: None)
    model_pth, out_dir = Path(model_pth), Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OfficialCheckpointError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite)")
    config = (config or get_preset(preset)).replace(official_compat=True)

    say(f"reading {model_pth} (weights only, memory-mapped)")
    state, notes = read_official_state_dict(model_pth)
    keymap = OfficialKeyMap(config)
    reference = our_reference_shapes(config)
    res = map_official_keys({k: v.shape for k, v in state.items()}, config, keymap, reference)
    if not res.ok:
        _fail_mapping(model_pth, res)
    say(f"mapped {len(res.fantasyworld)} FantasyWorld keys, {len(res.wan)} Wan DiT keys, "
        f"{len(res.wan_other)} text/image encoder and VAE keys (not converted)")
    if res.wan_other:
        notes.append(f"{len(res.wan_other)} text encoder / image encoder / VAE tensors in the file were not "
                     "converted or compared; our inference loads those from the Wan directory")

    check_wan_config(wan_dir, config)
    reader = WanBaseReader(wan_dir, keymap)
    try:
        say(f"comparing {len(res.wan)} Wan DiT tensors with the base in {wan_dir}")
        diffs = compare_backbone(state, res.wan, reader)
    finally:
        reader.close()
    if diffs and not backbone_override:
        shown = describe_key_mismatch([str(d) for d in diffs], [], limit=20).split(": ", 1)[1]
        raise OfficialCheckpointError(
            f"{model_pth}: {len(diffs)} Wan backbone tensors differ from the base weights in {wan_dir} (a fine-tuned "
            f"backbone is a different model; refusing to drop it): {shown}. Check --wan-dir, or pass "
            "--backbone-override to write them as wan_override.safetensors next to the checkpoint.")
    absent = [d for d in diffs if d.reason != "differs"]
    if absent:
        notes.append(f"{len(absent)} official Wan tensors are absent from the base files: written as an override")

    ours_state: dict[str, torch.Tensor] = {res.fantasyworld[k]: state[k] for k in res.fantasyworld}
    fill_dtype = next(iter(ours_state.values())).dtype if ours_state else torch.float32
    ckpt_shapes = reference[0]
    for key in res.missing_compat_only:
        ours_state[key] = torch.zeros(ckpt_shapes[key], dtype=fill_dtype)
    if res.missing_compat_only:
        notes.append(f"zero-filled {len(res.missing_compat_only)} compatibility-only keys absent from the file "
                     "(no path to any output): " + ", ".join(res.missing_compat_only[:8]))
    if dtype is not None:
        ours_state = {k: v.to(dtype) for k, v in ours_state.items()}
    override = {d.ours[len("transformer."):]: state[d.official_key].contiguous() for d in diffs}

    report = ConversionReport(out_dir=out_dir, mapping=res, notes=notes, filled_compat_only=res.missing_compat_only,
                              backbone_checked=len(res.wan), backbone_overridden=[d.official_key for d in diffs])
    _write_checkpoint(config, ours_state, override, out_dir, overwrite, model_pth, report, say)
    report.seconds = time.time() - t0
    return report


def _write_checkpoint(
    config: FantasyWorldConfig,
    ours_state: dict[str, torch.Tensor],
    override: dict[str, torch.Tensor],
    out_dir: Path,
    overwrite: bool,
    source: Path,
    report: ConversionReport,
    say: Callable[[str], None],
) -> None:
    from fantasyworld.models.fantasyworld import FantasyWorldModel

    model = FantasyWorldModel(config, device="meta")
    expected = set(model.stage_state_keys(2))
    if set(ours_state) != expected:  # guaranteed by the mapping; keep the invariant explicit
        raise OfficialCheckpointError(describe_key_mismatch(sorted(expected - set(ours_state)),
                                                            sorted(set(ours_state) - expected)))
    model.load_state_dict(ours_state, strict=False, assign=True)
    created: list[Path] = []
    parent = out_dir.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        say(f"writing {len(ours_state)} tensors to {out_dir / WEIGHTS_FILE}")
        config.save(tmp / CONFIG_FILE)
        model.save_fantasyworld(tmp / WEIGHTS_FILE, stage=2,
                                metadata={"source": "official FantasyWorld-Wan2.1-I2V-14B-480P",
                                          "source_file": source.name, "official_compat": "true"})
        if override:
            save_file(override, str(tmp / OVERRIDE_FILE), metadata={"format": "fantasyworld-wan-override",
                                                                    "naming": "diffusers"})
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        with safe_open(str(tmp / WEIGHTS_FILE), framework="pt") as fh:  # read back the key set
            written = set(fh.keys())
        if written != expected:
            raise OfficialCheckpointError(f"{tmp / WEIGHTS_FILE}: written keys differ from the model's")
        _atomic_publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # parents we made, innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise


# ------------------------------------------------------------------------------ inverse
def ours_to_official(
    fantasyworld_state: Mapping[str, torch.Tensor],
    config: FantasyWorldConfig,
    wan_state: Mapping[str, torch.Tensor] | None = None,
    wan_blocks: str = "irg",
) -> dict[str, torch.Tensor]:
    """Our weights -> the official key layout (the inverse of the converter).

    Args:
        fantasyworld_state: our FantasyWorld keys (``geometry.*``, ``interactions.*`` ...).
        config: the architecture.
        wan_state: optional Wan transformer weights in diffusers naming, with or without the
            ``transformer.`` prefix (e.g. ``model.transformer.state_dict()``).
        wan_blocks: which Wan tensors to emit: ``"irg"`` (the ``IRGBlock.N.x_dit`` copies,
            as in the released ``model.pth``), ``"all"`` (plus ``pipe.dit.*``) or ``"none"``.
    """
    if wan_blocks not in ("irg", "all", "none"):
        raise ValueError(f"wan_blocks must be 'irg', 'all' or 'none', got {wan_blocks!r}")
    keymap = OfficialKeyMap(config)
    out = {keymap.to_official(k): v for k, v in fantasyworld_state.items()}
    if wan_state is not None and wan_blocks != "none":
        for k, v in wan_state.items():
            name = keymap.to_official(k if k.startswith("transformer.") else f"transformer.{k}")
            if wan_blocks == "all" or name.startswith("IRGBlock."):
                out[name] = v
    return out


def apply_backbone_override(checkpoint_dir: str | Path, transformer: torch.nn.Module) -> list[str]:
    """Copy ``wan_override.safetensors`` (if the converter wrote one) into a loaded Wan
    transformer in place; returns the overridden names (empty when there is no override)."""
    path = Path(checkpoint_dir) / OVERRIDE_FILE
    if not path.is_file():
        return []
    override = load_file(str(path))
    params = dict(transformer.named_parameters())
    missing = sorted(set(override) - set(params))
    bad = [f"{k} ({tuple(v.shape)} vs {tuple(params[k].shape)})" for k, v in override.items()
           if k in params and v.shape != params[k].shape]
    if missing or bad:
        raise CheckpointError(f"{path}: " + describe_key_mismatch([], missing, bad))
    with torch.no_grad():
        for k, v in override.items():
            params[k].copy_(v.to(params[k].dtype))
    return sorted(override)


# ------------------------------------------------------------------------------ quirks
#: A depth estimator: RGB image ``(H, W, 3)`` uint8 -> metric depth ``(H', W')``; non-finite
#: or non-positive values are invalid (MoGe-2 in the official inference).
DepthEstimator = Callable[[np.ndarray], np.ndarray]


def official_scene_scale(depth: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor,
                         quantile: float = 0.95) -> float:
    """Scene scale as the official inference computes it from the first frame's depth.

    Each pixel ``(u, v)`` (integer index, no half-pixel offset, as the official unprojects)
    is unprojected with ``K`` at depth ``d``; the scale is the mean distance of the points
    to the camera over pixels with ``d > 1e-8`` and distance at most the ``quantile``
    (linear interpolation) of those distances, divided by ``count + 1e-3`` and clamped to
    ``[1e-6, 1e6]``.

    Note: the official passes the depth at the input image's own resolution together with
    the intrinsics of the generation resolution; to reproduce its numbers pass exactly
    that, to get a geometrically consistent scale pass ``K`` for the depth's resolution.
    """
    d = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float64)
    k = np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    d = np.where(np.isfinite(d), d, 0.0)
    h, w = d.shape
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x = (u - k[0, 2]) * d / k[0, 0]
    y = (v - k[1, 2]) * d / k[1, 1]
    dist = np.sqrt(x * x + y * y + d * d)
    valid = d > 1e-8
    if not valid.any():
        return 1e-6
    thr = np.quantile(dist[valid], quantile)
    keep = valid & (dist <= thr)
    scale = float((dist * keep).sum() / (keep.sum() + 1e-3))
    return float(min(max(scale, 1e-6), 1e6))


def official_translation_scale(
    K: np.ndarray | torch.Tensor,
    *,
    scale: float | None = None,
    depth: np.ndarray | torch.Tensor | None = None,
    image: np.ndarray | None = None,
    depth_estimator: DepthEstimator | None = None,
) -> float:
    """The factor the official divides camera translations by, from exactly one source:
    a given ``scale``, a first-frame ``depth`` map, or ``depth_estimator(image)``.
    (The official's ``--using_scale False`` corresponds to ``scale=1.0``.)"""
    given = [s is not None for s in (scale, depth, depth_estimator)]
    if sum(given) != 1:
        raise ValueError("give exactly one of scale, depth, or depth_estimator (with image)")
    if scale is not None:
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        return float(scale)
    if depth is None:
        if image is None:
            raise ValueError("depth_estimator needs the first-frame image")
        depth = depth_estimator(image)  # type: ignore[misc]
    return official_scene_scale(depth, K[0] if np.ndim(K) == 3 else K)


def official_camera_inputs(
    w2c: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor, height: int, width: int, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras and intrinsics to feed :func:`~fantasyworld.geometry.plucker.plucker_rays` with
    ``legacy_official_intrinsics=True`` so the rays equal the official inference's.

    The official path: poses made relative to frame 0 (``w2c_i @ inverse(w2c_0)``),
    translations divided by ``scale``, then a round trip through VGGT's pose encoding
    (which resets the principal point to ``(W/2, H/2)``), then intrinsics multiplied by
    ``W``/``H`` (done by the legacy flag).

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera (OpenCV), e.g. from ``read_official_json``.
        K: ``(T, 3, 3)`` or ``(3, 3)`` pixel intrinsics at ``(height, width)``.
        scale: translation scale (:func:`official_translation_scale`).
    Returns:
        ``(w2c_rel (T, 4, 4), K_official (T, 3, 3))`` float32.
    """
    w = torch.as_tensor(np.asarray(w2c), dtype=torch.float64)
    k = torch.as_tensor(np.asarray(K), dtype=torch.float64)
    if k.ndim == 2:
        k = k.expand(w.shape[0], 3, 3)
    rel = w @ torch.linalg.inv(w[:1])
    rel[:, :3, 3] = rel[:, :3, 3] / float(scale)
    rel[0] = torch.eye(4, dtype=rel.dtype)
    # pose-encoding round trip: fov from fx/fy, back to focal lengths; centre (W/2, H/2)
    fov_w = 2.0 * torch.atan((width / 2.0) / k[:, 0, 0])
    fov_h = 2.0 * torch.atan((height / 2.0) / k[:, 1, 1])
    k_off = torch.zeros_like(k)
    k_off[:, 0, 0] = (width / 2.0) / torch.tan(fov_w / 2.0)
    k_off[:, 1, 1] = (height / 2.0) / torch.tan(fov_h / 2.0)
    k_off[:, 0, 2] = width / 2.0
    k_off[:, 1, 2] = height / 2.0
    k_off[:, 2, 2] = 1.0
    return rel.float(), k_off.float()


def official_plucker(
    w2c: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor, height: int, width: int, scale: float = 1.0
) -> torch.Tensor:
    """Plücker rays ``(1, T, 6, H, W)`` exactly as the official inference builds them
    (see :func:`official_camera_inputs`)."""
    from fantasyworld.geometry.plucker import plucker_rays

    rel, k = official_camera_inputs(w2c, K, height, width, scale)
    return plucker_rays(rel[None], k[None], height, width, relative_to_first=True, legacy_official_intrinsics=True)


__all__ = [
    "OFFICIAL_PRESET", "MANIFEST_NAME", "CONFIG_FILE", "WEIGHTS_FILE", "OVERRIDE_FILE", "REPORT_FILE",
    "OfficialCheckpointError", "KeyTarget", "OfficialKeyMap", "MappingResult", "GroupCount", "GROUP_TITLES",
    "map_official_keys", "our_reference_shapes", "load_manifest", "manifest_meta_state",
    "read_official_state_dict", "WanBaseReader", "compare_backbone", "check_wan_config", "BackboneDifference",
    "tensors_equal_at_common_precision", "ConversionReport", "convert_official", "ours_to_official",
    "apply_backbone_override", "DepthEstimator", "official_scene_scale", "official_translation_scale",
    "official_camera_inputs", "official_plucker",
]
