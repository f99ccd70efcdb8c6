"""Resolution and frame-count buckets: clips of many sizes, a few static training shapes.

A **bucket** is one sample shape ``(frames, height, width)`` in pixels: ``frames = 4k + 1``
(Wan's VAE), ``height`` and ``width`` multiples of 16 (one DiT token covers 16x16 pixels).
Its aspect ratio is ``width / height`` (16:9 landscape is 1.78, 9:16 portrait 0.56). A bucket
set is either given as a list of buckets or generated from a target pixel area, a list of
aspect ratios and a list of frame counts (:func:`generate_buckets`); either way it is kept in
the canonical order of :func:`resolve_buckets` (aspect ratio ascending, then area and frames
descending), so a bucket's index is a property of the set, not of how it was written.

**Assignment** (:func:`choose_bucket`). A clip of ``T`` frames at ``H x W`` (aspect
``a = W / H``) can supply a bucket of ``f`` frames when ``(f - 1) * stride + 1 <= T``. Among
the buckets it can supply, it takes the one whose aspect ratio is nearest to ``a`` in log
space (``|log a_b - log a|``, so 2:1 and 1:2 are equally far from 1:1); ties go to the longer
frame count, then to the area nearest the clip's own (``|log(area_b / (H W))|``), then to the
larger area, then to the earlier bucket of the canonical order. A clip fits **no** bucket
when it is shorter than every bucket's span (``too_few_frames``) or, with ``max_crop``, when
bringing it to the chosen aspect would crop away more than that share of its area
(``crop``; covering ``H x W`` with the bucket's aspect cuts ``1 - min(a, a_b) / max(a, a_b)``).

What happens to clips that fit no bucket is the ``unfit`` policy (:data:`UNFIT_POLICIES`):
``error`` (the default) refuses the dataset with a :class:`~fantasyworld.errors.DataError`
naming the first such clip, its reason and the count; ``skip`` leaves them out and lists
them in :attr:`BucketAssignment.unfit` (the trainer and ``data cache`` print that report).
A dataset in which no clip fits is refused under either policy.

The crop/resize itself is :class:`~fantasyworld.data.transforms.CropResize` at the bucket's
``(height, width)`` (scale to cover, then crop), so depth, points and intrinsics follow the
frames exactly as without buckets. Batching by bucket is
:class:`~fantasyworld.data.bucket_sampler.BucketBatchSampler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fantasyworld.errors import NO_BUCKET, ConfigError, DataError

__all__ = [
    "CROP",
    "TOO_SHORT",
    "UNFIT_POLICIES",
    "Bucket",
    "BucketAssignment",
    "BucketSettings",
    "ClipShape",
    "Unfit",
    "assign_buckets",
    "choose_bucket",
    "generate_buckets",
    "parse_bucket",
    "resolve_bucket_config",
    "resolve_buckets",
]

TOO_SHORT = "too_few_frames"
"""Unfit reason: the clip is shorter than every bucket's span at the configured stride."""
CROP = "crop"
"""Unfit reason: the nearest aspect ratio would crop away more than ``max_crop`` of the clip."""
_TIE = 1e-9  # aspect/area distances closer than this count as equal (float rounding of log)


@dataclass(frozen=True)
class Bucket:
    """One sample shape: ``frames`` pixel frames (``4k + 1``) of ``height x width`` pixels."""

    frames: int
    height: int
    width: int

    @property
    def aspect(self) -> float:
        """``width / height``."""
        return self.width / self.height

    @property
    def area(self) -> int:
        return self.height * self.width

    def span(self, stride: int) -> int:
        """Source frames one sample covers at ``stride``: ``(frames - 1) * stride + 1``."""
        return (self.frames - 1) * stride + 1

    def as_list(self) -> list[int]:
        """``[frames, height, width]`` (the config and cache-index form)."""
        return [self.frames, self.height, self.width]

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def _canonical(buckets: Sequence[Bucket]) -> tuple[Bucket, ...]:
    return tuple(sorted(set(buckets), key=lambda b: (b.aspect, -b.area, -b.frames, b.height)))


