"""FantasyWorld training losses (SPEC section 4): rectified-flow MSE plus the heads' geometry losses.

Output keys form the logging vocabulary: ``objective``, ``loss_diff`` (stage 2 only) and the
loss terms of each registered head (:mod:`fantasyworld.heads.registry`): ``loss_depth``,
``loss_pmap``, ``loss_camera`` and the camera parts ``loss_T``, ``loss_R``, ``loss_FL``.
Everything here runs in fp32 (inputs are upcast), whatever the autocast dtype.

* Ground truth is normalised once per batch by
  :func:`~fantasyworld.geometry.cameras.normalize_scene` (relative to camera 0, unit scene
  scale; re-exported here as :func:`normalize_geometry`).
* Each head that ran contributes its own loss (the per-head loss functions live in
  :mod:`fantasyworld.heads.losses`).
* ``objective = L_diff + lambda_geo * sum_heads weight_head * L_head`` (paper:
  ``L_diff + lambda (L_depth + L_pmap + 3 L_camera)``); stage 1 has no ``L_diff``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from fantasyworld.geometry.cameras import NormalizedScene, normalize_scene, scene_scale
from fantasyworld.heads.losses import (
    CAMERA_LOSS_GAMMA,
    CAMERA_PART_WEIGHTS,
    camera_loss,
    camera_loss_terms,
    depth_loss,
    point_loss,
)
from fantasyworld.heads.registry import HEADS, HeadTargets

__all__ = [
    "CAMERA_LOSS_GAMMA",
    "CAMERA_LOSS_WEIGHT_IN_TOTAL",
    "CAMERA_PART_WEIGHTS",
    "NormalizedGeometry",
    "camera_loss",
    "camera_loss_terms",
    "compute_losses",
    "loss_keys",
    "per_sample_losses",
    "depth_loss",
    "diffusion_loss",
    "normalize_geometry",
    "normalize_geometry_scale",
    "point_loss",
    "total_loss",
]

CAMERA_LOSS_WEIGHT_IN_TOTAL = HEADS["camera"].weight
"""Paper: ``L = L_diff + lambda * (L_depth + L_pmap + 3 * L_camera)``; the camera head's registry weight."""

#: the scene normalisation of the targets (one implementation, in :mod:`fantasyworld.geometry.cameras`)
NormalizedGeometry = NormalizedScene
normalize_geometry = normalize_scene
normalize_geometry_scale = scene_scale


