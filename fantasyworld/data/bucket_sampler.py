"""Batches that each hold one bucket: seeded, resumable, split over ranks and accumulation.

Letters: ``N`` dataset items, ``b`` batch size (per rank and micro-batch), ``W`` ranks,
``A`` micro-batches per optimizer step, ``G = b W A`` the **global batch** (the samples of
one optimizer step over all ranks).

The plan of epoch ``e`` (:meth:`BucketBatchSampler.epoch_plan`):

1. the items of each bucket ``k`` are permuted by a generator seeded with ``(seed, e, k)``;
2. a bucket whose size is not a multiple of ``G`` is topped up with its own items from the
   front of that permutation (cyclically, for a bucket smaller than ``G``), so every item is
   seen at least once per epoch and the top-up, ``ceil(n_k / G) G - n_k`` items, is the only
   repetition; a bucket of fewer items than ``G`` is never dropped;
3. each bucket is cut into global batches of ``G`` items;
4. the global batches of all buckets are shuffled together by a generator seeded with
   ``(seed, e)``.

Step ``s`` of the epoch is global batch ``s``; rank ``r``'s micro-batch ``m`` takes its items
``[(m W + r) b, (m W + r + 1) b)``, the split of
:class:`~fantasyworld.training.data.StepBatchSampler`. Hence every batch, every micro-batch
and every optimizer step is one bucket (all ranks run the same shape at the same step, so
no rank waits on a larger one and a compiled graph per bucket serves every rank); the ranks'
shares of a step are disjoint; every rank gets ``steps_per_epoch x A`` batches per epoch;
and the plan depends only on ``(seed, epoch)`` and the items' buckets, so it is identical in
every process and DataLoader worker.

Positions: the ``j``-th item of step ``s`` (counted from the first epoch) has stream
position ``s G + j``; :meth:`BucketBatchSampler.locate` maps a position to ``(epoch, item)``,
the same stream model as the unbucketed trainer (the position of a checkpoint is
``step x G``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["BucketBatchSampler"]

_WITHIN, _ACROSS = 2, 3  # seed streams: the order inside a bucket, the order of the batches


class BucketBatchSampler(Sampler[list[int]]):
    """One rank's batches of dataset indices for one epoch at a time, each batch from one bucket.

    Use it as a DataLoader ``batch_sampler`` with :meth:`set_epoch` before each epoch (any
    number of workers: the plan is computed where the sampler runs, in the main process).

    Args:
        bucket_of: ``(N,)`` bucket index of every dataset item.
        batch_size: ``b``, items per batch.
        num_replicas: ``W``, data-parallel ranks.
        rank: this rank, ``0 <= rank < W``.
        grad_accum: ``A``, micro-batches per optimizer step.
        seed: the run seed.
    """

    def __init__(self, bucket_of: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 grad_accum: int = 1, seed: int = 0) -> None:
        if batch_size < 1 or num_replicas < 1 or grad_accum < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"batch_size, num_replicas and grad_accum must be >= 1 and 0 <= rank < num_replicas, "
                             f"got {batch_size}, {num_replicas}, {grad_accum}, rank {rank}")
        self.bucket_of = np.asarray(bucket_of, dtype=np.int64)
        if self.bucket_of.ndim != 1 or not len(self.bucket_of) or (self.bucket_of < 0).any():
            raise ValueError("bucket_of must be a non-empty list of bucket indices >= 0")
        self.batch_size, self.num_replicas, self.rank, self.grad_accum = batch_size, num_replicas, rank, grad_accum
        self.seed = int(seed)
        self.members = [np.flatnonzero(self.bucket_of == k) for k in range(int(self.bucket_of.max()) + 1)]
        self.steps_per_epoch = sum(-(-len(m) // self.global_batch) for m in self.members)
        self.epoch = 0
        self._start = 0  # steps of ``epoch`` already consumed (load_state_dict)
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        """``G = batch_size x num_replicas x grad_accum``."""
        return self.batch_size * self.num_replicas * self.grad_accum

    def bucket_sizes(self) -> list[int]:
        """Items per bucket index."""
        return [len(m) for m in self.members]

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """``(steps_per_epoch, G)`` int64: the items of every global batch of ``epoch``, in order."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        g = self.global_batch
        blocks = []
        for k, members in enumerate(self.members):
            if not len(members):
                continue
            order = members[np.random.default_rng([self.seed, _WITHIN, epoch, k]).permutation(len(members))]
            pad = -len(order) % g
            if pad:
                order = np.concatenate([order, np.resize(order, pad)])  # np.resize repeats cyclically
            blocks.append(order.reshape(-1, g))
        plan = np.concatenate(blocks)
        plan = plan[np.random.default_rng([self.seed, _ACROSS, epoch]).permutation(len(plan))]
        self._cached = (epoch, plan)
        return plan

    def locate(self, position: int) -> tuple[int, int]:
        """``(epoch, dataset index)`` of stream position ``position`` (module docstring)."""
        step, j = divmod(int(position), self.global_batch)
        epoch, s = divmod(step, self.steps_per_epoch)
        return epoch, int(self.epoch_plan(epoch)[s, j])

    def batch(self, step: int, micro: int = 0) -> list[int]:
        """This rank's items of micro-batch ``micro`` of global step ``step`` (counted over epochs)."""
        epoch, s = divmod(int(step), self.steps_per_epoch)
        first = (micro * self.num_replicas + self.rank) * self.batch_size
        return self.epoch_plan(epoch)[s, first:first + self.batch_size].tolist()

    def bucket_of_step(self, step: int) -> int:
        """The bucket index of global step ``step``."""
        return int(self.bucket_of[self.batch(step)[0]])

    # ------------------------------------------------------------ epoch-wise iteration
    def set_epoch(self, epoch: int) -> None:
        """Iterate ``epoch`` next (from its start, unless :meth:`load_state_dict` chose it)."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        base = self.epoch * self.steps_per_epoch
        for s in range(start, self.steps_per_epoch):
            for micro in range(self.grad_accum):
                yield self.batch(base + s, micro)

    def __len__(self) -> int:
        """Batches the next iteration yields: ``steps_per_epoch x grad_accum`` (fewer after a resume)."""
        return (self.steps_per_epoch - self._start) * self.grad_accum

    # ------------------------------------------------------------ resumption
    def fingerprint(self) -> dict[str, Any]:
        """What the plan depends on: seed, global batch, bucket sizes and a digest of ``bucket_of``."""
        return {"seed": self.seed, "global_batch": self.global_batch, "bucket_sizes": self.bucket_sizes(),
                "steps_per_epoch": self.steps_per_epoch,
                "digest": hashlib.sha256(self.bucket_of.tobytes()).hexdigest()[:16]}

    def state_dict(self, steps_done: int) -> dict[str, Any]:
        """The stream position after ``steps_done`` optimizer steps (counted from the first epoch;
        a count rather than what was yielded, because DataLoader workers prefetch ahead):
        ``epoch``, ``step_in_epoch`` and the :meth:`fingerprint`."""
        epoch, s = divmod(int(steps_done), self.steps_per_epoch)
        return {"epoch": epoch, "step_in_epoch": s, **self.fingerprint()}

    def mismatch(self, state: dict[str, Any]) -> str | None:
        """Why ``state`` (a :meth:`state_dict`) cannot be resumed by this sampler, or ``None``."""
        mine = self.fingerprint()
        for key in ("seed", "global_batch", "bucket_sizes", "steps_per_epoch", "digest"):
            if state.get(key) != mine[key]:
                return f"{key} was {state.get(key)!r}, now {mine[key]!r}"
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s epoch and step: the next iteration yields the rest of that
        epoch exactly. Raises ``ValueError`` when the plan would differ (:meth:`mismatch`)."""
        why = self.mismatch(state)
        if why is not None:
            raise ValueError(f"cannot resume the bucket order: {why} (same data, buckets, seed and global batch "
                             f"are needed)")
        self.epoch, self._start = int(state["epoch"]), int(state["step_in_epoch"])
