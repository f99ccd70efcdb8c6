"""Output activations of the geometry heads (VGGT conventions, as the official heads use them).

* depth: ``exp`` (positive), confidence ``expp1`` = ``1 + exp`` (> 1);
* point maps: ``inv_log`` = ``sign(y) * (exp(|y|) - 1)``, confidence ``expp1``;
* camera pose encoding ``absT_quaR_FoV`` (9): translation and quaternion ``linear``, the two
  fields of view ``relu`` (non-negative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) * (exp(|y|) - 1)``, elementwise."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


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
    fov = _value_act(pose_enc[..., 7:], fl_act)
    return torch.cat([t, q, fov], dim=-1)
