"""FP8 (e4m3) linear layers for frozen weights: row-wise scaled weights and activations.

:class:`Float8Linear` stores a frozen ``nn.Linear``'s weight ``(out, in)`` as float8 e4m3 with
one float32 scale per output row (``w ~ w8 * s_w``, ``s_w = max|w_row| / 448``), and quantises
each input row on the fly the same way (``x ~ x8 * s_x``, ``s_x = max|x_row| / 448``). The
product is ``y = (x8 @ w8^T) * s_x * s_w^T + b`` computed by ``torch._scaled_mm`` (FP8 tensor
cores, float32 accumulation, bf16 output) on CUDA, and by the same formula in float32 on other
devices (so the arithmetic is testable anywhere). Weights take half the memory of bf16.

The weights are frozen: there is no gradient for them. Gradients do flow to the input (training
through the frozen Wan blocks): ``dL/dx = dL/dy @ (w8 * s_w)``, the dequantised weight, in the
gradient's dtype (the input quantisation is treated as the identity in backward, the usual
straight-through rule of FP8 training). The measured output error of the whole model is in
docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["FP8_MAX", "Float8Linear", "linear_dtype", "quantize_e4m3", "quantize_rows", "swap_linears_to_fp8"]

#: largest finite float8 e4m3 value
FP8_MAX = 448.0


def quantize_e4m3(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` -> ``(x8 float8_e4m3fn, scale float32)`` with ``x ~ x8 * scale``: one scale per slice
    over ``dims`` (``max |x|`` of the slice over 448), kept broadcastable (size 1 on ``dims``)."""
    amax = x.abs().amax(dim=dims, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    x8 = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return x8, scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, K)`` -> ``(x8 (M, K) float8_e4m3fn, scale (M, 1) float32)`` with ``x ~ x8 * scale``."""
    return quantize_e4m3(x, (1,))


def _fp8_matmul(x2d: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                out_dtype: torch.dtype) -> torch.Tensor:
    """``(M, in) -> (M, out)``: quantise the rows of ``x2d`` and multiply (module docstring)."""
    x8, sx = quantize_rows(x2d)
    if x2d.is_cuda:
        return torch._scaled_mm(x8, weight_fp8.t(), scale_a=sx, scale_b=weight_scale.t(), out_dtype=out_dtype)
    return ((x8.float() @ weight_fp8.float().t()) * sx * weight_scale.t()).to(out_dtype)


class _Float8MatMul(torch.autograd.Function):
    """:func:`_fp8_matmul` with the input gradient through the dequantised weight."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                out_dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(weight_fp8, weight_scale)
        ctx.in_dtype = x2d.dtype
        return _fp8_matmul(x2d, weight_fp8, weight_scale, out_dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        weight_fp8, weight_scale = ctx.saved_tensors
        weight = weight_fp8.to(grad.dtype) * weight_scale.to(grad.dtype)  # (out, in), dequantised
        return (grad @ weight).to(ctx.in_dtype), None, None, None


class Float8Linear(nn.Module):
    """A frozen linear layer with float8 e4m3 weights (see the module docstring).

    Attributes (buffers): ``weight_fp8`` ``(out, in)`` float8_e4m3fn, ``weight_scale`` ``(out, 1)``
    float32, ``bias`` ``(out,)`` in the output dtype or None.
    """

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_fp8.shape[1], weight_fp8.shape[0]
        self.out_dtype = out_dtype
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        """Quantise ``linear``'s weight row-wise; the output dtype is the weight's dtype."""
        w8, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(w8, scale, bias, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in)`` -> ``(..., out)`` in :attr:`out_dtype`."""
        shape = x.shape
        x2d = x.reshape(-1, self.in_features)
        if x.requires_grad and torch.is_grad_enabled():
            y = _Float8MatMul.apply(x2d, self.weight_fp8, self.weight_scale, self.out_dtype)
        else:
            y = _fp8_matmul(x2d, self.weight_fp8, self.weight_scale, self.out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 row-wise"


def linear_dtype(layer: nn.Module) -> torch.dtype:
    """The compute dtype of a linear layer: its weight's, or a :class:`Float8Linear`'s output dtype."""
    return layer.out_dtype if isinstance(layer, Float8Linear) else layer.weight.dtype


def swap_linears_to_fp8(module: nn.Module, include: Callable[[str, nn.Linear], bool]) -> list[str]:
    """Replace every ``nn.Linear`` under ``module`` for which ``include(name, linear)`` is true
    by a :class:`Float8Linear` (in place); returns the replaced names. ``torch._scaled_mm``
    needs both dimensions divisible by 16: other layers are left as they are."""
    replaced = []
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Linear) or not include(name, child):
            continue
        if child.in_features % 16 or child.out_features % 16:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Float8Linear.from_linear(child))
        replaced.append(name)
    return replaced
