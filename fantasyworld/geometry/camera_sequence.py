"""The one camera-sequence type and the checks every camera-file reader shares.

:class:`CameraSequence` is what every reader of :mod:`fantasyworld.geometry.camera_io` returns
and what conditions a generation (the trajectories of :mod:`fantasyworld.inference.trajectories`):
``w2c`` ``(T, 4, 4)`` float64 world-to-camera, OpenCV axes, and optional pixel intrinsics
(corner convention) at ``(height, width)``. Problems raise
:class:`~fantasyworld.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fantasyworld.errors import CAMERA_COLUMNS, MISSING_FILE, NON_FINITE, NON_ORTHONORMAL, UNREADABLE, DataError
from fantasyworld.geometry.cameras import c2w_to_w2c, relative_to_first, rotation_orthonormality_error, w2c_to_c2w
from fantasyworld.geometry.plucker import plucker_rays

__all__ = ["ROTATION_TOLERANCE", "CameraSequence", "check_rotations", "missing", "parse_rows", "read_text", "split_row"]

#: Tolerance of :func:`check_rotations`: files written with 6 decimals reach ~1e-6.
ROTATION_TOLERANCE = 1e-3

#: separators of the numbers in a row of a camera text file (commas and/or spaces)
split_row = re.compile(r"[,\s]+")


@dataclass
class CameraSequence:
    """A sequence of cameras in the internal convention: what every camera-file reader returns
    and what conditions a generation (a *trajectory*: intrinsics present at ``(height, width)``).

    Attributes:
        w2c: ``(T, 4, 4)`` float64 world-to-camera, OpenCV axes.
        K: ``(T, 3, 3)`` float64 pixel intrinsics (corner convention) at ``(height, width)``,
            or ``None`` when the file has none (seed rows, TUM).
        height, width: the resolution ``K`` refers to (``None`` when not known yet).
        source: where it came from (a path or ``name:magnitude``), used in messages.
        extra: anything a reader or a named path records (``magnitude`` ...).
        timestamps: ``(T,)`` float64 or ``None``.
        names: per-frame names (COLMAP image names) or ``None``.
    """

    w2c: np.ndarray
    K: np.ndarray | None = None
    height: int | None = None
    width: int | None = None
    source: str = "array"
    extra: dict = field(default_factory=dict)
    timestamps: np.ndarray | None = None
    names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.w2c.shape[0])

    @property
    def c2w(self) -> np.ndarray:
        """``(T, 4, 4)`` camera-to-world."""
        return w2c_to_c2w(self.w2c)

    def centers(self) -> np.ndarray:
        """``(T, 3)`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def relative(self) -> CameraSequence:
        """Poses relative to frame 0 (:func:`~fantasyworld.geometry.cameras.relative_to_first`:
        ``w2c[t] @ c2w[0]``; frame 0 becomes the identity)."""
        k = None if self.K is None else self.K.copy()
        return replace(self, w2c=relative_to_first(self.w2c), K=k, extra=dict(self.extra))

    def scaled(self, factor: float) -> CameraSequence:
        """Translations of the relative trajectory multiplied by ``factor`` (a scene-scale
        correction, e.g. when a file's units are metres and the scene is ~5 m deep)."""
        rel = self.relative()
        c2w = rel.c2w
        c2w[:, :3, 3] *= factor
        return replace(rel, w2c=c2w_to_w2c(c2w), extra=dict(self.extra))

    def plucker(self, legacy_official_intrinsics: bool = False) -> torch.Tensor:
        """Plücker rays ``(1, T, 6, H, W)`` float32, relative to frame 0 (what the model reads)."""
        if self.K is None or self.height is None or self.width is None:
            raise ValueError(f"{self.source}: Plücker rays need intrinsics at a known (height, width)")
        w2c = torch.from_numpy(self.w2c).double()[None]
        k = torch.from_numpy(self.K).double()[None]
        rays = plucker_rays(w2c, k, self.height, self.width, relative_to_first=True,
                            legacy_official_intrinsics=legacy_official_intrinsics)
        return rays.float()


def missing(path: Path) -> None:
    """Raise a ``missing_file`` :class:`DataError` unless ``path`` exists."""
    if not path.exists():
        raise DataError(path, MISSING_FILE, "file does not exist")


def read_text(path: Path) -> str:
    """The text of a camera file; raises a ``missing_file`` or ``unreadable_file``
    :class:`DataError` (not UTF-8, a directory, no permission) instead of an ``OSError`` or
    ``UnicodeDecodeError``. The message never quotes the file's bytes."""
    missing(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, UNREADABLE, f"not UTF-8 text (undecodable byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(path, UNREADABLE, f"cannot read file ({type(exc).__name__}: {exc.strerror})") from None


def parse_rows(path: Path, ncols: int, skip_header: bool = False) -> tuple[np.ndarray, int]:
    """Numeric rows of a text file; blank and ``#`` lines skipped. Returns rows and the
    number of leading lines skipped as a header."""
    lines = read_text(path).splitlines()
    rows: list[list[float]] = []
    skipped = 0
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p for p in split_row.split(text) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            if skip_header and not rows and skipped == 0:
                skipped = lineno
                continue
            raise DataError(path, CAMERA_COLUMNS, f"line {lineno}: not numeric: {text[:60]!r}") from None
        if len(values) != ncols:
            raise DataError(
                path, CAMERA_COLUMNS, f"line {lineno}: expected {ncols} columns, found {len(values)}"
            )
        rows.append(values)
    if not rows:
        raise DataError(path, CAMERA_COLUMNS, f"no camera rows (expected {ncols} numbers per line)")
    arr = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise DataError(path, NON_FINITE, f"row {bad + 1}: NaN or inf in camera values")
    return arr, skipped


def check_rotations(path: str | Path, w2c: np.ndarray, tol: float = ROTATION_TOLERANCE) -> None:
    """Raise :class:`DataError` if any rotation block of ``(T, 4, 4)`` is not orthonormal
    with determinant +1 within ``tol`` (max-abs entry of ``R R^T - I`` and ``|det - 1|``)."""
    err = rotation_orthonormality_error(w2c[:, :3, :3])
    if np.any(err > tol):
        idx = int(np.argmax(err))
        raise DataError(
            path, NON_ORTHONORMAL, f"row {idx + 1}: rotation not orthonormal (error {err[idx]:.3g} > {tol})"
        )
