"""Learning-rate schedules: the multiplier of the peak learning rate at each optimizer step.

Every schedule starts with the same linear warmup, ``(s + 1) / warmup_steps`` for the
0-based step ``s < warmup_steps``; after it, the schedule named in ``optim.schedule``:

* ``constant``: 1;
* ``cosine``: half a cosine from 1 at the end of warmup down to ``min_ratio`` at the last
  step ``total_steps - 1``: ``min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2`` with
  ``p = (s - warmup) / (total - 1 - warmup)`` clipped to ``[0, 1]``.

The multiplier depends on the step alone, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["LR_SCHEDULES", "LR_SCHEDULE_NAMES", "lr_multiplier", "scheduled_lr"]


def _constant(progress: float, min_ratio: float) -> float:  # noqa: ARG001
    return 1.0


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


#: Post-warmup shapes: ``(progress in [0, 1], min_ratio) -> multiplier``.
LR_SCHEDULES: dict[str, Callable[[float, float], float]] = {"constant": _constant, "cosine": _cosine}
LR_SCHEDULE_NAMES = tuple(LR_SCHEDULES)


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
                  ) -> Callable[[int], float]:
    """The function ``step -> multiplier`` for ``torch.optim.lr_scheduler.LambdaLR``.

    Args:
        schedule: a key of :data:`LR_SCHEDULES`.
        warmup_steps: linear warmup length (0: none).
        total_steps: optimizer steps of the whole run (the cosine reaches ``min_ratio`` at
            the last one).
        min_ratio: the cosine's floor as a fraction of the peak.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULE_NAMES)}")
    shape = LR_SCHEDULES[schedule]
    decay_steps = max(total_steps - 1 - warmup_steps, 1)

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
        return shape(progress, min_ratio)

    return fn


def scheduled_lr(scheduler: Any) -> float:
    """The learning rate of the first parameter group at the scheduler's current step, as a
    float computed on the host (a ``LambdaLR`` over :func:`lr_multiplier`): a CUDA-graphed
    run keeps ``lr`` in a device tensor, which the log must not read back every step."""
    return float(scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch))
