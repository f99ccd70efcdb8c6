"""Training datasets and the DataLoader.

Batch dict (after :func:`collate`; per-sample items have no leading ``B``):

=================  ==============================  ==========================================
key                shape / type                    meaning
=================  ==============================  ==========================================
``video``          float32 ``(B, 3, T, H, W)``     RGB in ``[-1, 1]`` (raw data only)
``depth``          float32 ``(B, T, H, W)``        z-depth along the optical axis; 0 = invalid
``points``         float32 ``(B, T, H, W, 3)``     world coordinates (same frame as ``w2c``)
``valid``          bool ``(B, T, H, W)``           finite and positive depth, finite points
``w2c``            float32 ``(B, T, 4, 4)``        world-to-camera, OpenCV axes
``intrinsics``     float32 ``(B, T, 3, 3)``        pixels at ``(H, W)``, pixel centre ``u+0.5``
``prompt``         ``list[str]``
``clip_id``        ``list[str]``
``frame_indices``  int64 ``(B, T)``                frames taken from the source clip
``latents``        float32 ``(B, 16, F, H/8, W/8)`` VAE mean, ``(z - mean) / std`` (cache only)
``text_emb``       float32 ``(B, 512, D)``         UMT5 output, zero after the prompt (cache only)
``text_len``       int64 ``(B,)``                  prompt tokens before the zero padding (cache)
``clip_image_emb`` float32 ``(B, 257, 1280)``      I2V only: CLIP penultimate hidden states
``cond_latent``    float32 ``(B, 20, F, H/8, W/8)`` I2V only: 4 mask + 16 latent channels
``bucket``         int64 ``(B,)``                  bucketed datasets only: index of the bucket
=================  ==============================  ==========================================

``T = 4k + 1`` pixel frames, ``F = (T - 1) / 4 + 1`` latent frames. :class:`RawClipDataset`
yields every key except the cache-only ones; :class:`~fantasyworld.data.cache.CachedClipDataset`
yields the cache keys plus ``depth, points, valid, w2c, intrinsics, prompt, clip_id,
frame_indices`` at pixel resolution, and no ``video``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fantasyworld.data.buckets import Bucket, BucketAssignment, ClipShape, assign_buckets
from fantasyworld.data.formats import (
    DEFAULT_FOV_DEG,
    METADATA_NAME,
    ArraySource,
    ClipRecord,
    Reporter,
    load_metadata,
    probe_video,
    read_video,
)
from fantasyworld.data.transforms import CropResize, check_frame_count, sample_frame_indices
from fantasyworld.errors import BAD_INTRINSICS, BAD_SHAPE, FRAME_COUNT, TOO_FEW_FRAMES, DataError
from fantasyworld.geometry.camera_io import camera_format, read_cameras
from fantasyworld.geometry.cameras import intrinsics_from_fov, make_intrinsics


@dataclass
class ClipInfo:
    """Cheap facts about one clip (no frame decoded): cameras, K at video res, sources."""

    record: ClipRecord
    w2c: np.ndarray  # (T, 4, 4) float64
    K: np.ndarray  # (T, 3, 3) float64, pixels at (height, width)
    height: int
    width: int
    video_frames: int  # from the container header, 0 if unknown
    depth: ArraySource
    points: ArraySource

    @property
    def num_frames(self) -> int:
        return int(self.w2c.shape[0])


def record_intrinsics(record: ClipRecord, num_frames: int, height: int, width: int,
                      meta_path: Path) -> np.ndarray:
    """``(T, 3, 3)`` pixel K from the record (or the default field of view)."""
    if record.intrinsics is None:
        return np.broadcast_to(intrinsics_from_fov(DEFAULT_FOV_DEG, height, width), (num_frames, 3, 3)).copy()
    intr = record.intrinsics
    if intr.ndim == 2 and intr.shape[0] != num_frames:
        raise DataError(meta_path, FRAME_COUNT,
                        f"clip {record.clip_id!r}: {intr.shape[0]} intrinsics rows but {num_frames} cameras")
    k = make_intrinsics(intr[..., 0], intr[..., 1], intr[..., 2], intr[..., 3])
    return np.broadcast_to(k, (num_frames, 3, 3)).copy()


def _principal_point_inside(K: np.ndarray, height: int, width: int) -> bool:
    """Whether every frame's ``(cx, cy)`` of ``K`` (T, 3, 3) lies in ``[0, W] x [0, H]``.

    A principal point outside the image is almost always intrinsics at another resolution
    (the source video's) or in other units (normalised), which would train on wrong rays."""
    cx, cy = K[:, 0, 2], K[:, 1, 2]
    return bool(((cx >= 0) & (cx <= width) & (cy >= 0) & (cy <= height)).all())


def inspect_clip(root: Path, record: ClipRecord, report: Reporter) -> ClipInfo | None:
    """Open every file of a clip and check what can be checked without decoding frames:
    existence, camera columns/finiteness/orthonormality, array dtype and layout, spatial
    size agreement with the video, and frame counts (video header, depth, points,
    intrinsics rows vs cameras). Problems go to ``report``; returns ``None`` if any."""
    before = len(report.problems)
    meta_path = root / METADATA_NAME
    w2c = K = None
    has_k = False
    video_frames = height = width = 0
    try:
        video_frames, height, width = probe_video(record.video)
    except DataError as err:
        report(err)
    try:
        seq = read_cameras(record.cameras, height or 1, width or 1, fmt=record.camera_format)
        # formats without intrinsics (seed rows, TUM ...): the record's (or the default) apply
        has_k = camera_format(record.camera_format, record.cameras).has_intrinsics
        w2c, K = seq.w2c, (seq.K if has_k else None)
    except DataError as err:
        report(err)
    sources: dict[str, ArraySource] = {}
    for name, path in (("depth", record.depth), ("points", record.points)):
        try:
            sources[name] = ArraySource(path, name, root)
        except DataError as err:
            report(err)
    if w2c is not None:
        t = len(w2c)
        if video_frames and video_frames != t:
            report(DataError(record.video, FRAME_COUNT, f"video has {video_frames} frames, "
                                                        f"cameras {record.cameras.name} have {t}"))
        for name, src in sources.items():
            if src.num_frames != t:
                report(DataError(src.path, FRAME_COUNT, f"{name} has {src.num_frames} frames, "
                                                       f"cameras {record.cameras.name} have {t}"))
        if height and K is None:
            try:
                K = record_intrinsics(record, t, height, width, meta_path)
            except DataError as err:
                report(err)
    if height:
        for name, src in sources.items():
            if tuple(src.frame_shape[:2]) != (height, width):
                where = src.files[0] if src.files else src.path
                report(DataError(where, BAD_SHAPE, f"{name} is {src.frame_shape[0]}x{src.frame_shape[1]}, "
                                                   f"video {record.video.name} is {height}x{width}"))
    if K is not None:
        k_file = record.cameras if has_k else meta_path  # formats with intrinsics override the record
        if not np.isfinite(K).all() or (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
            report(DataError(k_file, BAD_INTRINSICS,
                             f"clip {record.clip_id!r}: non-finite or non-positive focal length"))
        elif height and not _principal_point_inside(K, height, width):
            cx, cy = float(K[0, 0, 2]), float(K[0, 1, 2])
            report(DataError(k_file, BAD_INTRINSICS,
                             f"clip {record.clip_id!r}: principal point ({cx:g}, {cy:g}) lies outside the "
                             f"{width}x{height} image (intrinsics must be in pixels at the video resolution)"))
    if len(report.problems) > before or w2c is None or K is None or len(sources) < 2:
        return None
    return ClipInfo(record, w2c, K, height, width, video_frames, sources["depth"], sources["points"])


class RawClipDataset(Dataset):
    """Samples from the seed layout (``metadata.json`` + videos/depth/points/cameras).

    Each item is a dict as in the module docstring (without the batch dimension). Frames
    ``start + stride * arange(num_frames)`` are taken; ``random=True`` draws the start and
    the crop window per item (seeded by ``seed`` and the item index, so a given
    ``(seed, index, epoch)`` is reproducible; call :meth:`set_epoch` to vary).

    With ``buckets`` (:mod:`fantasyworld.data.buckets`) every clip is assigned a bucket once,
    from its headers, and each item has that bucket's frames and size instead of
    ``num_frames``, ``height`` and ``width``; clips that fit no bucket are refused or left out
    by the ``unfit`` policy (the left-out ones are listed in ``assignment.unfit``). Items then
    carry ``bucket`` (int64 scalar, an index into ``buckets``) and :attr:`bucket_of` lists
    every item's bucket (for :class:`~fantasyworld.data.bucket_sampler.BucketBatchSampler`).

    Args:
        root: dataset root.
        num_frames: ``4k + 1`` frames per sample.
        height, width: output resolution (``None``: the stored resolution).
        stride: temporal stride.
        random: random start and crop window (training) instead of start 0 and centre crop.
        allow_nonfinite: mask NaN/inf depth/points as invalid instead of raising.
        seed: base seed for the random choices.
        buckets: sample shapes to bucket the clips into (``None``: one shape for all).
        unfit: ``error`` or ``skip`` (:data:`~fantasyworld.data.buckets.UNFIT_POLICIES`).
        max_crop: largest share of a clip's area the aspect crop may cut (``None``: any).

    Raises:
        DataError: on the first problem of a clip (the same checks as ``data validate``), or
            a clip that fits no bucket under ``unfit="error"``.
    """

    def __init__(self, root: str | Path, num_frames: int = 49, height: int | None = None,
                 width: int | None = None, stride: int = 1, random: bool = False,
                 allow_nonfinite: bool = False, seed: int = 0, buckets: tuple[Bucket, ...] | None = None,
                 unfit: str = "error", max_crop: float | None = None):
        check_frame_count(num_frames)
        self.root = Path(root)
        self.records = load_metadata(self.root)
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.stride = stride
        self.random = random
        self.allow_nonfinite = allow_nonfinite
        self.seed = seed
        self.epoch = 0
        self.buckets: tuple[Bucket, ...] | None = None
        self.bucket_of: list[int] | None = None
        self.assignment: BucketAssignment | None = None
        if buckets:
            self._assign(tuple(buckets), unfit, max_crop)

    def _assign(self, buckets: tuple[Bucket, ...], unfit: str, max_crop: float | None) -> None:
        """Bucket every record from its headers (no frame decoded) and keep those that fit."""
        shapes = []
        for record in self.records:
            info = inspect_clip(self.root, record, Reporter())
            assert info is not None  # Reporter() raises on the first problem
            shapes.append(ClipShape(record.clip_id, info.num_frames, info.height, info.width))
        self.assignment = assign_buckets(shapes, buckets, self.stride, max_crop, unfit, self.root / METADATA_NAME)
        self.records = [self.records[i] for i in self.assignment.kept]
        self.buckets, self.bucket_of = buckets, list(self.assignment.bucket_of)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _frames(self, index: int, rng: np.random.Generator | None
                ) -> tuple[ClipRecord, ClipInfo, np.ndarray, tuple[int, int]]:
        """Item ``index``'s record, headers, frame indices (from frame 0 without ``rng``) and output
        size (its bucket's, else the dataset's or the stored one)."""
        record = self.records[index]
        info = inspect_clip(self.root, record, Reporter())
        assert info is not None  # Reporter() raises on the first problem
        num_frames, out_hw = self.num_frames, (self.height or info.height, self.width or info.width)
        if self.bucket_of is not None:
            bucket = self.buckets[self.bucket_of[index]]
            num_frames, out_hw = bucket.frames, (bucket.height, bucket.width)
        idx = sample_frame_indices(info.num_frames, num_frames, self.stride,
                                   start=None if rng is not None else 0, rng=rng)
        if idx is None:
            raise DataError(record.cameras, TOO_FEW_FRAMES,
                            f"{info.num_frames} frames, need {(num_frames - 1) * self.stride + 1} "
                            f"for {num_frames} frames at stride {self.stride}")
        return record, info, idx, out_hw

    def read_w2c(self, index: int) -> np.ndarray:
        """World-to-camera poses ``(T, 4, 4)`` of the frames item ``index`` takes from its first
        frame (``stride`` apart, the clip's or its bucket's frame count), read from the camera
        file alone (no frame decoded)."""
        _, info, idx, _ = self._frames(index, None)
        return info.w2c[idx].astype(np.float64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.random else None
        record, info, idx, out_hw = self._frames(index, rng)
        plan = CropResize.plan((info.height, info.width), out_hw,
                               crop="random" if self.random else "center", rng=rng)
        frames = read_video(record.video, idx)  # (T, H, W, 3) uint8
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8, channels-last
        video = plan.frames(video).float().div_(127.5).sub_(1.0)
        rows_cols = plan.index_maps()
        depth = info.depth.read(idx, self.allow_nonfinite, rows_cols)  # (T, Ht, Wt)
        points = info.points.read(idx, self.allow_nonfinite, rows_cols)  # (T, Ht, Wt, 3)
        valid = np.isfinite(depth) & (depth > 0) & np.isfinite(points).all(-1)
        invalid = ~valid
        depth[invalid] = 0.0  # both are fresh float32 copies: edit in place
        points[invalid] = 0.0
        item = {
            "video": video.permute(1, 0, 2, 3).contiguous(),  # (3, T, H, W)
            "depth": torch.from_numpy(depth),
            "points": torch.from_numpy(points),
            "valid": torch.from_numpy(valid),
            "w2c": torch.from_numpy(info.w2c[idx].astype(np.float32)),
            "intrinsics": torch.from_numpy(plan.intrinsics(info.K[idx]).astype(np.float32)),
            "prompt": record.prompt,
            "clip_id": record.clip_id,
            "frame_indices": torch.from_numpy(idx.astype(np.int64)),
        }
        if self.bucket_of is not None:
            item["bucket"] = torch.tensor(self.bucket_of[index], dtype=torch.int64)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts: tensors along a new dim 0, strings into lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else list(vals)
    return out


def build_dataloader(dataset: Dataset, batch_size: int = 1, num_workers: int = 0, shuffle: bool = True,
                     seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A ``torch.utils.data.DataLoader`` with :func:`collate`, persistent workers and a
    seeded shuffling generator."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
        generator=gen, drop_last=drop_last, persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
