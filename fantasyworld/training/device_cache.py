"""The latent cache held whole on the training device (``data.cache_on_device``).

For small models on small clips the loader (reading, collating, pinning and copying a batch)
costs more than the step: :func:`load_device_cache` stacks every item of the cache on the
device once, and :class:`DeviceCacheStream` gathers each micro-batch there, in the order of
:func:`~fantasyworld.training.data.build_stream_loader`'s stream (same positions, epochs and
permutations), so a run sees the same samples with or without it. Caches of one shape only
(a bucketed cache stores clips at several shapes: use the loader).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fantasyworld.data.curriculum import CurriculumOrder
from fantasyworld.errors import ConfigError
from fantasyworld.training.data import PositionDataset, StepBatchSampler

__all__ = ["DeviceCacheStream", "load_device_cache", "release_device_cache"]

#: the caches loaded onto a device, oldest first: key -> (tensors, strings)
_DEVICE_CACHES: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, list[Any]]]] = {}
_KEEP_CACHES = 2  # e.g. two runs' caches in one process (a benchmark's variants)
_READ_CHUNK = 256  # items read (by threads) and copied to the device at a time


def load_device_cache(dataset: Dataset, device: torch.device
                      ) -> tuple[dict[str, torch.Tensor], dict[str, list[Any]]]:
    """Every item of ``dataset`` stacked per key on ``device``: ``(tensors, strings)``, tensors
    ``(N, ...)`` in the stored dtype (``dataset.read(i, upcast=False)`` where it has it), the
    other values as lists. Items are read by threads and copied a chunk at a time (host
    memory: one chunk). The results for the last two cache directories (same index file,
    device and size) are kept until others are loaded or :func:`release_device_cache`."""
    from concurrent.futures import ThreadPoolExecutor

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # one key for "cuda" and "cuda:<current>"
        device = torch.device("cuda", torch.cuda.current_device())
    root = getattr(dataset, "cache_dir", None)
    key = None
    if root is not None:
        index = Path(root) / "index.json"
        key = (str(Path(root).resolve()), index.stat().st_mtime_ns if index.exists() else 0, str(device),
               len(dataset))  # type: ignore[arg-type]
        if key in _DEVICE_CACHES:
            return _DEVICE_CACHES[key]
        while len(_DEVICE_CACHES) >= _KEEP_CACHES:  # free the oldest before loading
            _DEVICE_CACHES.pop(next(iter(_DEVICE_CACHES)))
    read = getattr(dataset, "read", None)

    def item(i: int) -> dict[str, Any]:
        return read(i, upcast=False) if read else dataset[i]

    n = len(dataset)  # type: ignore[arg-type]
    tensors: dict[str, torch.Tensor] = {}
    strings: dict[str, list[Any]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, n, _READ_CHUNK):
            items = list(pool.map(item, range(start, min(n, start + _READ_CHUNK))))
            for k, v in items[0].items():
                if not isinstance(v, torch.Tensor):
                    strings.setdefault(k, []).extend(it[k] for it in items)
                    continue
                if k not in tensors:
                    tensors[k] = torch.empty((n, *v.shape), dtype=v.dtype, device=device)
                tensors[k][start:start + len(items)].copy_(torch.stack([it[k] for it in items]))
    if key is not None:
        _DEVICE_CACHES[key] = (tensors, strings)
    return tensors, strings


def release_device_cache() -> None:
    """Free the caches :func:`load_device_cache` keeps."""
    _DEVICE_CACHES.clear()


class DeviceCacheStream:
    """The stream of :func:`build_stream_loader` over a latent cache held whole on the device.

    Every item of ``dataset`` (a :class:`~fantasyworld.data.cache.CachedClipDataset`) is
    read once and its tensors are stacked per key on ``device`` in their stored dtype (a
    cache written with ``--geometry-dtype float16`` keeps half-size depth and points there).
    A micro-batch is then one gather per key on the device, floating tensors cast to fp32:
    no reading, collating, pinning or copying per step. Positions, epochs and the sample
    order are those of :class:`PositionDataset` and :class:`StepBatchSampler`, so a run
    sees the same samples in the same order with or without it.

    Memory: the cache's size on disk (``du -sh CACHE``) on the device. The last two caches
    loaded stay loaded (:func:`load_device_cache`), so stage 2 after stage 1 in one process does
    not read its cache again; :func:`release_device_cache` frees them.

    Args:
        dataset: the cache.
        device: the training device.
        seed, batch_size, world_size, rank, grad_accum, start_step, curriculum: as for
            :func:`build_stream_loader`.
    """

    def __init__(self, dataset: Dataset, device: torch.device, *, seed: int, batch_size: int, world_size: int,
                 rank: int, grad_accum: int, start_step: int = 0,
                 curriculum: CurriculumOrder | None = None) -> None:
        if getattr(dataset, "bucket_of", None) is not None:
            raise ConfigError("data.cache_on_device needs a cache of one clip shape; this one is bucketed "
                              "(data.buckets): train from it through the loader instead")
        self.positions = PositionDataset(dataset, seed, curriculum=curriculum)
        self.dataset = self.positions  # what the checkpoint's stream state reads (no bucket order)
        self.sampler = StepBatchSampler(batch_size, world_size, rank, grad_accum, start_step)
        self.device = device
        self.tensors, self.strings = load_device_cache(dataset, device)

    def nbytes(self) -> int:
        """Device memory the cache takes."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def batch(self, positions: list[int]) -> dict[str, Any]:
        """The micro-batch of ``positions``: tensors on the device (floating ones fp32), strings
        as lists, ``sample_position`` (B,) int64 on the host."""
        index = [self.positions.locate(p)[1] for p in positions]
        idx = torch.tensor(index, dtype=torch.int64)
        if self.device.type == "cuda":
            idx = idx.pin_memory().to(self.device, non_blocking=True)
        out: dict[str, Any] = {}
        for key, values in self.tensors.items():
            picked = values.index_select(0, idx)
            out[key] = picked.float() if picked.is_floating_point() else picked
        out.update({k: [v[i] for i in index] for k, v in self.strings.items()})
        out["sample_position"] = torch.tensor(positions, dtype=torch.int64)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for positions in self.sampler:
            yield self.batch(positions)
