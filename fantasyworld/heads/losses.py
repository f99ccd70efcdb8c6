"""The heads' loss functions (SPEC section 4, VGGT-style), on ground truth normalised by
:func:`~fantasyworld.geometry.cameras.normalize_scene`. Everything runs in fp32 (inputs are
upcast), whatever the autocast dtype. Each head of :mod:`fantasyworld.heads.registry` names
its loss here; :mod:`fantasyworld.training.losses` combines them.

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
A per-component penalty between each refinement iteration's 9-d prediction and the encoding
of the normalised relative ground truth (``loss_type``, :data:`CAMERA_LOSS_TYPES`): ``huber``
(``delta = 1``, i.e. smooth-L1, the VGGT paper's; on pose residuals far below 1 it is
``0.5 r^2``) or ``l1`` (``|r|``, what VGGT's released training code uses: its authors found it
more stable than smooth-L1 and L2). Per-part means over frames and components give
``loss_iter = L_T + L_R + 0.5 * L_FL`` (VGGT's weights 1, 1, 0.5). Iterations are combined as
VGGT does: ``sum_i gamma^(n - 1 - i) * loss_iter_i / n`` with ``gamma = 0.6``, so the last
iteration has weight 1 and the sum is divided by the iteration count ``n`` (not by the sum
of weights).

Per-sample values (``per_sample=True``)
---------------------------------------
Every loss can also return one value per sample, ``(B,)``, instead of the batch scalar: the
same formulas with ``N``, the means and the sums taken over each sample's own pixels, frames
and components. A sample's value equals the scalar loss of that sample alone (up to float
summation order), so the training objective of a micro-batch (the mean of per-sample losses,
:func:`fantasyworld.training.losses.per_sample_losses`) is one batched call instead of a loop
over samples. Neither form reads a value back to the host (no device synchronisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fantasyworld.geometry.pose_encoding import encode_pose, relative_to_first

__all__ = [
    "CAMERA_LOSS_GAMMA", "CAMERA_LOSS_TYPES", "CAMERA_PART_WEIGHTS", "camera_loss", "camera_loss_terms", "depth_loss",
    "point_loss",
]

CAMERA_LOSS_GAMMA = 0.6
"""VGGT's per-iteration decay: iteration ``i`` of ``n`` has weight ``gamma^(n - 1 - i)``."""
CAMERA_PART_WEIGHTS = (1.0, 1.0, 0.5)
"""VGGT's weights of the translation, rotation and field-of-view parts of the camera loss."""
CAMERA_LOSS_TYPES = ("huber", "l1")
"""Per-component penalties of :func:`camera_loss_terms` (module docstring)."""


def _sum(x: torch.Tensor, per_sample: bool) -> torch.Tensor:
    """Sum of ``x`` ``(B, ...)``: a scalar, or ``(B,)`` with ``per_sample``."""
    return x.flatten(1).sum(1) if per_sample else x.sum()


def _confidence_regression_loss(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float,
    per_sample: bool = False,
) -> torch.Tensor:
    """Shared body of :func:`depth_loss` and :func:`point_loss` on ``(B, T, H, W, ch)`` tensors.

    Returns a scalar (normalised by the batch's valid pixels) or, with ``per_sample``, ``(B,)``
    (each sample normalised by its own). Without a valid pixel the value is exactly 0 and the
    graph stays connected to ``pred`` and ``conf``, so every rank runs the same backward; the
    count is never read back to the host."""
    pred, conf, gt = pred.float(), conf.float(), gt.float()
    valid = valid.bool()
    channels = pred.shape[-1]
    num_valid = _sum(valid, per_sample)
    mask = valid.to(pred.dtype)
    # Zero the residual outside the mask so invalid ground truth (NaN/inf) cannot leak in.
    resid = torch.where(valid[..., None], pred - gt, torch.zeros_like(pred))  # (B, T, H, W, ch)
    # Invalid pixels may carry any confidence; use 1 there so log C = 0 and C * 0 = 0.
    safe_conf = torch.where(valid, conf, torch.ones_like(conf))

    # 1. Confidence-weighted Euclidean residual.
    reg = _sum(safe_conf * resid.norm(dim=-1) * mask, per_sample)

    # 2. Gradient matching: forward differences of the residual, pairs with both ends valid.
    grad_h = (resid[:, :, 1:] - resid[:, :, :-1]).abs().sum(dim=-1)  # (B, T, H-1, W)
    pair_h = mask[:, :, 1:] * mask[:, :, :-1]
    grad_w = (resid[:, :, :, 1:] - resid[:, :, :, :-1]).abs().sum(dim=-1)  # (B, T, H, W-1)
    pair_w = mask[:, :, :, 1:] * mask[:, :, :, :-1]
    grad = (_sum(safe_conf[:, :, 1:] * grad_h * pair_h, per_sample)
            + _sum(safe_conf[:, :, :, 1:] * grad_w * pair_w, per_sample))

    # 3. Confidence regulariser.
    log_reg = _sum(torch.log(safe_conf) * mask, per_sample)

    # A count of 0 leaves every sum above exactly 0: dividing by 1 then gives 0 (the division
    # by a count >= 1 is unchanged by the clamp).
    return (reg + grad / channels - alpha * log_reg) / num_valid.clamp_min(1).to(pred.dtype)