def parse_bucket(value: object, key: str) -> Bucket:
    """A :class:`Bucket` from ``[frames, height, width]`` or ``"FxHxW"``; :class:`ConfigError`
    naming ``key`` for anything else, a frame count that is not ``4k + 1`` or a side that is
    not a positive multiple of 16."""
    if isinstance(value, str):
        parts: object = value.lower().split("x")
    else:
        parts = value
    if (not isinstance(parts, (list, tuple)) or len(parts) != 3
            or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in parts)):
        raise ConfigError(f"{key} must be [frames, height, width] (or 'FxHxW'), got {value!r}")
    try:
        frames, height, width = (int(v) for v in parts)
    except ValueError:
        raise ConfigError(f"{key} must be [frames, height, width] integers, got {value!r}") from None
    if frames < 1 or (frames - 1) % 4:
        raise ConfigError(f"{key}: frames must be 4k+1 (1, 5, 9, ..., 81), got {frames}")
    for name, side in (("height", height), ("width", width)):
        if side < 16 or side % 16:
            near = max(16, 16 * round(side / 16))
            raise ConfigError(f"{key}: {name} must be a positive multiple of 16 (one DiT token is 16x16 pixels), "
                              f"got {side} (nearest: {near})")
    return Bucket(frames, height, width)


def _names(key: str | Mapping[str, str]) -> Mapping[str, str]:
    """What messages call each bucket setting: ``key.sizes`` etc., or a given mapping."""
    if isinstance(key, str):
        return {f: f"{key}.{f}" for f in ("sizes", "aspect_ratios", "area", "frames")}
    return key


def generate_buckets(area: int, aspect_ratios: Sequence[float], frames: Sequence[int],
                     key: str | Mapping[str, str] = "buckets") -> tuple[Bucket, ...]:
    """One resolution per aspect ratio ``r`` (``width / height``) with about ``area`` pixels,
    sides rounded to multiples of 16 (``h = 16 round(sqrt(area / r) / 16)``,
    ``w = 16 round(sqrt(area r) / 16)``, at least 16), times every frame count; duplicates
    (two ratios rounding to one resolution) are merged. Canonical order.

    Example: ``area = 336 * 592``, ratios ``9/16, 1, 16/9`` give 592x336, 448x448, 336x592.
    ``key`` names the settings in messages (:func:`resolve_buckets`).
    """
    n = _names(key)
    if isinstance(area, bool) or not isinstance(area, int) or area < 256:
        raise ConfigError(f"{n['area']} must be an integer number of pixels >= 256 (16x16), got {area!r}")
    if not isinstance(aspect_ratios, (list, tuple)) or not aspect_ratios:
        raise ConfigError(f"{n['aspect_ratios']} must be a non-empty list of width/height ratios, "
                          f"got {aspect_ratios!r}")
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ConfigError(f"{n['frames']} must be a non-empty list of 4k+1 frame counts, got {frames!r}")
    out = []
    for i, r in enumerate(aspect_ratios):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ConfigError(f"{n['aspect_ratios']}[{i}] must be a positive number (width / height), got {r!r}")
        h = max(16, 16 * round(math.sqrt(area / r) / 16))
        w = max(16, 16 * round(math.sqrt(area * r) / 16))
        for j, f in enumerate(frames):
            out.append(parse_bucket([f, h, w], f"{n['frames']}[{j}]"))
    return _canonical(out)


