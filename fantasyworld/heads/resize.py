"""Bilinear resizes of the DPT heads (``align_corners=True``), as the kernel or as two matrix products.

Bilinear interpolation is separable: for an input ``x`` ``(N, C, h, w)`` and an output size
``(H, W)``, ``y = A_H x A_W^T`` with ``A_H`` ``(H, h)`` and ``A_W`` ``(W, w)`` the 1-D
interpolation matrices (two non-zeros per row: ``1 - l`` and ``l`` at the source indices
``floor(s)`` and ``floor(s) + 1``, ``s = i (h - 1) / (H - 1)``, computed in float32 exactly as
``F.interpolate`` computes them). ``resize="matmul"`` evaluates that product with two GEMMs
(width first, then height, the kernel's order); the backward is two GEMMs with the same
matrices instead of the kernel's scatter of atomic adds. In float32 both forms agree to
rounding (tested: within 1e-6 relative); in bf16 the matrices are rounded to bf16 (relative
error up to 2^-9 per weight) and the intermediate once more, so the two forms differ at the
bf16 rounding level.

Memory layouts: a ``channels_last`` input ``(N, C, h, w)`` stored as ``(N, h, w, C)`` is resized
in that layout (the width product batches over ``N h``, the height product over ``N``), so no
transpose is needed and the output is ``channels_last`` too.

The matrices are built on the device from the sizes alone and kept per ``(h, H, device,
dtype)`` (:func:`device_interpolation_matrix`): eager steps reuse them, and a compiled region
traces their construction without host data (an earlier form built them on the host and
copied them at every resize, which made the host wait for every queued kernel, some twenty
times per training step of a small preset).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RESIZE_MODES", "device_interpolation_matrix", "interpolation_matrix", "resize_bilinear"]

#: DPT resize implementations: the ``upsample_bilinear2d`` kernel, or two matrix products
RESIZE_MODES = ("kernel", "matmul")

_INTERP_MAX_ELEMENTS = 1_610_612_736  # split kernel resizes above this (official INT_MAX guard)


def interpolation_matrix(n_in: int, n_out: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """``(n_out, n_in)`` 1-D bilinear (``align_corners=True``) interpolation matrix.

    Source coordinate ``s_i = i * (n_in - 1) / (n_out - 1)`` (0 when ``n_out == 1``), weights
    ``1 - l`` at ``floor(s_i)`` and ``l = s_i - floor(s_i)`` at ``min(floor(s_i) + 1, n_in - 1)``,
    all in float32 as torch's kernel computes them, then cast to ``dtype``. Built on ``device``
    from the sizes alone (no host data), so a compiled region traces it without a host copy.
    """
    scale = 0.0
    if n_out > 1:  # float32 division, as the kernel's
        scale = float(np.float32(n_in - 1) / np.float32(n_out - 1))
    src = torch.arange(n_out, dtype=torch.float32, device=device) * scale
    i0 = src.floor().long().clamp(max=n_in - 1)
    lam = src - i0.float()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    cols = torch.arange(n_in, device=device)
    mat = (cols == i0[:, None]) * (1.0 - lam)[:, None]  # where i0 == i1 (the last row): 1 - l, then + l
    mat = mat + (cols == i1[:, None]) * lam[:, None]
    return mat.to(dtype)


@functools.lru_cache(maxsize=256)
def device_interpolation_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`interpolation_matrix` made once per argument tuple and kept (read-only: the same
    tensor is returned to every caller). A few hundred kilobytes at the largest sizes. Made
    outside inference mode, so a matrix first needed by inference can be saved for a later
    training backward."""
    with torch.inference_mode(False):
        return interpolation_matrix(n_in, n_out, device, dtype)


def _kernel(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    total = size[0] * size[1] * x.shape[0] * x.shape[1]
    if total <= _INTERP_MAX_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = x.chunk(total // _INTERP_MAX_ELEMENTS + 1, dim=0)
    return torch.cat([F.interpolate(c, size=size, mode="bilinear", align_corners=True) for c in chunks])


def _matmul(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    out_h, out_w = size
    # eager: the kept matrices; compiled: traced from the sizes (the compiler folds them)
    matrix = interpolation_matrix if torch.compiler.is_compiling() else device_interpolation_matrix
    a_h = matrix(h, out_h, x.device, x.dtype)  # (H, h)
    a_w = matrix(w, out_w, x.device, x.dtype)  # (W, w)
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        t = torch.matmul(x, a_w.t())  # (N, C, h, W)
        return torch.matmul(a_h, t)  # (N, C, H, W)
    nhwc = x.permute(0, 2, 3, 1)  # (N, h, w, C), contiguous
    t = torch.matmul(a_w, nhwc.reshape(n * h, w, c))  # (N*h, W, C)
    y = torch.matmul(a_h, t.reshape(n, h, out_w * c))  # (N, H, W*C)
    return y.reshape(n, out_h, out_w, c).permute(0, 3, 1, 2)  # (N, C, H, W), channels_last


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], mode: str = "kernel") -> torch.Tensor:
    """Bilinear ``align_corners=True`` resize of ``x`` ``(N, C, h, w)`` to ``(N, C, *size)`` in ``x``'s dtype.

    Autocast is off inside (it would upcast bf16 maps to fp32 for the kernel: twice the bytes of
    the largest tensors of the head). ``mode``: ``kernel`` (``F.interpolate``, chunked over ``N``
    when huge) or ``matmul`` (module docstring).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    with torch.autocast(device_type="cuda" if x.is_cuda else "cpu", enabled=False):
        if mode == "kernel":
            return _kernel(x, tuple(size))
        return _matmul(x, tuple(size))
