"""Training data stream: a seeded, resumable, device-split sample order.

The data is an endless stream of *positions* ``p = 0, 1, 2, ...``. Position ``p`` is sample
``perm_e[p % N]`` of epoch ``e = p // N``, where ``perm_e`` is a permutation of the ``N``
dataset items seeded by ``(seed, e)``. Optimizer step ``s`` (0-based) consumes the
``G = batch_size x world_size x grad_accum`` positions ``[s G, (s + 1) G)``; micro-batch
``m`` of rank ``r`` takes ``b = batch_size`` consecutive ones starting at
``s G + (m W + r) b`` (``W`` = world size), the DistributedSampler-style split.

Consequences:

* the samples of a step do not depend on how ``G`` is split over devices and
  accumulation steps (1 process with batch ``2b`` sees what 2 processes with ``b`` see);
* the data position is the step itself: resuming at step ``s`` restarts the stream at
  ``s G`` without reading the skipped samples;
* per-sample randomness (noise, timestep) is keyed by the position
  (:func:`~fantasyworld.models.inputs.sample_seed`),
  so it is also independent of the split and of resumption.

**Buckets** (``data.buckets``, :mod:`fantasyworld.data.buckets`): a dataset with
``bucket_of`` maps positions through a
:class:`~fantasyworld.data.bucket_sampler.BucketBatchSampler` instead of ``perm_e``: every
global batch of ``G`` positions is one bucket, epochs are that sampler's epochs (each
bucket topped up to a multiple of ``G``), and everything above still holds. A checkpoint
then also records the sampler's position and fingerprint (:func:`stream_state`); resuming
with data whose bucket assignment differs is refused (:func:`check_stream_state`), because
the rest of the epoch would not be the rest of the saved one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fantasyworld.data.bucket_sampler import BucketBatchSampler
from fantasyworld.data.buckets import Bucket, BucketSettings, resolve_bucket_config
from fantasyworld.data.curriculum import CurriculumOrder
from fantasyworld.data.loader import collate
from fantasyworld.errors import CheckpointError
from fantasyworld.models.inputs import sample_seed

__all__ = ["PositionDataset", "StepBatchSampler", "bucket_kwargs", "build_stream_loader", "camera_dropped",
           "check_stream_state", "config_buckets", "log_buckets", "num_buckets", "sample_seed", "stream_state"]

STREAM_STATE_KEY = "data_buckets"
"""Key of the bucket sampler's position in a checkpoint's state (absent without buckets)."""


class _DataSettings(Protocol):
    num_frames: int | None
    height: int | None
    width: int | None
    buckets: BucketSettings


def config_buckets(d: _DataSettings) -> tuple[Bucket, ...] | None:
    """The bucket set of a run's ``data`` config (None: buckets off); generated buckets default
    to ``data.height x data.width`` pixels and ``data.num_frames`` frames."""
    area = d.height * d.width if d.height and d.width else None
    return resolve_bucket_config(d.buckets, area, d.num_frames)


def bucket_kwargs(d: _DataSettings) -> dict[str, Any]:
    """Keyword arguments of :class:`~fantasyworld.data.loader.RawClipDataset` for ``data.buckets``
    (empty when off, so the dataset is exactly the unbucketed one)."""
    buckets = config_buckets(d)
    if buckets is None:
        return {}
    return {"buckets": buckets, "unfit": d.buckets.unfit, "max_crop": d.buckets.max_crop}


class PositionDataset(Dataset):
    """Maps a stream position to ``(epoch, dataset index)`` and returns that item.

    Each item gets ``sample_position`` (int64 scalar tensor). A dataset with ``set_epoch``
    (random crops of :class:`~fantasyworld.data.loader.RawClipDataset`) is told the epoch
    before each read, so crops vary per epoch and stay reproducible. ``order`` (a
    :class:`~fantasyworld.data.bucket_sampler.BucketBatchSampler`) replaces the epoch
    permutation with its bucketed plan. ``curriculum`` (a
    :class:`~fantasyworld.data.curriculum.CurriculumOrder`, never with ``order``) picks the items
    of the positions in its ramp from the easiest clips, and the permutation does the rest.
    """

    def __init__(self, dataset: Dataset, seed: int, order: BucketBatchSampler | None = None,
                 curriculum: CurriculumOrder | None = None) -> None:
        if order is not None and curriculum is not None:
            raise ValueError("a curriculum and buckets cannot order one stream together")
        self.dataset = dataset
        self.seed = seed
        self.order = order
        self.curriculum = curriculum
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            raise ValueError("the training dataset is empty")
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, stream=1))
            self._perm = torch.randperm(self.size, generator=gen)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def locate(self, position: int) -> tuple[int, int]:
        """``(epoch, dataset index)`` of a stream position."""
        if self.order is not None:
            return self.order.locate(position)
        epoch, offset = divmod(position, self.size)
        if self.curriculum is not None and self.curriculum.active(position):
            return epoch, self.curriculum.index(position)
        return epoch, int(self._permutation(epoch)[offset])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> dict[str, Any]:
        epoch, index = self.locate(int(position))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = dict(self.dataset[index])
        item["sample_position"] = torch.tensor(int(position), dtype=torch.int64)
        return item


class StepBatchSampler(Sampler[list[int]]):
    """Endless micro-batches of stream positions for one rank, from ``start_step`` on.

    Yields, for steps ``start_step, start_step + 1, ...`` and micro-batches
    ``m = 0 .. grad_accum - 1``, the positions ``s G + (m W + r) b + [0, b)``.
    """

    def __init__(self, batch_size: int, world_size: int, rank: int, grad_accum: int, start_step: int = 0) -> None:
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.grad_accum = grad_accum
        self.start_step = start_step

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum

    def positions(self, step: int, micro: int) -> list[int]:
        """Positions of micro-batch ``micro`` of (0-based) step ``step`` on this rank."""
        first = step * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            for micro in range(self.grad_accum):
                yield self.positions(step, micro)
            step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        raise TypeError("StepBatchSampler is endless")


def build_stream_loader(dataset: Dataset, *, seed: int, batch_size: int, world_size: int, rank: int,
                        grad_accum: int, start_step: int = 0, num_workers: int = 0,
                        pin_memory: bool = False, curriculum: CurriculumOrder | None = None) -> DataLoader:
    """A DataLoader over :class:`PositionDataset` driven by :class:`StepBatchSampler`; a
    dataset with ``bucket_of`` (not None) gets the bucketed order (module docstring), else
    ``curriculum`` (if given) orders the first steps."""
    sampler = StepBatchSampler(batch_size, world_size, rank, grad_accum, start_step)
    order = None
    if getattr(dataset, "bucket_of", None) is not None:
        order = BucketBatchSampler(dataset.bucket_of, batch_size, num_replicas=world_size, rank=rank,
                                   grad_accum=grad_accum, seed=seed)
    return DataLoader(PositionDataset(dataset, seed, order, curriculum), batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False)


def num_buckets(d: _DataSettings) -> int:
    """Sample shapes a run trains on: the number of buckets, or 1 without (the compile limit)."""
    return len(config_buckets(d) or (None,))


def log_buckets(dataset: Dataset, log: Any) -> None:
    """Log a bucketed dataset's assignment (clips per bucket) and every clip left out, with its
    reason, to ``log`` (a logger, or None: rank > 0). Nothing for an unbucketed dataset."""
    if log is None or getattr(dataset, "bucket_of", None) is None:
        return
    assignment = getattr(dataset, "assignment", None)
    if assignment is None:  # a cache: the assignment happened when it was built
        counts = [dataset.bucket_of.count(k) for k in range(len(dataset.buckets))]
        log.info("buckets: " + ", ".join(f"{b}: {n}" for b, n in zip(dataset.buckets, counts)))
        return
    log.info(f"buckets: {assignment.summary()}")
    for unfit in assignment.unfit:
        log.warning(f"left out (data.buckets.unfit=skip): {unfit}")


def stream_state(loader: DataLoader, step: int) -> dict[str, Any]:
    """Extra checkpoint state of the data stream after ``step`` optimizer steps:
    ``{STREAM_STATE_KEY: sampler.state_dict(step)}`` with buckets, ``{}`` without (the position
    is then ``step x G`` alone)."""
    order = loader.dataset.order
    if order is None:
        return {}
    return {STREAM_STATE_KEY: {**order.state_dict(step), "buckets": _bucket_lists(loader)}}


def _bucket_lists(loader: DataLoader) -> list[list[int]]:
    return [b.as_list() for b in loader.dataset.dataset.buckets]


def check_stream_state(loader: DataLoader, state: dict[str, Any], step: int, where: str) -> None:
    """Refuse to resume ``state`` (a checkpoint's state dict) at ``step`` when its bucket order
    differs from this run's (other buckets or assignment, seed or global batch), or when one
    of the two has buckets and the other not. ``where`` names the checkpoint file."""
    order = loader.dataset.order
    saved = state.get(STREAM_STATE_KEY)
    if order is None and saved is None:
        return
    if order is None or saved is None:
        now, then = ("with", "without") if saved is None else ("without", "with")
        raise CheckpointError(f"{where}: cannot resume {now} data.buckets a run written {then} them (the data "
                              f"order would change): keep data.buckets as it was, or start a new run")
    why = order.mismatch(saved)
    if why is None and saved.get("buckets") != _bucket_lists(loader):
        why = f"buckets were {saved.get('buckets')}, now {_bucket_lists(loader)}"
    if why is None and saved["epoch"] * order.steps_per_epoch + saved["step_in_epoch"] != step:
        why = f"its position (epoch {saved['epoch']}, step {saved['step_in_epoch']}) is not step {step}"
    if why is not None:
        raise CheckpointError(f"{where}: cannot resume step {step}: the bucket order changed ({why}); resume with "
                              f"the same data, data.buckets, seed and global batch, or start a new run")


def camera_dropped(seed: int, position: int, global_batch: int, rate: float) -> bool:
    """Whether the step holding stream ``position`` trains without camera conditioning
    (``loss.camera_dropout``): a draw keyed by ``(seed, step)`` alone (stream 3), so every
    micro-batch and rank of a step agree, and a resumed run draws as an uninterrupted one."""
    if rate <= 0:
        return False
    step = position // global_batch
    return bool(np.random.default_rng(sample_seed(seed, step, stream=3)).random() < rate)

