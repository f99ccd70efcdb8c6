"""Frame sampling and one crop/resize applied identically to video, depth, points and K.

Geometry of the transform (corner pixel convention, see
:mod:`fantasyworld.geometry.cameras`): the source ``(H, W)`` is scaled by
``(sy, sx) = (Hr / H, Wr / W)`` to ``(Hr, Wr)``, the smallest size that covers the
target with the aspect ratio kept (rounded to integers, so ``sx`` and ``sy`` may differ by
a rounding step), then a ``(Ht, Wt)`` window at ``(top, left)`` is cropped. A source
coordinate ``x`` lands at ``x * sx - left``. Therefore

* video frames are resampled with ``align_corners=False`` bilinear filtering (antialiased
  when shrinking) and cropped;
* depth and points are resampled with **nearest** neighbours through the same map (an
  output pixel centre ``x'`` reads the source pixel ``floor((x' + left) / sx)``), so every
  output value is a true surface sample and never a blend across a depth edge; the world
  point stored at an output pixel projects (with the new K) into that same output pixel;
* ``K`` gets ``resize_intrinsics`` then ``crop_intrinsics``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fantasyworld.geometry.cameras import crop_intrinsics, resize_intrinsics


def check_frame_count(num_frames: int) -> None:
    """Wan's VAE needs ``4k + 1`` frames."""
    if num_frames < 1 or (num_frames - 1) % 4 != 0:
        raise ValueError(f"num_frames must be 4k+1 (1, 5, ..., 49, 81), got {num_frames}")


def sample_frame_indices(
    total: int, num_frames: int, stride: int = 1, start: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray | None:
    """Indices ``start + stride * arange(num_frames)``.

    ``start=None`` picks a uniformly random start with ``rng`` (or 0 without ``rng``).
    Returns ``None`` when the clip is too short for ``(num_frames - 1) * stride + 1``.
    """
    span = (num_frames - 1) * stride + 1
    if total < span:
        return None
    if start is None:
        start = int(rng.integers(0, total - span + 1)) if rng is not None else 0
    start = min(start, total - span)
    return start + stride * np.arange(num_frames)


@dataclass(frozen=True)
class CropResize:
    """Resize ``src_hw -> resized_hw`` then crop ``out_hw`` at ``(top, left)``."""

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    out_hw: tuple[int, int]
    top: int
    left: int

    @classmethod
    def plan(
        cls, src_hw: tuple[int, int], out_hw: tuple[int, int], crop: str = "center",
        rng: np.random.Generator | None = None,
    ) -> CropResize:
        """Cover ``out_hw`` keeping the aspect ratio, then crop (``center`` or ``random``)."""
        h, w = src_hw
        ht, wt = out_hw
        scale = max(ht / h, wt / w)
        hr = max(ht, int(round(h * scale)))
        wr = max(wt, int(round(w * scale)))
        if crop == "random" and rng is not None:
            top = int(rng.integers(0, hr - ht + 1))
            left = int(rng.integers(0, wr - wt + 1))
        else:
            top, left = (hr - ht) // 2, (wr - wt) // 2
        return cls((h, w), (hr, wr), (ht, wt), top, left)

    @property
    def identity(self) -> bool:
        return self.src_hw == self.out_hw == self.resized_hw

    def intrinsics(self, k: np.ndarray) -> np.ndarray:
        """``(..., 3, 3)`` pixel K at the source resolution -> at the output."""
        return crop_intrinsics(resize_intrinsics(k, self.src_hw, self.resized_hw), self.top, self.left)

    def index_maps(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Source row ``(Ht,)`` and column ``(Wt,)`` indices of nearest sampling, or
        ``None`` for the identity."""
        if self.identity:
            return None
        (h, w), (hr, wr), (ht, wt) = self.src_hw, self.resized_hw, self.out_hw
        rows = np.floor((np.arange(ht) + self.top + 0.5) * h / hr).astype(np.int64).clip(0, h - 1)
        cols = np.floor((np.arange(wt) + self.left + 0.5) * w / wr).astype(np.int64).clip(0, w - 1)
        return rows, cols

    def nearest(self, maps: np.ndarray) -> np.ndarray:
        """Depth ``(T, H, W)`` or points ``(T, H, W, C)`` -> output size, nearest sampling."""
        maps_rc = self.index_maps()
        if maps_rc is None:
            return maps
        rows, cols = maps_rc
        return maps[:, rows[:, None], cols[None, :]]

    def frames(self, video: torch.Tensor) -> torch.Tensor:
        """Frames ``(T, C, H, W)`` -> ``(T, C, Ht, Wt)`` (bilinear, antialias when shrinking).

        uint8 input (best in channels-last memory, e.g. a permuted ``(T, H, W, C)`` array)
        takes torch's fast uint8 path (~7x faster than float on CPU) and stays uint8.
        """
        if self.identity:
            return video
        if self.resized_hw != self.src_hw:
            shrink = self.resized_hw[0] < self.src_hw[0] or self.resized_hw[1] < self.src_hw[1]
            video = F.interpolate(video, size=self.resized_hw, mode="bilinear", align_corners=False,
                                  antialias=shrink)
        ht, wt = self.out_hw
        return video[:, :, self.top:self.top + ht, self.left:self.left + wt]
