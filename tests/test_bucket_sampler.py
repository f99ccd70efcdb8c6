"""The bucketed batch sampler: one bucket per batch and per step, every item once per epoch
(plus the documented top-up), seeded determinism, disjoint ranks with equal batch counts,
exact mid-epoch resumption, DataLoader workers, and the trainer's position stream."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fantasyworld.data.bucket_sampler import BucketBatchSampler
from fantasyworld.training.data import build_stream_loader

# bucket sizes 7, 4, 1, 12 (24 items), interleaved so that bucket and index are unrelated
BUCKET_OF = [3, 0, 3, 1, 0, 3, 2, 0, 3, 1, 3, 0, 3, 3, 1, 0, 3, 0, 3, 1, 3, 0, 3, 3]


def _epoch(bucket_of: list[int], epoch: int = 0, **kw) -> list[list[int]]:
    """Every rank's batches of one epoch, rank-major: {rank: [batch, ...]}."""
    world = kw.pop("num_replicas", 1)
    out = []
    for rank in range(world):
        s = BucketBatchSampler(bucket_of, num_replicas=world, rank=rank, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_every_batch_and_every_step_is_one_bucket() -> None:
    ranks = _epoch(BUCKET_OF, batch_size=2, num_replicas=2, grad_accum=2, seed=0)
    steps = len(ranks[0]) // 2
    for s in range(steps):
        items = [i for r in ranks for b in r[2 * s:2 * s + 2] for i in b]  # both ranks, both micro-batches
        assert len({BUCKET_OF[i] for i in items}) == 1, (s, items)


def test_every_item_once_per_epoch_plus_the_top_up() -> None:
    g = 4  # batch 2 x 2 ranks
    ranks = _epoch(BUCKET_OF, batch_size=2, num_replicas=2, seed=1)
    counts = Counter(i for r in ranks for b in r for i in b)
    sizes = Counter(BUCKET_OF)
    assert set(counts) == set(range(len(BUCKET_OF)))  # nothing dropped, even the bucket of one item
    for k, n in sizes.items():
        seen = [counts[i] for i in range(len(BUCKET_OF)) if BUCKET_OF[i] == k]
        assert sum(seen) == -(-n // g) * g  # topped up to a multiple of the global batch
    # bucket sizes 7, 4, 1, 12: 7 + 1 repeat, 4 exact, 1 item 4 times, 12 exact
    by_bucket = {k: sorted(counts[i] for i in range(len(BUCKET_OF)) if BUCKET_OF[i] == k) for k in sizes}
    assert by_bucket == {0: [1] * 6 + [2], 1: [1] * 4, 2: [4], 3: [1] * 12}
    assert BucketBatchSampler(BUCKET_OF, 2, num_replicas=2).steps_per_epoch == 2 + 1 + 1 + 3


def test_ranks_are_disjoint_and_get_equal_batch_counts() -> None:
    # buckets of 8 and 12 items, global batch 4: no top-up, so the ranks partition the data
    bucket_of = [i % 5 // 3 for i in range(20)]
    assert Counter(bucket_of) == {0: 12, 1: 8}
    for world, batch in ((2, 2), (4, 1)):
        ranks = _epoch(bucket_of, batch_size=batch, num_replicas=world, seed=2)
        assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == 20 // (batch * world)
        shards = [{i for b in r for i in b} for r in ranks]
        assert sum(len(s) for s in shards) == 20 and set().union(*shards) == set(range(20))
        # and the same step of every rank is the same bucket (the same shapes everywhere)
        for step in zip(*ranks):
            assert len({bucket_of[b[0]] for b in step}) == 1
    # with a top-up, the counts stay equal
    ranks = _epoch(BUCKET_OF, batch_size=3, num_replicas=4, grad_accum=2, seed=0)
    assert [len(r) for r in ranks] == [4 * 2] * 4  # 4 buckets, each one global batch of 24


def test_order_is_seeded_by_seed_and_epoch() -> None:
    a = _epoch(BUCKET_OF, epoch=3, batch_size=2, seed=7)
    assert a == _epoch(BUCKET_OF, epoch=3, batch_size=2, seed=7)
    assert a != _epoch(BUCKET_OF, epoch=4, batch_size=2, seed=7)
    assert a != _epoch(BUCKET_OF, epoch=3, batch_size=2, seed=8)
    # shuffled within buckets and across them: the epoch is not bucket by bucket
    buckets = [BUCKET_OF[b[0]] for b in a[0]]
    assert buckets != sorted(buckets)


def test_resume_mid_epoch_yields_exactly_the_rest() -> None:
    full = BucketBatchSampler(BUCKET_OF, 2, num_replicas=2, rank=1, grad_accum=2, seed=5)
    full.set_epoch(2)
    whole = list(full)
    spe = full.steps_per_epoch
    state = full.state_dict(steps_done=2 * spe + 3)  # 3 steps into epoch 2
    assert (state["epoch"], state["step_in_epoch"]) == (2, 3)
    resumed = BucketBatchSampler(BUCKET_OF, 2, num_replicas=2, rank=1, grad_accum=2, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the usual epoch loop keeps the loaded position
    assert len(resumed) == (spe - 3) * 2
    assert list(resumed) == whole[3 * 2:]
    resumed.set_epoch(3)
    assert len(list(resumed)) == spe * 2  # the next epoch is whole
    # a plan that would differ is refused, naming what changed
    other = BucketBatchSampler(BUCKET_OF[:-1], 2, num_replicas=2, rank=1, grad_accum=2, seed=5)
    with pytest.raises(ValueError, match="bucket_sizes was"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="seed was 5, now 6"):
        BucketBatchSampler(BUCKET_OF, 2, num_replicas=2, rank=1, grad_accum=2, seed=6).load_state_dict(state)


class _Items(Dataset):
    def __len__(self) -> int:
        return len(BUCKET_OF)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(i), "bucket": torch.tensor(BUCKET_OF[i])}


def test_works_with_dataloader_workers() -> None:
    def batches(workers: int) -> list[list[int]]:
        sampler = BucketBatchSampler(BUCKET_OF, 2, seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(_Items(), batch_sampler=sampler, num_workers=workers)
        out = []
        for batch in loader:
            assert batch["bucket"].unique().numel() == 1
            out.append(batch["index"].tolist())
        return out

    assert batches(2) == batches(0) and len(batches(0)) == 4 + 2 + 1 + 6  # ceil(n_k / 2) for 7, 4, 1, 12


class _Bucketed(_Items):
    bucket_of = BUCKET_OF


def test_trainer_stream_follows_the_plan_and_ignores_the_split() -> None:
    """The trainer's position stream (StepBatchSampler + PositionDataset) yields the sampler's
    batches, and one process with batch 4 sees per step what two processes with batch 2 see."""
    steps = 14  # two epochs of 7 global batches
    one = build_stream_loader(_Bucketed(), seed=9, batch_size=4, world_size=1, rank=0, grad_accum=1)
    it = iter(one)
    one_steps = [next(it) for _ in range(steps)]
    plan = BucketBatchSampler(BUCKET_OF, 4, seed=9)
    for s, batch in enumerate(one_steps):
        assert batch["index"].tolist() == plan.batch(s)
        assert batch["bucket"].unique().numel() == 1
        assert batch["sample_position"].tolist() == list(range(4 * s, 4 * s + 4))
    two = []
    for rank in range(2):
        it = iter(build_stream_loader(_Bucketed(), seed=9, batch_size=2, world_size=2, rank=rank, grad_accum=1))
        two.append([next(it)["index"].tolist() for _ in range(steps)])
    for s in range(steps):
        assert two[0][s] + two[1][s] == one_steps[s]["index"].tolist()
    # resuming the stream at step 5 continues it exactly
    it = iter(build_stream_loader(_Bucketed(), seed=9, batch_size=4, world_size=1, rank=0, grad_accum=1,
                                  start_step=5))
    assert [next(it)["index"].tolist() for _ in range(steps - 5)] == [b["index"].tolist() for b in one_steps[5:]]
    # each epoch covers every item, with the same number of samples per bucket, in a new order
    epochs = [np.concatenate([b["index"].numpy() for b in one_steps[e * 7:(e + 1) * 7]]) for e in range(2)]
    for items in epochs:
        assert set(items.tolist()) == set(range(len(BUCKET_OF)))
        assert Counter(BUCKET_OF[i] for i in items) == {0: 8, 1: 4, 2: 4, 3: 12}
    assert epochs[0].tolist() != epochs[1].tolist()
