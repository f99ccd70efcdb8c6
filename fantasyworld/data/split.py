"""Deterministic train / held-out split of a dataset's clips, by clip-id hash.

A clip is **held out** when the first 8 hex digits of ``sha256(clip_id)``, read as an
integer and divided by ``2**32``, fall below ``fraction`` (default :data:`HELD_OUT_FRACTION`).
Membership depends on the clip id alone: adding or removing other clips never moves a clip
between splits, and renaming a clip may. If no clip of a dataset falls below the threshold
(small datasets), the clip with the smallest hash is held out, so the held-out split is never
empty. The demo and ``fantasyworld evaluate --split held-out`` use this rule; training on
the complement is the caller's job (the demo writes a training root without them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["HELD_OUT_FRACTION", "SPLITS", "clip_hash", "select_split", "split_clip_ids"]

#: Default share of clips held out.
HELD_OUT_FRACTION = 0.2
#: Accepted ``--split`` values.
SPLITS = ("held-out", "train", "all")


def clip_hash(clip_id: str) -> float:
    """``int(sha256(clip_id)[:8], 16) / 2**32`` in ``[0, 1)``."""
    return int(hashlib.sha256(clip_id.encode("utf-8")).hexdigest()[:8], 16) / 2.0**32


def split_clip_ids(clip_ids: Iterable[str], fraction: float = HELD_OUT_FRACTION) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` clip ids, each in input order (see the module docstring)."""
    ids = list(clip_ids)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction}")
    held = {c for c in ids if clip_hash(c) < fraction}
    if not held and ids and fraction > 0:
        held = {min(ids, key=clip_hash)}
    return [c for c in ids if c not in held], [c for c in ids if c in held]


def select_split(clip_ids: Iterable[str], split: str, fraction: float = HELD_OUT_FRACTION) -> list[str]:
    """The clip ids of ``split`` (``held-out``, ``train`` or ``all``), in input order."""
    ids = list(clip_ids)
    if split == "all":
        return ids
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    train, held = split_clip_ids(ids, fraction)
    return held if split == "held-out" else train
