"""The geometry branch's ViT block (VGGT style, with FantasyWorld's timestep modulation).

One class serves the geometry frame blocks (``vggt.aggregator.frame_blocks.N``), the global
blocks inside the IRG layers (``IRGBlock.N.x_agg``) and the camera head's trunk
(``vggt.camera_head.trunk.N``). Sub-module names equal the official ones, so released
weights load by prefix rename only: ``norm1``, ``attn.qkv``, ``attn.q_norm``, ``attn.k_norm``,
``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``,
``modulation``.

Modulation (official ``Block``, verified against FantasyWorld ``vggt/layers/block.py``):
``e = modulation + temb6`` (a learned ``(1, 6, D)`` offset added to the projected timestep,
*not* a projection of it), split into ``e0..e5`` of shape ``(N, 1, D)``::

    attention half:  x = x + ls1(attn(norm1(x) * (1 + e1) + e0))
    FFN half:        x = x + ls2(mlp(norm2(x)) * (1 + e4) + e3) * e5

so ``e2`` (the would-be attention gate) is unused, and the FFN's shift/scale act on the MLP
*output* (before LayerScale), gated by ``e5``. With ``temb6=None`` the block is a plain VGGT
block (``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``); the official camera-head trunk
always runs this way, so its ``modulation`` parameters are loaded but unused.

Layouts: frame attention keeps tokens as ``(B*S, P, D)``, global attention as ``(B, S*P, D)``.
``temb6`` is ``(B, 6, D)``; when ``x`` has ``N = B*S`` rows it is repeated per frame
(``repeat_interleave``, batch-major, as the official code does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fantasyworld.layers.attention import attention

# (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each (N, 1, D) float32
Modulation = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
RotaryFn = Callable[[torch.Tensor], torch.Tensor]


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma`` (``gamma`` initialised to ``init_values``)."""

    def __init__(self, dim: int, init_values: float = 0.01) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class GeoMlp(nn.Module):
    """``fc2(GELU(fc1(x)))``; ``(..., in_features) -> (..., out_features)``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GeoAttention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm qk-norm and 2D RoPE.

    Order (VGGT): ``qkv`` -> split heads -> ``q_norm``/``k_norm`` -> RoPE -> SDPA -> ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RotaryFn | None = None) -> torch.Tensor:
        """``x`` ``(N, L, D)`` -> ``(N, L, D)``; ``rope`` rotates ``(N, heads, L, head_dim)``."""
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = attention(q, k, v)  # (N, heads, L, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class GeoBlock(nn.Module):
    """Pre-norm ViT block: attention + MLP, LayerScale, optional qk-norm / RoPE / adaLN.

    Args:
        dim: token width ``D``.
        num_heads: attention heads (``D`` divisible by it).
        mlp_ratio: MLP hidden width is ``int(D * mlp_ratio)``.
        qk_norm: LayerNorm on each head's queries and keys (aggregator blocks: True,
            camera-head trunk: False).
        init_values: LayerScale initial value (official 0.01).
        modulated: create the ``modulation`` ``(1, 6, D)`` offset (official blocks all have
            it, initialised ``randn / sqrt(D)``). Without it ``temb6`` must be None.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        init_values: float = 0.01,
        modulated: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GeoAttention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GeoMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)
        self.modulation: nn.Parameter | None = (
            nn.Parameter(torch.randn(1, 6, dim) / dim**0.5) if modulated else None
        )

    def modulation_terms(self, temb6: torch.Tensor | None, n: int) -> Modulation | None:
        """Split ``modulation + temb6`` into the six ``(n, 1, D)`` float32 terms.

        Args:
            temb6: projected timestep ``(B, 6, D)`` (or ``(n, 6, D)``), or None.
            n: leading size of the token tensor; must be a multiple of ``B``.

        Returns:
            ``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)`` or None when
            ``temb6`` is None.
        """
        if temb6 is None:
            return None
        if self.modulation is None:
            raise ValueError("this GeoBlock was built with modulated=False but got temb6")
        b = temb6.shape[0]
        if n % b != 0:
            raise ValueError(f"token batch {n} is not a multiple of temb6 batch {b}")
        if n != b:
            temb6 = temb6.repeat_interleave(n // b, dim=0)  # (B, 6, D) -> (B*S, 6, D)
        e = self.modulation.float() + temb6.float()
        # Six separate slices, not ``e.chunk(6, dim=1)``: the same values, but an unused term (e2)
        # then has no gradient to fill in. With ``chunk`` the backward concatenates the five term
        # gradients with a zero block, and torch 2.11's inductor miscompiled that at 25+ frames of
        # 336x592 (this gradient alone wrong, by 86-354% relative, varying between calls;
        # ``benchmarks/compile_grad_check.py``, docs/benchmarks.md).
        return tuple(e[:, i : i + 1] for i in range(6))  # type: ignore[return-value]

    def attention_half(
        self, x: torch.Tensor, mod: Modulation | None = None, rope: RotaryFn | None = None
    ) -> torch.Tensor:
        """``x + ls1(attn(modulated norm1(x)))``; ``x`` ``(N, L, D)`` -> ``(N, L, D)``."""
        h = self.norm1(x)
        if mod is not None:
            h = (h.float() * (1 + mod[1]) + mod[0]).to(x.dtype)
        return x + self.ls1(self.attn(h, rope=rope))

    def ffn_half(self, x: torch.Tensor, mod: Modulation | None = None) -> torch.Tensor:
        """``x + ls2(mlp(norm2(x)) * (1 + e4) + e3) * e5`` (or plain without ``mod``)."""
        h = self.mlp(self.norm2(x))
        if mod is None:
            return x + self.ls2(h)
        h = self.ls2(h.float() * (1 + mod[4]) + mod[3]) * mod[5]
        return x + h.to(x.dtype)

    def forward(
        self, x: torch.Tensor, temb6: torch.Tensor | None = None, rope: RotaryFn | None = None
    ) -> torch.Tensor:
        """Full block.

        Args:
            x: tokens ``(N, L, D)``.
            temb6: projected timestep ``(B, 6, D)`` with ``N`` a multiple of ``B``, or None.
            rope: rotation for q/k (e.g. ``Rope2D.bind(positions, head_dim)``), or None.

        Returns:
            ``(N, L, D)``.
        """
        mod = self.modulation_terms(temb6, x.shape[0])
        x = self.attention_half(x, mod, rope)
        return self.ffn_half(x, mod)
