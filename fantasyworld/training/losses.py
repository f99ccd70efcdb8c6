"""FantasyWorld training losses (SPEC section 4): rectified-flow MSE plus VGGT-style geometry.

Output keys form the logging vocabulary: ``objective``, ``loss_diff`` (stage 2 only),
``loss_depth``, ``loss_pmap``, ``loss_camera`` and the camera parts ``loss_T``, ``loss_R``,
``loss_FL``. Everything here runs in fp32 (inputs are upcast), whatever the autocast dtype.

Ground-truth normalisation (:func:`normalize_geometry`, VGGT's training convention)
----------------------------------------------------------------------------------
1. Cameras are made relative to frame 0: ``w2c_i <- w2c_i @ inverse(w2c_0)`` (frame 0 = I).
2. World points are moved into camera 0's frame: ``X <- R_0 X + t_0`` (OpenCV axes).
3. ``scale`` (per sample) = mean Euclidean norm of the valid points in that frame, i.e. the
   mean distance of valid points to the first camera centre, over all frames of the clip.
4. Depth, points and camera translations are divided by ``scale``; rotations and
   intrinsics are unchanged. The result is invariant to any similarity transform of the
   world (rotation, translation, positive scale).

Per-pixel geometry loss (:func:`depth_loss`, :func:`point_loss`)
---------------------------------------------------------------
With ``N`` the number of valid pixels in the whole batch, ``C`` the predicted confidence,
``r = pred - gt`` and ``ch`` the number of channels (1 for depth, 3 for points)::

    loss = ( sum_{valid p} C_p * ||r_p||_2
           + (1 / ch) * sum_{pairs (p, q)} C_q * ||r_q - r_p||_1
           - alpha * sum_{valid p} log C_p ) / N

where the pairs are vertical ``(h, w)->(h+1, w)`` and horizontal ``(h, w)->(h, w+1)``
neighbours inside one frame with **both** pixels valid, and ``q`` is the second pixel of
the pair. ``r_q - r_p = grad pred - grad gt`` (forward finite differences). This is VGGT's
``regression_loss`` + ``gradient_loss`` (``training/loss.py``): Euclidean residual for the
regression term, per-channel L1 for the gradient term normalised by valid pixel-channels,
confidence of the second pixel, batch-wide means. Deliberate differences: one scale for the
gradient term (VGGT averages over 4 subsampled scales), the ``-alpha log C`` regulariser
counted once per valid pixel (VGGT adds it a second time inside the gradient term, over all
pixels), and no quantile outlier filtering.

Camera loss (:func:`camera_loss`)
---------------------------------
Huber (``delta = 1``, i.e. smooth-L1) between each refinement iteration's 9-d prediction and
the encoding of the normalised relative ground truth; per-part means over frames and
components: ``loss_iter = L_T + L_R + 0.5 * L_FL`` (VGGT's weights 1, 1, 0.5). Iterations are
combined as VGGT does: ``sum_i gamma^(n - 1 - i) * loss_iter_i / n`` with ``gamma = 0.6``,
so the last iteration has weight 1 and the sum is divided by the iteration count ``n``
(not by the sum of weights).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from fantasyworld.geometry.pose_encoding import as_homogeneous, encode_pose, relative_to_first

__all__ = [
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

CAMERA_LOSS_GAMMA = 0.6
"""VGGT's per-iteration decay: iteration ``i`` of ``n`` has weight ``gamma^(n - 1 - i)``."""
CAMERA_PART_WEIGHTS = (1.0, 1.0, 0.5)
"""VGGT's weights of the translation, rotation and field-of-view parts of the camera loss."""
CAMERA_LOSS_WEIGHT_IN_TOTAL = 3.0
"""Paper: ``L = L_diff + lambda * (L_depth + L_pmap + 3 * L_camera)``."""
_SCALE_EPS = 1e-6