def depth_loss(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.2,
    per_sample: bool = False,
) -> torch.Tensor:
    """Confidence-weighted depth loss, normalised per valid pixel (module docstring).

    Args:
        pred: ``(B, T, H, W)`` predicted depth. ``gt`` has the same shape (normalised scale).
        conf: ``(B, T, H, W)`` predicted confidence, ``> 0`` (the head gives ``1 + exp``).
        valid: ``(B, T, H, W)`` bool mask.
        alpha: weight of ``-log C`` (VGGT default 0.2).
        per_sample: return ``(B,)`` (each sample over its own valid pixels) instead of the scalar.
    """
    return _confidence_regression_loss(pred[..., None], conf, gt[..., None], valid, alpha, per_sample)


def point_loss(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.2,
    per_sample: bool = False,
) -> torch.Tensor:
    """Confidence-weighted point-map loss, normalised per valid pixel (module docstring).

    Args:
        pred: ``(B, T, H, W, 3)`` predicted points; ``gt`` the same, in camera-0 coordinates
            at normalised scale (:func:`~fantasyworld.geometry.cameras.normalize_scene`).
        conf: ``(B, T, H, W)`` predicted confidence, ``> 0``.
        valid: ``(B, T, H, W)`` bool mask.
        alpha: weight of ``-log C`` (VGGT default 0.2).
        per_sample: return ``(B,)`` (each sample over its own valid pixels) instead of the scalar.
    """
    return _confidence_regression_loss(pred, conf, gt, valid, alpha, per_sample)


def camera_loss_terms(
    pred_enc_list: list[torch.Tensor] | tuple[torch.Tensor, ...],
    gt_w2c: torch.Tensor,
    gt_intrinsics: torch.Tensor,
    image_hw: tuple[int, int],
    *,
    scale: torch.Tensor | None = None,
    gamma: float = CAMERA_LOSS_GAMMA,
    huber_delta: float = 1.0,
    per_sample: bool = False,
    loss_type: str = "huber",
) -> dict[str, torch.Tensor]:
    """Camera loss with its parts: ``loss_camera``, ``loss_T``, ``loss_R``, ``loss_FL`` (scalars,
    or ``(B,)`` with ``per_sample``: each sample's means over its own frames and components).

    Args:
        pred_enc_list: one ``(B, T, 9)`` prediction per refinement iteration, last = final.
        gt_w2c: ``(B, T, 3|4, 4)`` ground-truth w2c. It is made relative to frame 0 here
            (idempotent for already-relative input); translations are divided by ``scale``
            when given, so pass either raw cameras with ``scale`` or normalised cameras.
        gt_intrinsics: ``(B, T, 3, 3)`` pixel intrinsics at ``image_hw``.
        image_hw: ``(H, W)`` of the images the intrinsics refer to.
        scale: optional ``(B,)`` from :func:`~fantasyworld.geometry.cameras.scene_scale`.
        gamma: iteration decay (VGGT 0.6); ``huber_delta``: Huber threshold (1 = smooth-L1).
        loss_type: ``huber`` (default) or ``l1`` (:data:`CAMERA_LOSS_TYPES`).
    """
    if loss_type not in CAMERA_LOSS_TYPES:
        raise ValueError(f"camera loss_type must be one of {CAMERA_LOSS_TYPES}, got {loss_type!r}")
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
    totals = {name: gt_enc.new_zeros((gt_enc.shape[0],) if per_sample else ()) for name in parts}
    for i, pred in enumerate(pred_enc_list):
        weight = gamma ** (n_iter - 1 - i)
        for name, sl in parts.items():
            if loss_type == "l1":
                penalty = (pred[..., sl].float() - gt_enc[..., sl]).abs()
            else:
                penalty = F.huber_loss(pred[..., sl].float(), gt_enc[..., sl], delta=huber_delta, reduction="none")
            part = penalty.flatten(1).mean(1) if per_sample else penalty.mean()  # (B,) or scalar
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
    per_sample: bool = False,
    loss_type: str = "huber",
) -> torch.Tensor:
    """Camera loss (scalar, or ``(B,)`` with ``per_sample``); see :func:`camera_loss_terms` for
    arguments and the module docstring."""
    return camera_loss_terms(
        pred_enc_list, gt_w2c, gt_intrinsics, image_hw, scale=scale, gamma=gamma, huber_delta=huber_delta,
        per_sample=per_sample, loss_type=loss_type,
    )["loss_camera"]
