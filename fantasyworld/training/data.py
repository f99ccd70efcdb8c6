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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fantasyworld.data.loader import collate
from fantasyworld.models.inputs import sample_seed

__all__ = ["PositionDataset", "StepBatchSampler", "build_stream_loader", "sample_seed"]


class PositionDataset(Dataset):
    """Maps a stream position to ``(epoch, dataset index)`` and returns that item.

    Each item gets ``sample_position`` (int64 scalar tensor). A dataset with ``set_epoch``
    (random crops of :class:`~fantasyworld.data.loader.RawClipDataset`) is told the epoch
    before each read, so crops vary per epoch and stay reproducible.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
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
        epoch, offset = divmod(position, self.size)
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
                        pin_memory: bool = False) -> DataLoader:
    """A DataLoader over :class:`PositionDataset` driven by :class:`StepBatchSampler`."""
    sampler = StepBatchSampler(batch_size, world_size, rank, grad_accum, start_step)
    return DataLoader(PositionDataset(dataset, seed), batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False)
