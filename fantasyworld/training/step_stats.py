"""A run's per-step values kept on the device between two log rows.

The trainer never reads a loss, a gradient norm or a skip flag back to the host inside a
step: each step adds its values to the running sums here (device tensors, no
synchronisation), and every ``log.every`` steps (and at checkpoints, validations, the last
step and a stop) :meth:`StepStats.flush` reads them back in one copy, averages them over the
ranks and returns one log row. On a GPU the host then queues the next steps while the
device still runs the earlier ones.

A log row holds, over the steps since the previous row:

* each loss term of :func:`~fantasyworld.training.losses.loss_keys`: the mean over the
  steps that were not skipped of the step's global-batch mean (NaN when every step was
  skipped);
* ``grad_norm``: the mean global gradient norm of those steps (before clipping);
* ``skipped``: how many steps were skipped (a non-finite loss or gradient norm);
* ``steps``: how many steps the row covers and ``step_time_s``: wall-clock seconds per step
  over them, measured once the device has finished them.

Skipped steps in a row are counted on the device too: :attr:`StepStats.streak` (the
current run of skips, carried across rows and restored on resume) and the longest run
reached since the previous row (:attr:`StepStats.max_streak`), which the trainer compares
with ``max_nonfinite_steps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fantasyworld.errors import NonFiniteLossError
from fantasyworld.training.parallel import World, all_reduce_max, all_reduce_mean

__all__ = ["StepStats"]


class StepStats:
    """Device-side running sums of the steps since the last log row (module docstring).

    Args:
        keys: the loss terms, in the order of the vectors given to :meth:`add`.
        device: where the sums live (the training device).
        streak: skipped steps in a row before the first step (a resumed run's).
    """

    def __init__(self, keys: tuple[str, ...], device: torch.device, streak: int = 0) -> None:
        self.keys = keys
        self.device = device
        self._streak = torch.full((), float(streak), dtype=torch.float64, device=device)
        self.streak = streak
        self.max_streak = streak
        self._reset()

    def _reset(self) -> None:
        zeros = torch.zeros(len(self.keys) + 3, dtype=torch.float64, device=self.device)
        self._sums = zeros  # [loss terms..., grad norm, steps kept, steps skipped]
        self._max_streak = self._streak.clone()
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, means: torch.Tensor, grad_norm: torch.Tensor, skipped: torch.Tensor) -> None:
        """One finished step: ``means`` ``(len(keys),)`` this rank's loss terms (means over its
        samples of the step), ``grad_norm`` the global norm (scalar), ``skipped`` a bool
        scalar, identical on every rank. Nothing is read back to the host."""
        kept = ~skipped
        values = torch.cat([means.double(), grad_norm.reshape(1).double().to(self.device)])
        step = torch.cat([torch.where(kept, values, torch.zeros_like(values)),
                          kept.reshape(1).double(), skipped.reshape(1).double()])
        self._sums = self._sums + step
        self._streak = torch.where(skipped, self._streak + 1, torch.zeros_like(self._streak))
        self._max_streak = torch.maximum(self._max_streak, self._streak)
        self.steps += 1

    def flush(self, world: World, stop_requests: list[bool] | None = None) -> tuple[dict[str, float], list[bool]]:
        """Read the sums back (one device synchronisation), average the loss terms over the
        ranks, reset, and return ``(row, stops)``: the row of the module docstring and, for
        each of ``stop_requests`` (this rank's flags), whether any rank raised it."""
        requests = [float(bool(r)) for r in stop_requests or []]
        k = len(self.keys)
        host = torch.cat([self._sums, self._streak.reshape(1), self._max_streak.reshape(1)]).cpu()
        seconds = time.perf_counter() - self.started
        losses = all_reduce_mean(host[:k], world)
        stops = all_reduce_max(torch.tensor(requests, dtype=torch.float64), world) if requests else torch.zeros(0)
        grad_norm, kept, skipped, streak, max_streak = (float(v) for v in host[k:])
        row = {key: float(losses[j]) / kept if kept else float("nan") for j, key in enumerate(self.keys)}
        row.update(grad_norm=grad_norm / kept if kept else float("nan"), skipped=skipped, steps=float(self.steps),
                   step_time_s=seconds / max(self.steps, 1))
        self.streak, self.max_streak = int(streak), int(max_streak)
        self._reset()
        return row, [bool(v > 0) for v in stops.tolist()]

    def report_skips(self, step: int, row: dict[str, float], limit: int, write: Callable[[str], None]) -> None:
        """Warn (``write``) about the skipped steps of the log ``row`` ending at ``step``;
        raise :class:`~fantasyworld.errors.NonFiniteLossError` when ``limit`` skips in a row
        were reached since the previous row."""
        if not row["skipped"]:
            return
        first = step - int(row["steps"]) + 1
        where = f"step {step}" if first == step else f"steps {first}-{step}"
        write(f"warning: {where}: {int(row['skipped'])} step(s) with a non-finite loss or gradient norm "
              f"(objective {row['objective']}, grad norm {row['grad_norm']}) skipped "
              f"({self.streak} in a row, limit {limit})")
        if self.max_streak >= limit:
            raise NonFiniteLossError(
                f"{self.max_streak} optimizer steps in a row had a non-finite loss or gradient (last: step {step}); "
                f"stopping. Lower optim.lr, check the data (fantasyworld data validate) or raise max_nonfinite_steps")
