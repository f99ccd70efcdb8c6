"""A curriculum over clip difficulty: the easiest clips first, every clip by the end of a ramp.

Each training clip gets a difficulty from its cameras (a measure of :data:`DIFFICULTY_MEASURES`,
e.g. ``rotation``: the largest rotation of any frame away from frame 0, in degrees). During the
first ``ramp_steps`` optimizer steps a sample is drawn from the **pool** of the easiest clips,
whose size grows linearly from ``start_fraction`` of the dataset at step 0 to all of it at
``ramp_steps``::

    pool(s) = ceil(N * (start + (1 - start) * s / ramp_steps))      for s < ramp_steps

Stream position ``p`` (step ``s = p // G``, ``G`` the global batch) takes the clip of rank
``j`` in the order of difficulty, ``j`` drawn uniformly below ``pool(s)`` by a generator
seeded with ``(seed, p)``: like the unbucketed stream (:mod:`fantasyworld.training.data`) a
position alone fixes its sample, so a split over ranks or accumulation and a resumed run
see the same samples. From ``ramp_steps`` on the curriculum hands back to the stream's epoch
permutations, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fantasyworld.geometry.cameras import relative_to_first, rotation_angle_deg, w2c_to_c2w

__all__ = ["DIFFICULTY_MEASURES", "CurriculumOrder", "clip_poses", "register_difficulty"]

_STREAM = 4  # seed stream of the curriculum's draws (the stream's permutations use 1, buckets 2-3)

DIFFICULTY_MEASURES: dict[str, Callable[[np.ndarray], float]] = {}
"""Name -> function of a clip's world-to-camera poses ``(T, 4, 4)`` (OpenCV axes) returning
its difficulty (larger: harder)."""


def register_difficulty(name: str) -> Callable[[Callable[[np.ndarray], float]], Callable[[np.ndarray], float]]:
    """Decorator adding a difficulty measure to :data:`DIFFICULTY_MEASURES` under ``name``."""

    def add(fn: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
        if name in DIFFICULTY_MEASURES:
            raise ValueError(f"difficulty measure {name!r} is already registered")
        DIFFICULTY_MEASURES[name] = fn
        return fn

    return add


@register_difficulty("rotation")
def rotation_difficulty(w2c: np.ndarray) -> float:
    """Largest rotation angle (degrees) of any frame relative to frame 0: what the identity-pose
    baseline's rotation error grows with."""
    rel = relative_to_first(np.asarray(w2c, dtype=np.float64))
    return float(rotation_angle_deg(rel[:, :3, :3]).max())


@register_difficulty("translation")
def translation_difficulty(w2c: np.ndarray) -> float:
    """Largest distance of any camera centre from frame 0's, in the clip's world units."""
    centres = w2c_to_c2w(np.asarray(w2c, dtype=np.float64))[:, :3, 3]
    return float(np.linalg.norm(centres - centres[:1], axis=-1).max())


def clip_poses(dataset: Any, index: int) -> np.ndarray:
    """World-to-camera poses ``(T, 4, 4)`` of item ``index``: ``dataset.read_w2c(index)`` where the
    dataset has it (the cache and the raw dataset read only the cameras), else its item's ``w2c``."""
    read = getattr(dataset, "read_w2c", None)
    w2c = read(index) if read is not None else dataset[index]["w2c"]
    return np.asarray(w2c, dtype=np.float64)


class CurriculumOrder:
    """Dataset indices of the stream's positions during a curriculum's ramp (module docstring).

    Args:
        difficulty: ``(N,)`` difficulty of every dataset item.
        start_fraction: share of the easiest items in the pool at step 0, in ``(0, 1]``.
        ramp_steps: optimizer steps until the pool holds every item (> 0).
        global_batch: ``G``, positions per optimizer step.
        seed: the run seed.
    """

    def __init__(self, difficulty: np.ndarray, start_fraction: float, ramp_steps: int, global_batch: int,
                 seed: int) -> None:
        difficulty = np.asarray(difficulty, dtype=np.float64)
        if difficulty.ndim != 1 or not len(difficulty) or not np.isfinite(difficulty).all():
            raise ValueError("difficulty must be a non-empty vector of finite values")
        if not 0 < start_fraction <= 1 or ramp_steps < 1 or global_batch < 1:
            raise ValueError(f"need 0 < start_fraction <= 1, ramp_steps >= 1 and global_batch >= 1, got "
                             f"{start_fraction}, {ramp_steps}, {global_batch}")
        self.difficulty = difficulty
        self.ranked = np.argsort(difficulty, kind="stable")  # easiest first
        self.start_fraction, self.ramp_steps = float(start_fraction), int(ramp_steps)
        self.global_batch, self.seed = int(global_batch), int(seed)

    def active(self, position: int) -> bool:
        """Whether ``position`` falls in the ramp (its step is below ``ramp_steps``)."""
        return int(position) // self.global_batch < self.ramp_steps

    def pool_size(self, step: int) -> int:
        """Easiest items a sample of optimizer step ``step`` is drawn from."""
        n = len(self.ranked)
        share = self.start_fraction + (1.0 - self.start_fraction) * min(1.0, step / self.ramp_steps)
        return max(1, min(n, math.ceil(n * share - 1e-9)))

    def index(self, position: int) -> int:
        """The dataset index of stream ``position`` (during the ramp)."""
        pool = self.pool_size(int(position) // self.global_batch)
        j = int(np.random.default_rng([self.seed, _STREAM, int(position)]).integers(pool))
        return int(self.ranked[j])

    def summary(self) -> str:
        """One line for the log: the measure's range and the pool's start."""
        q = np.quantile(self.difficulty, [0.0, self.start_fraction, 1.0])
        return (f"{len(self.ranked)} clips, difficulty {q[0]:.3g} .. {q[2]:.3g}; the first steps draw from the "
                f"easiest {self.start_fraction:.0%} (up to {q[1]:.3g}), all of them from step {self.ramp_steps}")
