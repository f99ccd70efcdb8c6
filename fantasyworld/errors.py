"""The project's errors: one hierarchy, importable from every layer.

Every error the package raises on purpose derives from :class:`FantasyWorldError`, so a
caller (the CLI, a script) can catch them all at once and print the one-line message. Each
concrete error also derives from the builtin it refines (``ValueError`` for bad input,
``RuntimeError`` for a run that cannot continue), so code catching the builtin still works.

Messages name the offending thing first: ``<path or key>: <problem>``.

This module imports nothing from the package (it is the ground floor).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BAD_DTYPE", "BAD_INTRINSICS", "BAD_METADATA", "BAD_SHAPE", "CAMERA_COLUMNS", "CORRUPT_VIDEO", "DUPLICATE_ID",
    "FRAME_COUNT", "KINDS", "MISSING_FILE", "NON_FINITE", "NON_ORTHONORMAL", "PATH_ESCAPE", "TOO_FEW_FRAMES",
    "UNREADABLE",
    "CheckpointError", "ConfigError", "DataError", "EstimatorError", "FantasyWorldError", "NonFiniteLossError",
    "OutputError", "Problem",
    "TrajectoryError", "check_output_dir",
]

# Data problem kinds (stable names, used by tests and by scripts that parse the report).
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
UNREADABLE = "unreadable_file"  # exists but cannot be read as text (not UTF-8, no permission)

KINDS = (
    MISSING_FILE, CORRUPT_VIDEO, FRAME_COUNT, BAD_SHAPE, BAD_DTYPE, NON_FINITE, CAMERA_COLUMNS,
    NON_ORTHONORMAL, PATH_ESCAPE, DUPLICATE_ID, BAD_METADATA, BAD_INTRINSICS, TOO_FEW_FRAMES,
    UNREADABLE,
)


class FantasyWorldError(Exception):
    """Base of every error the package raises on purpose; the message is one line."""


@dataclass(frozen=True)
class Problem:
    """One problem with one file: ``kind`` is one of :data:`KINDS`.

    The validator (``fantasyworld data validate``) collects these; the readers and the loader
    raise the same information as a :class:`DataError`.
    """

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.kind}]"


class DataError(FantasyWorldError, ValueError):
    """A dataset or camera file is missing, unreadable or inconsistent.

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


class CheckpointError(FantasyWorldError, ValueError):
    """A checkpoint does not match the model it is loaded into; the message names keys."""


class ConfigError(FantasyWorldError, ValueError):
    """A run config is invalid; the message names the key(s) and the fix."""


class TrajectoryError(FantasyWorldError, ValueError):
    """A requested camera trajectory is unknown, unreadable or does not fit the generation.

    The message starts with the offending file or name."""


class EstimatorError(FantasyWorldError, ValueError):
    """A geometry estimator of ``fantasyworld data annotate`` cannot be used: its model
    directory does not exist or holds another model type, a ``module:function`` plug-in
    does not import, a required package is missing. Raised before any clip is written;
    the message starts with the option or path at fault."""


class NonFiniteLossError(FantasyWorldError, RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class OutputError(FantasyWorldError, ValueError):
    """An output folder cannot be written (it is a file, or read-only); the message names it."""


def check_output_dir(path: str | Path, label: str = "output folder") -> None:
    """Raise :class:`OutputError` unless ``path`` is, or can be created as, a writable directory.

    Checked before any work starts, so a bad ``--out`` / ``output_dir`` fails at once and
    writes nothing. ``label`` names the option in the message (``--out``, ``output_dir``).
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise OutputError(f"{label} {path}: {what}, not a directory")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        what = "is read-only" if probe == path else f"cannot be created: {probe} is read-only"
        raise OutputError(f"{label} {path}: {what}")
