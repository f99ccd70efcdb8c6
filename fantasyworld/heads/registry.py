"""The heads registry: one :class:`HeadSpec` per prediction head, the one place a head is declared.

Every consumer reads this table instead of naming heads: the geometry branch builds and runs
each registered head (:class:`~fantasyworld.models.geometry_branch.GeometryBranch`), the model
makes each one an FSDP unit (``FantasyWorldModel._fsdp_units``), the training losses sum the
registered loss terms with their weights (:mod:`fantasyworld.training.losses`), the training log
prints their short names, the sampler's default ``heads`` is "every head", and a generation
result keeps and saves each head's arrays (:class:`~fantasyworld.inference.result.GenerationResult`).

Built-in heads, in registration order (the order they are built, run, summed and logged):

========  ===============  ==================================================  =====================  ======
name      module           outputs                                             loss terms             weight
========  ===============  ==================================================  =====================  ======
depth     ``depth_head``   ``depth``, ``depth_conf`` (B, T, H, W)              ``loss_depth``         1
points    ``point_head``   ``world_points`` (B, T, H, W, 3), ``..._conf``      ``loss_pmap``          1
camera    ``camera_head``  ``pose_enc_list``, ``pose_enc`` (B, T, 9), ``w2c``  ``loss_camera`` (+ T,  3
                           (B, T, 4, 4), ``intrinsics`` (B, T, 3, 3)           R, FL parts)
========  ===============  ==================================================  =====================  ======

The objective is ``L = L_diff + lambda * sum_heads weight * loss_keys[0]`` (paper:
``L_diff + lambda (L_depth + L_pmap + 3 L_camera)``). Module names equal the official
release's (``vggt.depth_head`` ...), so its weights load unchanged. To add a head, call
:func:`register_head` with a new :class:`HeadSpec` before the model is built
(docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fantasyworld.geometry.pose_encoding import decode_pose
from fantasyworld.heads.camera_head import CameraHead
from fantasyworld.heads.dpt_head import DPTHead
from fantasyworld.heads.losses import camera_loss_terms, depth_loss, point_loss

__all__ = [
    "ALL_HEADS", "HEADS", "HeadInputs", "HeadSpec", "HeadTargets", "head_names", "head_spec", "register_head",
    "resolve_heads",
]

#: ``heads=ALL_HEADS`` asks the model/sampler for every head it has (``None`` or ``()``: none).
ALL_HEADS = "all"


@dataclass(frozen=True)
class HeadInputs:
    """What the geometry branch hands to a head.

    Attributes:
        intermediates: the DPT inputs, each ``(B, F, P, 2D)`` (concatenated frame/global
            tokens of the IRG layers in ``config.dpt_layers`` order; level 0 is the finest).
        last: ``(B, F, P, 2D)`` the last IRG layer's output (token 0 of each frame is the camera token).
        image_hw: pixel size ``(H, W) = 16 (h, w)``.
        config: the model config (:class:`~fantasyworld.models.config.FantasyWorldConfig`).
        pixel_frames: optional ``(B, K)`` int64 pixel-frame indices: pixel-rate heads predict
            only these frames (training's frame subset, ``loss.pixel_frames_per_step``); None: all.
    """

    intermediates: list[torch.Tensor]
    last: torch.Tensor
    image_hw: tuple[int, int]
    config: Any
    pixel_frames: torch.Tensor | None = None

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Token grid ``(h, w)``."""
        return self.image_hw[0] // 16, self.image_hw[1] // 16


@dataclass(frozen=True)
class HeadTargets:
    """Ground truth of a batch as the heads' losses read it (normalised scene, fp32).

    Attributes:
        depth: ``(B, T, H, W)`` z-depth at unit scene scale (0 where invalid).
        points: ``(B, T, H, W, 3)`` points in camera-0 coordinates at unit scale (0 where invalid).
        w2c: ``(B, T, 4, 4)`` w2c relative to frame 0, unit scale.
        intrinsics: ``(B, T, 3, 3)`` pixel intrinsics at ``image_hw``.
        valid: ``(B, T, H, W)`` bool mask.
        image_hw: ``(H, W)`` of the maps.
        alpha: weight of the confidence regulariser ``-alpha log C``.
        per_sample: the losses return one value per sample, ``(B,)``, instead of the batch
            scalar (a head whose loss returns a scalar anyway is run one sample at a time by
            :func:`fantasyworld.training.losses.per_sample_losses`).
        camera_loss: the camera loss's per-component penalty, ``huber`` or ``l1``
            (:data:`~fantasyworld.heads.losses.CAMERA_LOSS_TYPES`).
    """

    depth: torch.Tensor
    points: torch.Tensor
    w2c: torch.Tensor
    intrinsics: torch.Tensor
    valid: torch.Tensor
    image_hw: tuple[int, int]
    alpha: float
    per_sample: bool = False
    camera_loss: str = "huber"


@dataclass(frozen=True)
class HeadSpec:
    """One prediction head.

    Attributes:
        name: the name in ``heads=`` selections (``"depth"``).
        module: attribute of the geometry branch holding the head (``"depth_head"``); the
            parameters are ``geometry.<module>.*`` and the module is one FSDP unit.
        build: ``(config, dim_in, patch_start_idx) -> nn.Module``; ``dim_in`` = 2D (the heads
            read concatenated frame/global tokens), ``patch_start_idx`` = special tokens per frame.
        run: ``(head, HeadInputs) -> {output key: tensor or list}``, the keys of ``outputs``.
        outputs: the keys the head fills in the model outputs; ``outputs[0]`` present means
            the head ran (the losses test it).
        loss: ``(model outputs, HeadTargets) -> {loss key: scalar}`` with the keys of ``loss_keys``
            (``(B,)`` per sample when ``HeadTargets.per_sample`` is set).
        loss_keys: logged loss terms; ``loss_keys[0]`` enters the objective, the others are parts.
        weight: weight of ``loss_keys[0]`` inside the geometry sum.
        short: progress-bar label of ``loss_keys[0]``.
        pixel_rate: outputs are per-pixel maps ``(B, T, H, W, ...)`` at the video resolution
            (such heads may hold a full-resolution stage that honours ``checkpoint_fusion``),
            else one value per frame ``(B, T, ...)``. Given ``HeadInputs.pixel_frames``, a
            pixel-rate head's outputs hold those ``K`` frames ``(B, K, H, W, ...)`` and its loss
            sees the targets of the same frames.
        frame_subset: ``run`` itself computes only ``HeadInputs.pixel_frames`` (the speed of the
            subset); a pixel-rate head without it runs on every frame and its outputs are sliced.
        result_keys: outputs a generation result keeps (batch item 0, numpy).
        archive: file written by the result with ``result_keys`` (``depth.npz``), or None.
        archive_dtype: ``"float16"`` (saturating at +-65504) or ``"float32"``.
    """

    name: str
    module: str
    build: Callable[[Any, int, int], nn.Module]
    run: Callable[[nn.Module, HeadInputs], dict[str, Any]]
    outputs: tuple[str, ...]
    loss: Callable[[dict[str, Any], HeadTargets], dict[str, torch.Tensor]]
    loss_keys: tuple[str, ...]
    weight: float = 1.0
    short: str = ""
    pixel_rate: bool = True
    frame_subset: bool = False
    result_keys: tuple[str, ...] = ()
    archive: str | None = None
    archive_dtype: str = "float32"

    def ran(self, outputs: dict[str, Any]) -> bool:
        """The head's outputs are in ``outputs`` (it was asked for)."""
        return outputs.get(self.outputs[0]) is not None


#: name -> spec, in registration order.
HEADS: dict[str, HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add ``spec`` to :data:`HEADS` (a name or loss key already taken is a ``ValueError``)."""
    if spec.name in HEADS:
        raise ValueError(f"head {spec.name!r} is already registered")
    taken = {k for s in HEADS.values() for k in (*s.outputs, *s.loss_keys)}
    if clash := taken & {*spec.outputs, *spec.loss_keys}:
        raise ValueError(f"head {spec.name!r}: output/loss keys {sorted(clash)} belong to another head")
    HEADS[spec.name] = spec
    return spec


def head_spec(name: str) -> HeadSpec:
    """The registered head ``name`` (an unknown name is a ``ValueError`` listing the heads)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; registered heads: {', '.join(HEADS)}")
    return HEADS[name]


def head_names() -> tuple[str, ...]:
    """Names of the registered heads, in registration order."""
    return tuple(HEADS)


def resolve_heads(heads: str | tuple[str, ...] | list[str] | None, available: tuple[str, ...]) -> tuple[str, ...]:
    """A ``heads=`` selection -> the names to run, in ``available`` order.

    ``ALL_HEADS`` selects all of ``available``; ``None`` or empty selects none; a name the
    model does not have is a ``ValueError``.
    """
    if heads is None:
        return ()
    if isinstance(heads, str):
        if heads != ALL_HEADS:
            raise ValueError(f"heads must be {ALL_HEADS!r}, None or a tuple of head names, got {heads!r}")
        return available
    unknown = [h for h in heads if h not in available]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; this model has: {', '.join(available)}")
    return tuple(h for h in available if h in heads)


# ------------------------------------------------------------------ built-in heads
def _dpt(output_dim: int, activation: str) -> Callable[[Any, int, int], nn.Module]:
    def build(config: Any, dim_in: int, patch_start_idx: int) -> nn.Module:
        return DPTHead(dim_in, output_dim=output_dim, activation=activation, conf_activation="expp1",
                       features=config.dpt_features, out_channels=tuple(config.dpt_out_channels),
                       patch_start_idx=patch_start_idx, intermediate_layer_idx=tuple(config.dpt_layers))
    return build


def _run_depth(head: nn.Module, x: HeadInputs) -> dict[str, torch.Tensor]:
    depth, conf = head(x.intermediates, x.grid_hw, frames=x.pixel_frames)
    return {"depth": depth, "depth_conf": conf}


def _run_points(head: nn.Module, x: HeadInputs) -> dict[str, torch.Tensor]:
    points, conf = head(x.intermediates, x.grid_hw, frames=x.pixel_frames)
    return {"world_points": points, "world_points_conf": conf}


def _build_camera(config: Any, dim_in: int, patch_start_idx: int) -> nn.Module:
    return CameraHead(dim_in=dim_in, trunk_depth=config.camera_head_depth, num_heads=config.geo_heads,
                      time_layout=config.camera_time_layout, trunk_modulated=config.camera_trunk_modulation)


def _run_camera(head: nn.Module, x: HeadInputs) -> dict[str, Any]:
    """``pose_enc_list`` (one (B, T, 9) per refinement iteration), ``pose_enc`` (the last) and
    the decoded cameras ``w2c`` (B, T, 4, 4) (OpenCV, relative to frame 0 as trained) and pixel
    ``intrinsics`` (B, T, 3, 3)."""
    pose_list = head(x.last[:, :, 0], num_iterations=x.config.camera_head_iters)
    w2c, k = decode_pose(pose_list[-1].float(), x.image_hw)
    return {"pose_enc_list": pose_list, "pose_enc": pose_list[-1], "w2c": w2c, "intrinsics": k}


register_head(HeadSpec(
    name="depth", module="depth_head", build=_dpt(2, "exp"), run=_run_depth, outputs=("depth", "depth_conf"),
    loss=lambda out, gt: {"loss_depth": depth_loss(out["depth"], out["depth_conf"], gt.depth, gt.valid, gt.alpha,
                                                   per_sample=gt.per_sample)},
    loss_keys=("loss_depth",), short="depth", frame_subset=True, result_keys=("depth", "depth_conf"),
    archive="depth.npz", archive_dtype="float16",
))
register_head(HeadSpec(
    name="points", module="point_head", build=_dpt(4, "inv_log"), run=_run_points,
    outputs=("world_points", "world_points_conf"),
    loss=lambda out, gt: {"loss_pmap": point_loss(out["world_points"], out["world_points_conf"], gt.points,
                                                  gt.valid, gt.alpha, per_sample=gt.per_sample)},
    loss_keys=("loss_pmap",), short="pmap", frame_subset=True, result_keys=("world_points", "world_points_conf"),
    archive="points.npz",
))
register_head(HeadSpec(
    name="camera", module="camera_head", build=_build_camera, run=_run_camera,
    outputs=("pose_enc_list", "pose_enc", "w2c", "intrinsics"),
    loss=lambda out, gt: camera_loss_terms(out["pose_enc_list"], gt.w2c, gt.intrinsics, gt.image_hw,
                                           per_sample=gt.per_sample, loss_type=gt.camera_loss),
    loss_keys=("loss_camera", "loss_T", "loss_R", "loss_FL"), weight=3.0, short="cam", pixel_rate=False,
    result_keys=("pose_enc",),
))
