"""The internal camera-sequence type of the camera files and the checks every reader shares.

:class:`CameraSequence` is what every reader of :mod:`fantasyworld.geometry.camera_io` returns:
``w2c`` ``(T, 4, 4)`` float64 world-to-camera, OpenCV axes, and optional pixel intrinsics
(corner convention). Problems raise :class:`~fantasyworld.errors.DataError` naming the file
and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fantasyworld.errors import CAMERA_COLUMNS, MISSING_FILE, NON_FINITE, NON_ORTHONORMAL, UNREADABLE, DataError
from fantasyworld.geometry.cameras import rotation_orthonormality_error

__all__ = ["ROTATION_TOLERANCE", "CameraSequence", "check_rotations", "missing", "parse_rows", "read_text", "split_row"]

#: Tolerance of :func:`check_rotations`: files written with 6 decimals reach ~1e-6.
ROTATION_TOLERANCE = 1e-3

#: separators of the numbers in a row of a camera text file (commas and/or spaces)
split_row = re.compile(r"[,\s]+")


@dataclass
class CameraSequence:
    """Cameras of one clip in the internal convention.

    Attributes:
        w2c: ``(T, 4, 4)`` float64 world-to-camera, OpenCV axes.
        K: ``(T, 3, 3)`` float64 pixel intrinsics (corner convention) or ``None`` when the
            file has none (seed rows, TUM).
        timestamps: ``(T,)`` float64 or ``None``.
        names: per-frame names (COLMAP image names) or ``None``.
    """

    w2c: np.ndarray
    K: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.w2c.shape[0])


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
