"""Errors raised by the data readers, the loader and ``fantasyworld data validate``.

Every problem names the file it concerns and what is wrong with it, in one line:
``<path>: <problem>``. The validator collects :class:`Problem` records; the loader raises
the same information as a :class:`DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Problem kinds (stable names, used by tests and by scripts that parse the report).
MISSING_FILE = "missing_file"
CORRUPT_VIDEO = "corrupt_video"
FRAME_COUNT = "frame_count_mismatch"
BAD_SHAPE = "bad_shape"
BAD_DTYPE = "bad_dtype"
NON_FINITE = "non_finite"
CAMERA_COLUMNS = "camera_columns"
NON_ORTHONORMAL = "non_orthonormal_rotation"
PATH_ESCAPE = "path_escapes_root"
DUPLICATE_ID = "duplicate_clip_id"
BAD_METADATA = "bad_metadata"
BAD_INTRINSICS = "bad_intrinsics"
TOO_FEW_FRAMES = "too_few_frames"

KINDS = (
    MISSING_FILE, CORRUPT_VIDEO, FRAME_COUNT, BAD_SHAPE, BAD_DTYPE, NON_FINITE, CAMERA_COLUMNS,
    NON_ORTHONORMAL, PATH_ESCAPE, DUPLICATE_ID, BAD_METADATA, BAD_INTRINSICS, TOO_FEW_FRAMES,
)


@dataclass(frozen=True)
class Problem:
    """One problem with one file: ``kind`` is one of :data:`KINDS`."""

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.kind}]"


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent.

    Attributes:
        path: the offending file (as given, usually absolute).
        kind: one of :data:`KINDS`.
        message: what is wrong, without the path.
    """

    def __init__(self, path: str | Path, kind: str, message: str):
        self.path = str(path)
        self.kind = kind
        self.message = message
        super().__init__(f"{self.path}: {message} [{kind}]")

    @property
    def problem(self) -> Problem:
        return Problem(self.path, self.kind, self.message)