def diffusion_loss(pred_flow: torch.Tensor, target: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Mean squared error between predicted and target velocity ``(B, 16, F, h, w)`` (fp32),
    averaged over all elements (a scalar), or over each sample's elements (``(B,)``)."""
    if per_sample:
        return (pred_flow.float() - target.float()).square().flatten(1).mean(1)
    return F.mse_loss(pred_flow.float(), target.float())


def _objective_weights(camera_weight: float, weights: dict[str, float] | None) -> dict[str, float]:
    """Objective loss key of each registered head -> its weight (registry weight, overridden by
    ``weights`` per head name; ``camera_weight`` is the camera head's, a run-config field)."""
    by_name = {"camera": camera_weight, **(weights or {})}
    return {spec.loss_keys[0]: by_name.get(spec.name, spec.weight) for spec in HEADS.values()}


def total_loss(
    terms: dict[str, torch.Tensor], lambda_geo: float = 1.0, stage: int = 1,
    camera_weight: float = CAMERA_LOSS_WEIGHT_IN_TOTAL, weights: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Combine loss terms: ``objective = L_diff + lambda * sum_heads weight * L_head``
    (built-in heads: ``L_depth + L_pmap + 3 * L_camera``).

    Args:
        terms: any of ``loss_diff`` and the heads' loss terms (``loss_depth``, ``loss_pmap``,
            ``loss_camera`` ..., plus extra logging entries, passed through). A missing head
            term (head not run) contributes nothing.
        lambda_geo: geometry weight (SPEC default 1.0; the paper's value was not published).
        stage: 1 or 2. Stage 1 never includes ``loss_diff`` (nothing trainable affects it,
            so it is dropped even if given); stage 2 requires it.
        camera_weight: weight of ``L_camera`` inside the geometry sum (paper: 3).
        weights: head name -> weight, overriding the registry's (and ``camera_weight``).

    Returns:
        ``terms`` plus ``objective``; ``loss_diff`` only in stage 2.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    out = {k: v for k, v in terms.items() if not (stage == 1 and k == "loss_diff")}
    geo_parts = [out[key] if w == 1.0 else w * out[key]
                 for key, w in _objective_weights(camera_weight, weights).items() if key in out]
    geo = torch.stack(geo_parts).sum(0) if geo_parts else None  # scalars, or (B,) per-sample terms

    if stage == 2:
        if "loss_diff" not in out:
            raise ValueError("stage 2 needs 'loss_diff' (pass flow_target to compute_losses)")
        objective = out["loss_diff"] if geo is None else out["loss_diff"] + lambda_geo * geo
    else:
        if geo is None:
            raise ValueError("stage 1 needs at least one geometry loss term")
        objective = lambda_geo * geo
    out["objective"] = objective
    return out


def compute_losses(
    outputs: dict[str, torch.Tensor | list[torch.Tensor]],
    batch: dict[str, torch.Tensor],
    *,
    stage: int,
    lambda_geo: float = 1.0,
    alpha: float = 0.2,
    flow_target: torch.Tensor | None = None,
    camera_weight: float = CAMERA_LOSS_WEIGHT_IN_TOTAL,
    pixel_frames: torch.Tensor | None = None,
    per_sample: bool = False,
    camera_loss: str = "huber",
) -> dict[str, torch.Tensor]:
    """All losses of one training step (``camera_weight``: see :func:`total_loss`).

    Args:
        outputs: model outputs; every registered head whose outputs are present contributes
            its loss (built-in: ``depth`` / ``depth_conf`` ``(B, T, H, W)``, ``world_points``
            ``(B, T, H, W, 3)`` / ``world_points_conf``, ``pose_enc_list`` (list of
            ``(B, T, 9)``)), plus ``flow`` (stage 2).
        batch: ``depth`` ``(B, T, H, W)``, ``points`` ``(B, T, H, W, 3)`` world, ``valid``
            ``(B, T, H, W)`` bool, ``w2c`` ``(B, T, 4, 4)`` OpenCV, ``intrinsics``
            ``(B, T, 3, 3)`` pixels at the resolution ``(H, W)`` of the depth maps.
        stage: 1 or 2; ``flow_target`` (``noise - x0``) is required in stage 2.
        pixel_frames: optional ``(B, K)`` pixel-frame indices the pixel-rate heads predicted
            (their outputs then hold K frames): their losses read the ground truth of those
            frames. The scene normalisation still uses every frame, so the scale is the same
            as without a subset; non-pixel-rate heads (camera) see every frame.
        per_sample: every term (and the objective) is ``(B,)``, each sample's own loss
            (the heads' ``per_sample`` form; a head whose loss ignores it returns a scalar).
        camera_loss: the camera loss's penalty, ``huber`` or ``l1`` (``LossConfig.camera_loss``).

    Returns:
        ``objective``, the loss terms of the heads present (``loss_depth``, ``loss_pmap``,
        ``loss_camera`` + ``loss_T``, ``loss_R``, ``loss_FL`` ...) and ``loss_diff`` in stage 2.
    """
    gt = normalize_geometry(batch["depth"], batch["points"], batch["valid"], batch["w2c"])
    targets = HeadTargets(depth=gt.depth, points=gt.points, w2c=gt.w2c, intrinsics=batch["intrinsics"],
                          valid=batch["valid"].bool(), image_hw=tuple(batch["depth"].shape[-2:]), alpha=alpha,
                          per_sample=per_sample, camera_loss=camera_loss)
    pixel_targets = targets
    if pixel_frames is not None:
        rows = torch.arange(gt.depth.shape[0], device=gt.depth.device)[:, None]
        idx = pixel_frames.to(gt.depth.device)
        pixel_targets = dataclasses.replace(targets, depth=gt.depth[rows, idx], points=gt.points[rows, idx],
                                            valid=targets.valid[rows, idx])
    terms: dict[str, torch.Tensor] = {}
    for spec in HEADS.values():
        if spec.ran(outputs):
            terms.update(spec.loss(outputs, pixel_targets if spec.pixel_rate else targets))
    if per_sample and any(v.ndim == 0 for v in terms.values()):
        if batch["depth"].shape[0] > 1:
            raise _ScalarHeadLoss  # a head without a per-sample loss: per_sample_losses loops instead
        terms = {k: v.reshape(1) for k, v in terms.items()}  # one sample: its scalar is its value
    if stage == 2:
        if flow_target is None or outputs.get("flow") is None:
            raise ValueError("stage 2 needs outputs['flow'] and flow_target")
        terms["loss_diff"] = diffusion_loss(outputs["flow"], flow_target, per_sample=per_sample)
    return total_loss(terms, lambda_geo=lambda_geo, stage=stage, camera_weight=camera_weight)


def loss_keys(stage: int) -> tuple[str, ...]:
    """Loss terms logged in ``stage``: ``objective``, each registered head's terms, and
    ``loss_diff`` in stage 2."""
    keys = ("objective", *(k for spec in HEADS.values() for k in spec.loss_keys))
    return keys + (("loss_diff",) if stage == 2 else ())


class _ScalarHeadLoss(Exception):
    """A registered head returned a batch scalar where per-sample values were asked for."""


def _slice_sample(value: Any, i: int) -> Any:
    """Sample ``i`` of a model output (a tensor ``(B, ...)`` or a list of them), batch dim kept."""
    if isinstance(value, torch.Tensor):
        return value[i:i + 1]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], torch.Tensor):
            return [v[i:i + 1] for v in value]
        return value[i:i + 1]
    return value


