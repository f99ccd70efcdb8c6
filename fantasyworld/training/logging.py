"""Training logs (rank 0): ``metrics.jsonl``, TensorBoard scalars and a progress bar.

Scalar names (one vocabulary with :mod:`fantasyworld.training.losses`):

* ``loss/objective``, the loss terms of each registered head (:mod:`fantasyworld.heads.registry`:
  ``loss/loss_depth``, ``loss/loss_pmap``, ``loss/loss_camera``, ``loss/loss_T``, ``loss/loss_R``,
  ``loss/loss_FL``) and, in stage 2, ``loss/loss_diff``: means over the global batch (every
  rank, every micro-batch); the progress bar shows each head's short name;
* ``optim/lr``, ``optim/grad_norm`` (before clipping), ``optim/skipped`` (1 when a
  non-finite loss or gradient skipped the step);
* ``perf/step_time_s``, ``perf/samples_per_s`` (global samples per second) and, on GPUs,
  ``perf/max_memory_gib`` (peak allocated memory of rank 0 so far).

``metrics.jsonl`` has one JSON object per log row with the same values (keys without the
prefixes) plus ``step``; the trainer writes a row every ``log.every`` steps (and at
checkpoints, validations, the last step and a stop) holding the means over the steps since
the previous row, with ``steps`` (how many) and ``skipped`` (how many of them were skipped;
:mod:`fantasyworld.training.step_stats`). On resume the rows after the resumed step are
dropped, so the file always describes one consistent run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fantasyworld.errors import ConfigError
from fantasyworld.heads.registry import HEADS

__all__ = ["METRICS_NAME", "MetricsLogger", "get_logger", "read_metrics"]

METRICS_NAME = "metrics.jsonl"
_PREFIX = {"lr": "optim", "grad_norm": "optim", "skipped": "optim", "step_time_s": "perf", "samples_per_s": "perf",
           "max_memory_gib": "perf", "steps": "perf"}


def _short_names() -> dict[str, str]:
    """Progress-bar labels: the objective, each registered head's objective term (its ``short``), the diffusion loss."""
    return {"objective": "obj", **{spec.loss_keys[0]: spec.short or spec.name for spec in HEADS.values()},
            "loss_diff": "diff"}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test capture swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ARG002 - the base class assigns it in __init__
        pass


def get_logger() -> logging.Logger:
    """The ``fantasyworld.train`` logger, printing ``[train] message`` to stderr once configured."""
    logger = logging.getLogger("fantasyworld.train")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[train] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``RUN/metrics.jsonl`` (empty if absent).

    A line that is not a JSON object (the last line torn by a kill mid-write, or any damaged
    line) is skipped with a warning naming the file and the line; a resumed run's
    :class:`MetricsLogger` then rewrites the file without it."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(lineno)
    if bad:
        get_logger().warning(f"{path}: skipped {len(bad)} line(s) that are not JSON objects "
                             f"(line {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''})")
    return rows


def _start_wandb(run_dir: Path, project: str, run_config: dict, start_step: int):
    """An offline W&B run in ``RUN/wandb`` (a resumed run starts a new offline run that
    continues the step axis)."""
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError('log.wandb needs Weights & Biases: pip install -e ".[wandb]"') from exc
    # console="off": the run records what is logged, not a copy of the terminal (wrapping the
    # process's stdout/stderr breaks under replaced streams, e.g. notebooks and test runners)
    return wandb.init(mode="offline", dir=str(run_dir), project=project, name=run_dir.name,
                      config=run_config, tags=[f"resumed-at-{start_step}"] if start_step else None,
                      settings=wandb.Settings(console="off"))


class MetricsLogger:
    """Writes metrics on the main rank; every method is a no-op elsewhere.

    Args:
        run_dir: run directory (``metrics.jsonl``, ``tb/``).
        enabled: this is the main rank.
        total_steps, start_step: progress-bar range; ``start_step > 0`` also truncates
            ``metrics.jsonl`` and purges TensorBoard events after it.
        tensorboard, progress, every, wandb: see :class:`~fantasyworld.training.config.LogConfig`.
        wandb_project, run_config: the W&B project and the run configuration it records.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True, every: int = 1, wandb: bool = False,
                 wandb_project: str = "fantasyworld", run_config: dict | None = None) -> None:
        self.enabled = enabled
        self.every = every
        self.path = Path(run_dir) / METRICS_NAME
        self.writer = None
        self.wandb_run = None
        self.bar = None
        if not enabled:
            return
        rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
        if wandb:
            self.wandb_run = _start_wandb(Path(run_dir), wandb_project, run_config or {}, start_step)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record step ``step`` (1-based count of finished optimizer steps)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if step % self.every == 0:
            self.log_scalars(step, {f"{_PREFIX.get(k, 'loss')}/{k}": v for k, v in values.items()})
        if self.bar is not None:
            short = _short_names()
            post = {short[k]: f"{values[k]:.4g}" for k in short if k in values and values[k] is not None}
            post["lr"] = f"{values.get('lr', 0.0):.2e}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(step - self.bar.n)  # a row may cover several steps (log.every)

    def set_total(self, total_steps: int) -> None:
        """The run's last step changed (a time budget's plan): the progress bar's end follows."""
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.refresh()

    def log_scalars(self, step: int, values: dict[str, Any]) -> None:
        """Finite numbers of ``values`` (full tag names, e.g. ``val/rot_err``) to TensorBoard and W&B."""
        if not self.enabled:
            return
        finite = {k: float(v) for k, v in values.items()
                  if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.writer is not None:
            for key, value in finite.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None and finite:
            self.wandb_run.log(finite, step=step)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """``(H, W, 3)`` uint8 images under their tag names to TensorBoard and W&B."""
        if not self.enabled:
            return
        if self.writer is not None:
            for key, arr in images.items():
                self.writer.add_image(key, arr, step, dataformats="HWC")
            self.writer.flush()
        if self.wandb_run is not None and images:
            import wandb

            self.wandb_run.log({k: wandb.Image(arr) for k, arr in images.items()}, step=step)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            get_logger().info(message)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