class NormalizedGeometry(NamedTuple):
    """Ground truth in camera-0 coordinates at unit scale (see module docstring).

    Attributes:
        depth: ``(B, T, H, W)`` z-depth divided by ``scale``.
        points: ``(B, T, H, W, 3)`` points in camera-0 coordinates divided by ``scale``.
        w2c: ``(B, T, 4, 4)`` relative w2c (frame 0 = identity), translations divided by ``scale``.
        scale: ``(B,)`` the factor that was divided out.
    """

    depth: torch.Tensor
    points: torch.Tensor
    w2c: torch.Tensor
    scale: torch.Tensor


def _to_first_camera(points: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """World points ``(B, T, H, W, 3)`` -> camera-0 coordinates ``R_0 X + t_0``."""
    rot0 = w2c[:, 0, :3, :3]  # (B, 3, 3)
    trans0 = w2c[:, 0, :3, 3]  # (B, 3)
    return torch.einsum("bij,bthwj->bthwi", rot0, points) + trans0[:, None, None, None, :]


def normalize_geometry_scale(points: torch.Tensor, valid: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """Per-sample scale ``(B,)``: mean distance of valid world points to the first camera centre.

    Args:
        points: ``(B, T, H, W, 3)`` world points.
        valid: ``(B, T, H, W)`` bool mask.
        w2c: ``(B, T, 3|4, 4)`` world-to-camera extrinsics (OpenCV); only frame 0 is used.

    Returns:
        ``(B,)``; a sample without valid points gets scale 1 (its losses are masked out anyway).
    """
    points = points.float()
    w2c = w2c.float()
    valid = valid.bool()
    dist = _to_first_camera(points, w2c).norm(dim=-1)  # (B, T, H, W)
    dist = torch.where(valid, dist, torch.zeros_like(dist))  # invalid points may be NaN/inf
    count = valid.sum(dim=(1, 2, 3)).to(dist.dtype)
    mean = dist.sum(dim=(1, 2, 3)) / count.clamp_min(1.0)
    return torch.where(count > 0, mean.clamp_min(_SCALE_EPS), torch.ones_like(mean))


@torch.no_grad()
def normalize_geometry(
    depth: torch.Tensor, points: torch.Tensor, valid: torch.Tensor, w2c: torch.Tensor
) -> NormalizedGeometry:
    """Relative-to-first-camera, unit-scale ground truth (see module docstring for the steps).

    Args:
        depth: ``(B, T, H, W)`` z-depth in each frame's camera.
        points: ``(B, T, H, W, 3)`` world points.
        valid: ``(B, T, H, W)`` bool mask.
        w2c: ``(B, T, 3|4, 4)`` world-to-camera extrinsics, OpenCV axes.
    """
    valid = valid.bool()
    w2c = as_homogeneous(w2c.float())
    scale = normalize_geometry_scale(points, valid, w2c)
    points_c0 = _to_first_camera(points.float(), w2c) / scale[:, None, None, None, None]
    depth = depth.float() / scale[:, None, None, None]
    rel = relative_to_first(w2c).clone()
    rel[..., :3, 3] = rel[..., :3, 3] / scale[:, None, None]
    # Invalid ground truth is set to 0 so that NaN/inf never reach a loss or its gradient.
    points_c0 = torch.where(valid[..., None], points_c0, torch.zeros_like(points_c0))
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    return NormalizedGeometry(depth=depth, points=points_c0, w2c=rel, scale=scale)


def _confidence_regression_loss(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Shared body of :func:`depth_loss` and :func:`point_loss` on ``(B, T, H, W, ch)`` tensors."""
    pred, conf, gt = pred.float(), conf.float(), gt.float()
    valid = valid.bool()
    channels = pred.shape[-1]
    num_valid = valid.sum()
    if num_valid == 0:
        # Keep the graph connected so every rank runs the same backward.
        return (pred.sum() + conf.sum()) * 0.0

    mask = valid.to(pred.dtype)
    # Zero the residual outside the mask so invalid ground truth (NaN/inf) cannot leak in.
    resid = torch.where(valid[..., None], pred - gt, torch.zeros_like(pred))  # (B, T, H, W, ch)
    # Invalid pixels may carry any confidence; use 1 there so log C = 0 and C * 0 = 0.
    safe_conf = torch.where(valid, conf, torch.ones_like(conf))

    # 1. Confidence-weighted Euclidean residual.
    reg = (safe_conf * resid.norm(dim=-1) * mask).sum()

    # 2. Gradient matching: forward differences of the residual, pairs with both ends valid.
    grad_h = (resid[:, :, 1:] - resid[:, :, :-1]).abs().sum(dim=-1)  # (B, T, H-1, W)
    pair_h = mask[:, :, 1:] * mask[:, :, :-1]
    grad_w = (resid[:, :, :, 1:] - resid[:, :, :, :-1]).abs().sum(dim=-1)  # (B, T, H, W-1)
    pair_w = mask[:, :, :, 1:] * mask[:, :, :, :-1]
    grad = (safe_conf[:, :, 1:] * grad_h * pair_h).sum() + (safe_conf[:, :, :, 1:] * grad_w * pair_w).sum()

    # 3. Confidence regulariser.
    log_reg = (torch.log(safe_conf) * mask).sum()

    return (reg + grad / channels - alpha * log_reg) / num_valid.to(pred.dtype)


def depth_loss(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.2
) -> torch.Tensor:
    """Confidence-weighted depth loss (scalar), normalised per valid pixel (module docstring).

    Args:
        pred: ``(B, T, H, W)`` predicted depth. ``gt`` has the same shape (normalised scale).
        conf: ``(B, T, H, W)`` predicted confidence, ``> 0`` (the head gives ``1 + exp``).
        valid: ``(B, T, H, W)`` bool mask.
        alpha: weight of ``-log C`` (VGGT default 0.2).
    """
    return _confidence_regression_loss(pred[..., None], conf, gt[..., None], valid, alpha)


def point_loss(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.2
) -> torch.Tensor:
    """Confidence-weighted point-map loss (scalar), normalised per valid pixel (module docstring).

    Args:
        pred: ``(B, T, H, W, 3)`` predicted points; ``gt`` the same, in camera-0 coordinates
            at normalised scale (:func:`normalize_geometry`).
        conf: ``(B, T, H, W)`` predicted confidence, ``> 0``.
        valid: ``(B, T, H, W)`` bool mask.
        alpha: weight of ``-log C`` (VGGT default 0.2).
    """
    return _confidence_regression_loss(pred, conf, gt, valid, alpha)


def camera_loss_terms(
    pred_enc_list: list[torch.Tensor] | tuple[torch.Tensor, ...],
    gt_w2c: torch.Tensor,
    gt_intrinsics: torch.Tensor,
    image_hw: tuple[int, int],
    *,
    scale: torch.Tensor | None = None,
    gamma: float = CAMERA_LOSS_GAMMA,
    huber_delta: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Camera loss with its parts: ``loss_camera``, ``loss_T``, ``loss_R``, ``loss_FL`` (scalars).

    Args:
        pred_enc_list: one ``(B, T, 9)`` prediction per refinement iteration, last = final.
        gt_w2c: ``(B, T, 3|4, 4)`` ground-truth w2c. It is made relative to frame 0 here
            (idempotent for already-relative input); translations are divided by ``scale``
            when given, so pass either raw cameras with ``scale`` or normalised cameras.
        gt_intrinsics: ``(B, T, 3, 3)`` pixel intrinsics at ``image_hw``.
        image_hw: ``(H, W)`` of the images the intrinsics refer to.
        scale: optional ``(B,)`` from :func:`normalize_geometry_scale`.
        gamma: iteration decay (VGGT 0.6); ``huber_delta``: Huber threshold (1 = smooth-L1).
    """
    if len(pred_enc_list) == 0:
        raise ValueError("pred_enc_list is empty: the camera head returned no iterations")
    with torch.no_grad():
        rel = relative_to_first(gt_w2c.float())
        if scale is not None:
            rel = rel.clone()
            rel[..., :3, 3] = rel[..., :3, 3] / scale.float()[:, None, None]
        gt_enc = encode_pose(rel, gt_intrinsics.float(), image_hw)  # (B, T, 9)

    n_iter = len(pred_enc_list)
    parts = {"loss_T": slice(0, 3), "loss_R": slice(3, 7), "loss_FL": slice(7, 9)}
    totals = {name: gt_enc.new_zeros(()) for name in parts}
    for i, pred in enumerate(pred_enc_list):
        weight = gamma ** (n_iter - 1 - i)
        for name, sl in parts.items():
            part = F.huber_loss(pred[..., sl].float(), gt_enc[..., sl], delta=huber_delta, reduction="mean")
            totals[name] = totals[name] + weight * part
    out = {name: value / n_iter for name, value in totals.items()}
    w_t, w_r, w_fl = CAMERA_PART_WEIGHTS
    out["loss_camera"] = w_t * out["loss_T"] + w_r * out["loss_R"] + w_fl * out["loss_FL"]
    return out


def camera_loss(
    pred_enc_list: list[torch.Tensor] | tuple[torch.Tensor, ...],
    gt_w2c: torch.Tensor,
    gt_intrinsics: torch.Tensor,
    image_hw: tuple[int, int],
    *,
    scale: torch.Tensor | None = None,
    gamma: float = CAMERA_LOSS_GAMMA,
    huber_delta: float = 1.0,
) -> torch.Tensor:
    """Scalar camera loss; see :func:`camera_loss_terms` for arguments and the module docstring."""
    return camera_loss_terms(
        pred_enc_list, gt_w2c, gt_intrinsics, image_hw, scale=scale, gamma=gamma, huber_delta=huber_delta
    )["loss_camera"]


def diffusion_loss(pred_flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target velocity (fp32), averaged over all elements."""
    return F.mse_loss(pred_flow.float(), target.float())


def total_loss(
    terms: dict[str, torch.Tensor], lambda_geo: float = 1.0, stage: int = 1,
    camera_weight: float = CAMERA_LOSS_WEIGHT_IN_TOTAL,
) -> dict[str, torch.Tensor]:
    """Combine loss terms: ``objective = L_diff + lambda * (L_depth + L_pmap + 3 * L_camera)``.

    Args:
        terms: any of ``loss_diff``, ``loss_depth``, ``loss_pmap``, ``loss_camera`` (plus
            extra logging entries, passed through). A missing geometry term (head disabled)
            contributes nothing.
        lambda_geo: geometry weight (SPEC default 1.0; the paper's value was not published).
        stage: 1 or 2. Stage 1 never includes ``loss_diff`` (nothing trainable affects it,
            so it is dropped even if given); stage 2 requires it.
        camera_weight: weight of ``L_camera`` inside the geometry sum (paper: 3).

    Returns:
        ``terms`` plus ``objective``; ``loss_diff`` only in stage 2.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    out = {k: v for k, v in terms.items() if not (stage == 1 and k == "loss_diff")}
    geo_parts = [out[k] for k in ("loss_depth", "loss_pmap") if k in out]
    if "loss_camera" in out:
        geo_parts.append(camera_weight * out["loss_camera"])
    geo = torch.stack(geo_parts).sum() if geo_parts else None

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
) -> dict[str, torch.Tensor]:
    """All losses of one training step (``camera_weight``: see :func:`total_loss`).

    Args:
        outputs: model outputs; uses whichever of ``depth`` / ``depth_conf`` ``(B, T, H, W)``,
            ``world_points`` ``(B, T, H, W, 3)`` / ``world_points_conf``, ``pose_enc_list``
            (list of ``(B, T, 9)``) and ``flow`` (stage 2) are present.
        batch: ``depth`` ``(B, T, H, W)``, ``points`` ``(B, T, H, W, 3)`` world, ``valid``
            ``(B, T, H, W)`` bool, ``w2c`` ``(B, T, 4, 4)`` OpenCV, ``intrinsics``
            ``(B, T, 3, 3)`` pixels at the resolution ``(H, W)`` of the depth maps.
        stage: 1 or 2; ``flow_target`` (``noise - x0``) is required in stage 2.

    Returns:
        ``objective``, ``loss_depth``, ``loss_pmap``, ``loss_camera`` (+ ``loss_T``, ``loss_R``,
        ``loss_FL``) for the heads present, and ``loss_diff`` in stage 2.
    """
    gt = normalize_geometry(batch["depth"], batch["points"], batch["valid"], batch["w2c"])
    valid = batch["valid"].bool()
    image_hw = tuple(batch["depth"].shape[-2:])
    terms: dict[str, torch.Tensor] = {}

    if outputs.get("depth") is not None:
        terms["loss_depth"] = depth_loss(outputs["depth"], outputs["depth_conf"], gt.depth, valid, alpha)
    if outputs.get("world_points") is not None:
        terms["loss_pmap"] = point_loss(
            outputs["world_points"], outputs["world_points_conf"], gt.points, valid, alpha
        )
    if outputs.get("pose_enc_list") is not None:
        terms.update(camera_loss_terms(outputs["pose_enc_list"], gt.w2c, batch["intrinsics"], image_hw))
    if stage == 2:
        if flow_target is None or outputs.get("flow") is None:
            raise ValueError("stage 2 needs outputs['flow'] and flow_target")
        terms["loss_diff"] = diffusion_loss(outputs["flow"], flow_target)
    return total_loss(terms, lambda_geo=lambda_geo, stage=stage, camera_weight=camera_weight)


def loss_keys(stage: int) -> tuple[str, ...]:
    """Loss terms logged in ``stage`` (``loss_diff`` only in stage 2)."""
    keys = ("objective", "loss_depth", "loss_pmap", "loss_camera", "loss_T", "loss_R", "loss_FL")
    return keys + (("loss_diff",) if stage == 2 else ())


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`compute_losses` of each sample of a micro-batch, summed over the samples.

    The objective of a step is the mean of per-sample objectives, so it does not depend on
    how the global batch is split over devices and accumulation steps (the batch-wide
    valid-pixel normalisation of :func:`compute_losses` would).

    Args:
        outputs: the model outputs of the micro-batch (B samples).
        inputs: :func:`~fantasyworld.models.inputs.training_inputs` of the micro-batch: the
            ground truth ``depth, points, valid, w2c, intrinsics`` and (stage 2)
            ``flow_target`` (B, 16, F, H/8, W/8).
        stage, lambda_geo, alpha, camera_weight: as for :func:`compute_losses`.

    Returns:
        ``(objective_sum, terms)``: the sum over the samples of their objectives (scalar, fp32,
        differentiable) and the per-term sums of :func:`loss_keys` (detached fp32).
    """
    batch_size = inputs["latents"].shape[0]
    gt = {k: inputs[k] for k in ("depth", "points", "valid", "w2c", "intrinsics")}
    total = None
    sums: dict[str, torch.Tensor] = {}
    for i in range(batch_size):
        out_i = {k: _slice_sample(v, i) for k, v in outputs.items()}
        gt_i = {k: v[i:i + 1] for k, v in gt.items()}
        target = inputs["flow_target"][i:i + 1] if stage == 2 else None
        terms = compute_losses(out_i, gt_i, stage=stage, lambda_geo=lambda_geo, alpha=alpha, flow_target=target,
                               camera_weight=camera_weight)
        total = terms["objective"] if total is None else total + terms["objective"]
        for key in loss_keys(stage):
            if key in terms:
                sums[key] = sums.get(key, 0.0) + terms[key].detach().float()
    assert total is not None
    return total, sums