def per_sample_losses(
    outputs: dict[str, Any],
    inputs: dict[str, Any],
    *,
    stage: int,
    lambda_geo: float = 1.0,
    alpha: float = 0.2,
    camera_weight: float = CAMERA_LOSS_WEIGHT_IN_TOTAL,
    camera_loss: str = "huber",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The losses of each sample of a micro-batch, summed over the samples.

    The objective of a step is the mean of per-sample objectives, so it does not depend on
    how the global batch is split over devices and accumulation steps (the batch-wide
    valid-pixel normalisation of :func:`compute_losses` would). All samples are computed in
    one batched call (:func:`compute_losses` with ``per_sample=True``); a registered head whose
    loss returns a scalar for a batch of several samples makes it fall back to one
    :func:`compute_losses` call per sample. Nothing is read back to the host.

    Args:
        outputs: the model outputs of the micro-batch (B samples).
        inputs: :func:`~fantasyworld.models.inputs.training_inputs` of the micro-batch: the
            ground truth ``depth, points, valid, w2c, intrinsics`` and (stage 2)
            ``flow_target`` (B, 16, F, H/8, W/8); optional ``pixel_frames`` (B, K) (the frame
            subset the pixel-rate heads predicted, :func:`compute_losses`).
        stage, lambda_geo, alpha, camera_weight, camera_loss: as for :func:`compute_losses`.

    Returns:
        ``(objective_sum, terms)``: the sum over the samples of their objectives (scalar, fp32,
        differentiable) and the per-term sums of :func:`loss_keys` (detached fp32 scalars).
    """
    batch_size = inputs["latents"].shape[0]
    gt = {k: inputs[k] for k in ("depth", "points", "valid", "w2c", "intrinsics")}
    kwargs = {"stage": stage, "lambda_geo": lambda_geo, "alpha": alpha, "camera_weight": camera_weight,
              "camera_loss": camera_loss}
    try:
        terms = compute_losses(outputs, gt, flow_target=inputs["flow_target"] if stage == 2 else None,
                               pixel_frames=inputs.get("pixel_frames"), per_sample=True, **kwargs)
    except _ScalarHeadLoss:
        return _looped_losses(outputs, inputs, gt, batch_size, kwargs)
    sums = {key: terms[key].detach().float().sum() for key in loss_keys(stage) if key in terms}
    return terms["objective"].sum(), sums


def _looped_losses(outputs: dict[str, Any], inputs: dict[str, Any], gt: dict[str, torch.Tensor],
                   batch_size: int, kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`per_sample_losses` one sample at a time (heads without a per-sample loss)."""
    stage = kwargs["stage"]
    total = None
    sums: dict[str, torch.Tensor] = {}
    for i in range(batch_size):
        out_i = {k: _slice_sample(v, i) for k, v in outputs.items()}
        gt_i = {k: v[i:i + 1] for k, v in gt.items()}
        target = inputs["flow_target"][i:i + 1] if stage == 2 else None
        frames = inputs.get("pixel_frames")
        frames_i = None if frames is None else frames[i:i + 1]
        terms = compute_losses(out_i, gt_i, flow_target=target, pixel_frames=frames_i, **kwargs)
        total = terms["objective"] if total is None else total + terms["objective"]
        for key in loss_keys(stage):
            if key in terms:
                sums[key] = sums.get(key, 0.0) + terms[key].detach().float()
    assert total is not None
    return total, sums
