"""Fitting a run's step count to a wall-clock budget (``time_budget_s``, ``train(deadline=...)``).

The rate is measured on the steps themselves, in windows between plan points: from the end of
step :data:`PLAN_FROM_STEP` (CUDA-graph capture at step 4, compilation and cuDNN autotuning are
behind it) to the end of step :data:`PLAN_AT_STEP`, where the first plan is made (both counted
from the run's first step: a run resumed before its plan was made plans from where it
resumed), then again at
:data:`REPLAN_FRACTIONS` of the steps the last plan left, each from the window since the last
point (a machine that was busy at the start, or got busy later, is followed). A plan is
``step + rate x time left x PLAN_MARGIN``, between ``step`` and the config's ``steps``. Plan
points are steps, not times, so that every rank of a distributed run reaches them together; the
trainer agrees the count across ranks (the smallest).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["PLAN_AT_STEP", "PLAN_FROM_STEP", "PLAN_MARGIN", "REPLAN_FRACTIONS", "StepPlanner", "fitted_steps"]

#: The first rate window starts at the end of this step ...
PLAN_FROM_STEP = 5
#: ... and ends at the end of this one, where the first plan is made.
PLAN_AT_STEP = 25
#: Later plans, at these shares of the steps the previous plan left after it.
REPLAN_FRACTIONS = (0.3, 0.6)
#: The share of the time left that planned steps may fill (log rows, the last checkpoint).
PLAN_MARGIN = 0.97


def fitted_steps(step: int, rate: float, seconds_left: float, cap: int) -> int:
    """Steps that fit: ``step`` done, ``rate`` steps per second, ``seconds_left`` to the end;
    in ``[step, cap]``."""
    fit = step + int(rate * max(seconds_left, 0.0) * PLAN_MARGIN)
    return min(max(fit, step), cap)


class StepPlanner:
    """Where a run measures its rate and plans (module docstring).

    Args:
        device: the training device (a CUDA device is synchronised at each plan point: the host
            runs ahead of the queued steps, so its clock alone would measure launches).
        clock: seconds, monotonic (the trainer's clock).
        start_step: the step the run starts from (0, or where it resumed).
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.monotonic,
                 start_step: int = 0) -> None:
        self.device = device
        self.clock = clock
        self.first_plan = start_step + PLAN_AT_STEP
        self.points = [start_step + PLAN_FROM_STEP, self.first_plan]
        self._mark: tuple[int, float] | None = None

    def due(self, step: int) -> bool:
        """``step`` is a plan point (call :meth:`rate` then)."""
        return bool(self.points) and step == self.points[0]

    def rate(self, step: int) -> tuple[float, int] | None:
        """``(steps per second, first step)`` of the window since the previous point (None at
        the first point, which only starts the window); the next window starts here."""
        self.points.pop(0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = self.clock()
        mark, self._mark = self._mark, (step, now)
        if mark is None:
            return None
        return (step - mark[0]) / max(now - mark[1], 1e-9), mark[0] + 1

    def planned(self, step: int, total: int) -> None:
        """A plan was made at ``step`` for ``total`` steps: the first one adds the later points."""
        if step == self.first_plan and len(self.points) == 0:
            later = sorted({step + int((total - step) * f) for f in REPLAN_FRACTIONS})
            self.points = [p for p in later if step < p < total]
