"""Output activations of the geometry heads (VGGT conventions, as the official heads use them).

* depth: ``exp`` (positive), confidence ``expp1`` = ``1 + exp`` (> 1);
* point maps: ``inv_log`` = ``sign(y) * (exp(|y|) - 1)``, confidence ``expp1``;
* camera pose encoding ``absT_quaR_FoV`` (9): translation and quaternion ``linear``, the two
  fields of view ``relu`` (non-negative).

The fields of view's ``relu`` passes its gradient through where its input is negative
(:func:`relu_passing_gradient`: the forward value is ``relu``'s bit for bit, so outputs and
the official weights' results are unchanged). With the plain ``relu`` a field of view whose
raw value went negative for every clip got no gradient again and stayed 0 for the rest of
training: a stage-1 demo run ended predicting ``fov_w = 0`` for every clip (``loss_FL``
level at ~0.24 over its last 300 steps), while the ground truth is 50-75 degrees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) * (exp(|y|) - 1)``, elementwise."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


class _ReluPassingGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def relu_passing_gradient(x: torch.Tensor) -> torch.Tensor:
    """``relu(x)`` in the forward pass (the same op, so the same values), the identity's
    gradient in the backward pass: a negative input is still pulled towards a positive target
    instead of being cut off from the loss for good."""
    return _ReluPassingGradient.apply(x)


def _value_act(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return x
    if kind == "exp":
        return torch.exp(x)
    if kind == "inv_log":
        return inverse_log_transform(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation {kind!r} (linear, exp, inv_log, relu, sigmoid)")


def activate_head(
    out: torch.Tensor, activation: str = "exp", conf_activation: str = "expp1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a dense head output into activated values and confidence.

    Args:
        out: raw output ``(N, C, H, W)``; channels ``0..C-2`` are values, ``C-1`` confidence.
        activation: ``exp`` | ``inv_log`` | ``linear`` | ``relu`` | ``sigmoid``.
        conf_activation: ``expp1`` (``1 + exp``) | ``expp0`` (``exp``) | ``sigmoid``.

    Returns:
        values ``(N, H, W, C - 1)`` and confidence ``(N, H, W)``.
    """
    fmap = out.permute(0, 2, 3, 1)  # (N, H, W, C)
    values = _value_act(fmap[..., :-1], activation)
    conf = fmap[..., -1]
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r} (expp1, expp0, sigmoid)")
    return values, conf


def activate_pose(
    pose_enc: torch.Tensor, trans_act: str = "linear", quat_act: str = "linear", fl_act: str = "relu"
) -> torch.Tensor:
    """Activate a raw ``absT_quaR_FoV`` encoding ``(..., 9)``: ``[t(3), q_xyzw(4), fov_h, fov_w]``."""
    t = _value_act(pose_enc[..., :3], trans_act)
    q = _value_act(pose_enc[..., 3:7], quat_act)
    fov = relu_passing_gradient(pose_enc[..., 7:]) if fl_act == "relu" else _value_act(pose_enc[..., 7:], fl_act)
    return torch.cat([t, q, fov], dim=-1)