def resolve_buckets(sizes: Sequence[object] | None = None, aspect_ratios: Sequence[float] | None = None,
                    area: int | None = None, frames: Sequence[int] | None = None,
                    key: str | Mapping[str, str] = "buckets") -> tuple[Bucket, ...] | None:
    """The bucket set of a config: ``sizes`` (explicit ``[frames, height, width]`` entries),
    or ``aspect_ratios`` with ``area`` and ``frames`` (:func:`generate_buckets`), or ``None``
    when neither is set (no buckets). Canonical order; :class:`ConfigError` naming
    ``key.sizes[i]`` etc. for a bad entry, a duplicate, or both forms at once (``key`` may
    instead map ``sizes``, ``aspect_ratios``, ``area`` and ``frames`` to the names to print,
    e.g. command-line options)."""
    n = _names(key)
    if sizes is not None and aspect_ratios is not None:
        raise ConfigError(f"set one of {n['sizes']} (explicit buckets) and {n['aspect_ratios']} (generated "
                          f"from {n['area']} and {n['frames']}), not both")
    if sizes is not None:
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise ConfigError(f"{n['sizes']} must be a non-empty list of [frames, height, width], got {sizes!r}")
        seen: dict[Bucket, int] = {}
        for i, entry in enumerate(sizes):
            bucket = parse_bucket(entry, f"{n['sizes']}[{i}]")
            if bucket in seen:
                raise ConfigError(f"{n['sizes']}[{i}] {bucket} repeats {n['sizes']}[{seen[bucket]}]")
            seen[bucket] = i
        return _canonical(list(seen))
    if aspect_ratios is not None:
        if area is None or frames is None:
            raise ConfigError(f"{n['aspect_ratios']} needs {n['area']} and {n['frames']}")
        return generate_buckets(area, aspect_ratios, frames, key)
    return None


class BucketSettings(Protocol):
    """A bucket config section (the run config's ``data.buckets``)."""

    sizes: Sequence[object] | None
    aspect_ratios: Sequence[float] | None
    area: int | None
    frames: Sequence[int] | None
    unfit: str
    max_crop: float | None


def resolve_bucket_config(cfg: BucketSettings, default_area: int | None, default_frames: int | None,
                          key: str = "data.buckets") -> tuple[Bucket, ...] | None:
    """The bucket set of a bucket config section (attributes ``sizes``, ``aspect_ratios``,
    ``area``, ``frames``, ``unfit``, ``max_crop``; the run config's ``data.buckets``), also
    checking ``unfit`` and ``max_crop``. Generated buckets default to ``default_area`` pixels
    and ``[default_frames]`` frames. ``None`` when buckets are off."""
    unfit, max_crop = cfg.unfit, cfg.max_crop
    if unfit not in UNFIT_POLICIES:
        raise ConfigError(f"{key}.unfit must be one of {', '.join(UNFIT_POLICIES)}, got {unfit!r}")
    if max_crop is not None and not 0.0 <= max_crop < 1.0:
        raise ConfigError(f"{key}.max_crop must be in [0, 1) (a share of the clip's area) or null, got {max_crop}")
    ratios = cfg.aspect_ratios
    area = cfg.area
    frames = cfg.frames
    if ratios is not None:
        area = default_area if area is None else area
        frames = ([default_frames] if default_frames is not None else None) if frames is None else frames
        if area is None or frames is None:
            raise ConfigError(f"{key}.aspect_ratios needs {key}.area and {key}.frames (or data.height, data.width "
                              f"and data.num_frames to default them)")
    return resolve_buckets(cfg.sizes, ratios, area, frames, key)


# ----------------------------------------------------------------------------------------
# assignment
@dataclass(frozen=True)
class ClipShape:
    """What assignment needs of a clip: ``frames`` stored frames of ``height x width``."""

    clip_id: str
    frames: int
    height: int
    width: int


@dataclass(frozen=True)
class Unfit:
    """A clip that fits no bucket: ``reason`` is :data:`TOO_SHORT` or :data:`CROP`."""

    clip_id: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.clip_id}: {self.message} [{self.reason}]"


