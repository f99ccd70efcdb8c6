"""Point maps of an annotated clip: world points unprojected from the aligned depth.

``points[t, v, u] = c2w_t (z K^-1 [u + 0.5, v + 0.5, 1])`` with ``z = depth[t, v, u]``
(:func:`fantasyworld.geometry.cameras.unproject_depth`: OpenCV axes, world-to-camera
``w2c``, pixel centres at ``+0.5``), the same convention as the cameras written beside
them. Pixels with no valid depth get the point ``(0, 0, 0)`` and depth 0, which the
loader reads as invalid.
"""

from __future__ import annotations

import numpy as np

from fantasyworld.geometry.cameras import unproject_depth


def world_points(depth: np.ndarray, w2c: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` float32 world points of ``depth`` ``(T, H, W)`` (0 = invalid)
    seen by cameras ``w2c`` ``(T, 4, 4)`` with intrinsics ``k`` ``(T, 3, 3)``."""
    points = unproject_depth(depth.astype(np.float64), w2c, k).astype(np.float32)
    points[~(depth > 0)] = 0.0
    return points
