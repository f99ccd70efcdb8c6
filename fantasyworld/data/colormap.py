"""Colour maps for figures: Turbo and Turbo-coloured inverse depth (numpy, no plotting library).

Used by the annotation report (:mod:`fantasyworld.data.annotate.report`), the generation
outputs (``depth.mp4``) and the evaluation report.
"""

from __future__ import annotations

import numpy as np

# Turbo colormap, polynomial approximation (Mikhailov, Google AI, 2019), x in [0, 1].
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(x: np.ndarray) -> np.ndarray:
    """Values ``(...)`` in ``[0, 1]`` (clipped; NaN -> 0) -> RGB ``(..., 3)`` uint8 (Turbo:
    0 dark blue, 1 dark red)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    powers = np.stack([x**i for i in range(6)], -1)  # (..., 6)
    rgb = np.stack([powers @ np.asarray(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], -1)
    return (rgb.clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Depth ``(T, H, W)`` -> Turbo-coloured inverse depth ``(T, H, W, 3)`` uint8, near dark
    red, far blue (Turbo's ``[0.1, 1]`` range), normalised by the ``low``/``high``
    percentiles of the whole clip (so colours are comparable across frames). Non-finite or
    non-positive depth is black."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan)
    if valid.any():
        lo, hi = np.percentile(inv[valid], [low, high])
    else:
        lo, hi = 0.0, 1.0
    norm = ((inv - lo) / max(hi - lo, 1e-12)).clip(0.0, 1.0)
    rgb = turbo(0.1 + 0.9 * norm)  # the polynomial's bottom 10% is a muddy grey, skip it
    rgb[~valid] = 0
    return rgb