def choose_bucket(clip: ClipShape, buckets: Sequence[Bucket], stride: int = 1,
                  max_crop: float | None = None) -> int | Unfit:
    """Index into ``buckets`` of the clip's bucket (rule in the module docstring), or the
    :class:`Unfit` saying why there is none."""
    aspect = clip.width / clip.height
    area = clip.height * clip.width
    fitting = [i for i, b in enumerate(buckets) if b.span(stride) <= clip.frames]
    if not fitting:
        shortest = min(buckets, key=lambda b: b.span(stride))
        return Unfit(clip.clip_id, TOO_SHORT,
                     f"{clip.frames} frames, the shortest bucket {shortest} needs {shortest.span(stride)} "
                     f"at stride {stride}")

    def rank(i: int) -> tuple:
        b = buckets[i]
        return (round(abs(math.log(b.aspect / aspect)) / _TIE), -b.frames,
                round(abs(math.log(b.area / area)) / _TIE), -b.area, i)

    best = min(fitting, key=rank)
    b = buckets[best]
    cut = 1.0 - min(aspect, b.aspect) / max(aspect, b.aspect)
    if max_crop is not None and cut > max_crop + _TIE:
        return Unfit(clip.clip_id, CROP,
                     f"{clip.height}x{clip.width} (aspect {aspect:.3f}) would lose {cut:.0%} of its area to the "
                     f"nearest bucket {b} (aspect {b.aspect:.3f}); max_crop is {max_crop:.0%}")
    return best


@dataclass
class BucketAssignment:
    """The buckets of a dataset's clips.

    Attributes:
        buckets: the bucket set (canonical order).
        kept: indices (into the clips given to :func:`assign_buckets`) of the clips that fit.
        bucket_of: the bucket index of each kept clip, aligned with ``kept``.
        unfit: the clips that fit no bucket, with their reasons.
    """

    buckets: tuple[Bucket, ...]
    kept: list[int]
    bucket_of: list[int]
    unfit: list[Unfit]

    def counts(self) -> list[int]:
        """Kept clips per bucket, aligned with ``buckets``."""
        out = [0] * len(self.buckets)
        for k in self.bucket_of:
            out[k] += 1
        return out

    def summary(self) -> str:
        """One line: clips per bucket and the number left out."""
        per = ", ".join(f"{b}: {n}" for b, n in zip(self.buckets, self.counts()))
        return f"{len(self.kept)} clip(s) in {len(self.buckets)} bucket(s) ({per}); {len(self.unfit)} fit none"


def _refuse(assignment: BucketAssignment, where: Path) -> None:
    if assignment.unfit:
        first = assignment.unfit[0]
        more = f" (and {len(assignment.unfit) - 1} more)" if len(assignment.unfit) > 1 else ""
        raise DataError(where, NO_BUCKET,
                        f"clip {first.clip_id!r} fits no bucket: {first.message} [{first.reason}]{more}; set the "
                        f"unfit policy to skip (data.buckets.unfit=skip, --unfit skip) to train without such clips, "
                        f"or add a bucket")


def _skip(assignment: BucketAssignment, where: Path) -> None:  # noqa: ARG001 (the report lists them)
    return None


#: What to do with clips that fit no bucket: ``policy(assignment, metadata_path)`` raises or returns.
UNFIT_POLICIES: dict[str, Callable[[BucketAssignment, Path], None]] = {"error": _refuse, "skip": _skip}


def assign_buckets(clips: Sequence[ClipShape], buckets: Sequence[Bucket], stride: int = 1,
                   max_crop: float | None = None, unfit: str = "error",
                   where: str | Path = "metadata.json") -> BucketAssignment:
    """Assign every clip (:func:`choose_bucket`) and apply the ``unfit`` policy
    (:data:`UNFIT_POLICIES`); ``where`` is the file named in a refusal. Raises
    :class:`~fantasyworld.errors.DataError` (``no_bucket``) when the policy refuses or when no
    clip fits at all."""
    if unfit not in UNFIT_POLICIES:
        raise ConfigError(f"unfit must be one of {', '.join(UNFIT_POLICIES)}, got {unfit!r}")
    buckets = tuple(buckets)
    kept, bucket_of, bad = [], [], []
    for i, clip in enumerate(clips):
        got = choose_bucket(clip, buckets, stride, max_crop)
        if isinstance(got, Unfit):
            bad.append(got)
        else:
            kept.append(i)
            bucket_of.append(got)
    assignment = BucketAssignment(buckets, kept, bucket_of, bad)
    UNFIT_POLICIES[unfit](assignment, Path(where))
    if not kept:
        raise DataError(where, NO_BUCKET, f"no clip fits any bucket ({', '.join(map(str, buckets))}); first: "
                                          f"{bad[0] if bad else 'the dataset is empty'}")
    return assignment
