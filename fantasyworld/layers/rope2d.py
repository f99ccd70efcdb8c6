"""2D rotary position embedding (RoPE) for the geometry branch's frame and global blocks.

Convention (VGGT / FantasyWorld official, base frequency 100):

* each attention head's features are split in two halves; the first half is rotated by the
  token's row ``y``, the second half by its column ``x``;
* inside each half (width ``d = head_dim / 2``) the angle of feature pair ``i`` is
  ``pos * base ** (-2 i / d)``, laid out "rotate-half" style (pairs are ``(j, j + d/2)``);
* positions are integers. The official aggregator gives patch ``(row, col)`` of an
  ``h x w`` grid the position ``(row + 1, col + 1)`` and the 5 special tokens (1 camera + 4
  register) the position ``(0, 0)``; a rotation by position 0 is the identity, so special
  tokens are left unrotated. :func:`frame_positions` builds exactly that layout.

Global attention over ``S`` frames reuses the per-frame positions tiled ``S`` times (no
temporal position), as the official aggregator does.
"""

from __future__ import annotations

import torch
from torch import nn


def frame_positions(
    h: int, w: int, num_special: int = 5, device: torch.device | str | None = None
) -> torch.Tensor:
    """Integer ``(y, x)`` positions of one frame's tokens, special tokens first.

    Args:
        h, w: token grid of the frame.
        num_special: number of leading special tokens (camera + registers), given ``(0, 0)``.
        device: device of the result.

    Returns:
        Long tensor of shape ``(num_special + h * w, 2)``: ``(0, 0)`` for the special tokens,
        then ``(row + 1, col + 1)`` for the patches in row-major order.
    """
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1  # (h*w, 2), row-major
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0)


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    """``(a, b) -> (-b, a)`` on the two halves of the last dimension."""
    a, b = t.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Rotary2D:
    """Precomputed 2D rotation for one set of token positions; call it on ``q`` or ``k``.

    Built by :meth:`Rope2D.bind`. Calling it on a tensor of shape
    ``(N, num_heads, L, head_dim)`` returns the rotated tensor of the same shape and dtype.
    The tables broadcast over ``N`` when the positions were given for a single sequence.
    """

    def __init__(self, cos_y: torch.Tensor, sin_y: torch.Tensor, cos_x: torch.Tensor, sin_x: torch.Tensor):
        # each table: (N or 1, 1, L, head_dim / 2), float32
        self.cos_y, self.sin_y, self.cos_x, self.sin_x = cos_y, sin_y, cos_x, sin_x

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        ty, tx = t.float().chunk(2, dim=-1)  # (N, H, L, head_dim / 2) each
        ty = ty * self.cos_y + _rotate_half(ty) * self.sin_y
        tx = tx * self.cos_x + _rotate_half(tx) * self.sin_x
        return torch.cat([ty, tx], dim=-1).to(t.dtype)


class Rope2D(nn.Module):
    """2D RoPE with base frequency ``freq`` (official geometry branch: 100).

    Holds no parameters or buffers, so it never appears in a state dict. Use
    ``rotary = rope.bind(positions, head_dim)`` once per forward pass and hand ``rotary`` to
    every block (it is the ``rope`` argument of :class:`fantasyworld.layers.geo_block.GeoBlock`).
    """

    def __init__(self, freq: float = 100.0) -> None:
        super().__init__()
        self.freq = float(freq)

    def _tables(self, pos: torch.Tensor, half_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables ``(..., L, half_dim)`` for integer positions ``pos`` ``(..., L)``."""
        inv_freq = 1.0 / (
            self.freq ** (torch.arange(0, half_dim, 2, device=pos.device, dtype=torch.float32) / half_dim)
        )
        angles = pos.float()[..., None] * inv_freq  # (..., L, half_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (..., L, half_dim)
        return angles.cos(), angles.sin()

    def bind(self, positions: torch.Tensor, head_dim: int) -> Rotary2D:
        """Precompute the rotation for ``positions``.

        Args:
            positions: integer ``(y, x)`` per token, shape ``(L, 2)`` or ``(N, L, 2)``.
                Position ``(0, 0)`` is the identity (use it for special tokens).
            head_dim: attention head width; must be divisible by 4.

        Returns:
            A :class:`Rotary2D` callable for tensors ``(N, num_heads, L, head_dim)``.
        """
        if head_dim % 4 != 0:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
        if positions.dim() == 2:
            positions = positions[None]
        half = head_dim // 2
        cos_y, sin_y = self._tables(positions[..., 0], half)
        cos_x, sin_x = self._tables(positions[..., 1], half)
        # (N, L, half) -> (N, 1, L, half): broadcast over heads
        return Rotary2D(cos_y[:, None], sin_y[:, None], cos_x[:, None], sin_x[:, None])

    def forward(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``t`` ``(N, num_heads, L, head_dim)`` by ``positions`` ``(L, 2)`` or ``(N, L, 2)``."""
        return self.bind(positions, t.shape[-1])(t)

    def extra_repr(self) -> str:
        return f"freq={self.freq:g}"
