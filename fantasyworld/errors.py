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
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BAD_DTYPE", "BAD_INTRINSICS", "BAD_METADATA", "BAD_SHAPE", "CAMERA_COLUMNS", "CORRUPT_VIDEO", "DUPLICATE_ID",
    "FRAME_COUNT", "KINDS", "MISSING_FILE", "NO_BUCKET", "NON_FINITE", "NON_ORTHONORMAL", "PATH_ESCAPE",
    "TOO_FEW_FRAMES", "UNREADABLE",
    "CheckpointError", "ConfigError", "DataError", "EstimatorError", "FantasyWorldError", "Interrupted",
    "NonFiniteLossError", "OutputError", "Problem",
    "TrajectoryError", "UnsupportedModeError", "check_output_dir", "interrupt_on_signals", "staged_output_dir",
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
NO_BUCKET = "no_bucket"  # a clip fits none of the configured resolution/frame buckets

KINDS = (
    MISSING_FILE, CORRUPT_VIDEO, FRAME_COUNT, BAD_SHAPE, BAD_DTYPE, NON_FINITE, CAMERA_COLUMNS,
    NON_ORTHONORMAL, PATH_ESCAPE, DUPLICATE_ID, BAD_METADATA, BAD_INTRINSICS, TOO_FEW_FRAMES,
    UNREADABLE, NO_BUCKET,
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


class UnsupportedModeError(FantasyWorldError, ValueError):
    """A checkpoint cannot serve the mode asked of it (e.g. evaluating a two-expert checkpoint's
    geometry at a noise level only its high-noise expert runs, whose heads are never read); the
    message names the checkpoint, says why and what works instead."""


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGTERM or SIGINT, after leaving a resumable state.

    A ``KeyboardInterrupt`` (so broad ``except Exception`` blocks do not swallow it);
    ``exit_code`` is the shell's convention, ``128 + signal number``: 143 for SIGTERM, 130
    for SIGINT. The CLI prints the message and exits with it."""

    def __init__(self, signum: int, message: str):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(message)


def check_output_dir(path: str | Path, label: str = "output folder", overwrite: bool | None = None) -> None:
    """Raise :class:`OutputError` unless ``path`` is, or can be created as, a writable directory.

    Checked before any work starts, so a bad ``--out`` / ``output_dir`` fails at once and
    writes nothing. ``label`` names the option in the message (``--out``, ``output_dir``).
    ``overwrite=False`` also refuses a directory that already holds files (an earlier result
    is never replaced unasked); ``None`` skips that check.
    """
    path = Path(path)
    if overwrite is False and path.is_dir() and any(path.iterdir()):
        n = sum(1 for p in path.rglob("*") if not p.is_dir())
        raise OutputError(f"{label} {path}: already holds {n} file(s) of an earlier result; pass --overwrite to "
                          f"replace them, or choose another folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise OutputError(f"{label} {path}: {what}, not a directory")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        what = "is read-only" if probe == path else f"cannot be created: {probe} is read-only"
        raise OutputError(f"{label} {path}: {what}")


@contextmanager
def staged_output_dir(path: str | Path) -> Iterator[Path]:
    """Write a result into a temporary sibling of ``path`` and swap it in as a whole.

    Yields the temporary folder. On success the previous ``path`` (if any) is moved aside,
    the new folder renamed to ``path`` and the previous one deleted, so ``path`` never mixes
    files of two results and an interrupted write leaves the previous result in place. On an
    error (or a signal) the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def interrupt_on_signals(what: str) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` (``"<SIGNAL>: {what}
    stopped"``) in the main thread, so ``finally`` blocks run (a staged output folder is
    removed, the previous result stays) and the CLI exits with 143 / 130. A handler installed
    inside the block (the trainer's, which checkpoints first) takes precedence while it is
    installed. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:  # noqa: ARG001
        raise Interrupted(signum, f"{signal.Signals(signum).name}: {what} stopped")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
