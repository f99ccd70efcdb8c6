"""Writing an annotated dataset clip by clip, so that a clip is either complete or absent.

Layout written under ``ROOT`` (the seed layout plus the annotation's own files)::

    metadata.json                    the clips annotated so far (rewritten after each clip)
    videos/<clip>.mp4                H.264, the sampled frames
    depth/<clip>.npy                 (T, H, W) float32 z-depth, 0 = invalid
    points/<clip>.npy                (T, H, W, 3) float32 world points, 0 where invalid
    camera_params/<clip>.txt         T rows x 12: row-major 3x4 w2c, OpenCV
    annotations/<clip>.json          the clip's marker: status, metadata record, report entry
    report/<clip>_depth.png, report/<clip>_trajectory.png   thumbnails
    report.json, report.html         the quality report (rewritten at the end)

A clip is written into ``ROOT/.annotate_tmp/<clip>/`` first; its files are then renamed
into place and its marker ``annotations/<clip>.json`` is written last (temp file +
rename). The marker is the commit point: a clip without one is redone on the next run
(its leftovers are replaced), a clip with one is skipped, and ``metadata.json`` lists only
committed clips, so an interrupted run never leaves a half-written clip in the dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from fantasyworld.data.formats import METADATA_NAME, write_metadata
from fantasyworld.errors import OutputError, check_output_dir

MARKERS = "annotations"
SCRATCH = ".annotate_tmp"


def clip_files(clip_id: str) -> dict[str, str]:
    """Final paths (relative to the root) of one clip's files, by role."""
    return {
        "video": f"videos/{clip_id}.mp4",
        "depth": f"depth/{clip_id}.npy",
        "points": f"points/{clip_id}.npy",
        "cameras": f"camera_params/{clip_id}.txt",
        "depth_png": f"report/{clip_id}_depth.png",
        "trajectory_png": f"report/{clip_id}_trajectory.png",
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class AnnotationStore:
    """The output root of ``data annotate`` (module docstring).

    Raises:
        OutputError: ``root`` cannot be written, or it already holds a dataset that
            ``data annotate`` did not write (a ``metadata.json`` without ``annotations/``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        check_output_dir(self.root, "--out")
        if (self.root / METADATA_NAME).exists() and not (self.root / MARKERS).is_dir():
            raise OutputError(f"--out {self.root}: holds a dataset that data annotate did not write "
                              f"(metadata.json without {MARKERS}/); choose another folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.markers = self.root / MARKERS
        self.markers.mkdir(exist_ok=True)
        self.scratch_root = self.root / SCRATCH

    def marker_path(self, clip_id: str) -> Path:
        return self.markers / f"{clip_id}.json"

    def marker(self, clip_id: str) -> dict | None:
        """The committed marker of a clip, or ``None`` (never committed, unreadable, or an
        ``ok`` clip whose files are gone: all mean "redo")."""
        path = self.marker_path(clip_id)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        if data.get("status") == "ok":
            files = clip_files(clip_id)
            if not all((self.root / files[k]).is_file() for k in ("video", "depth", "points", "cameras")):
                return None
        return data

    def scratch(self, clip_id: str) -> Path:
        """A fresh scratch folder for one clip (leftovers of an interrupted run removed)."""
        path = self.scratch_root / clip_id
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def _remove_clip_files(self, clip_id: str) -> None:
        for rel in clip_files(clip_id).values():
            (self.root / rel).unlink(missing_ok=True)

    def commit(self, clip_id: str, written: dict[str, Path], marker: dict) -> None:
        """Move a clip's scratch files (role -> path, roles of :func:`clip_files`) into place,
        then write its marker (the commit). A rejected clip (``written`` empty) loses any
        files an earlier run left."""
        self.marker_path(clip_id).unlink(missing_ok=True)
        if not written:
            self._remove_clip_files(clip_id)
        final = clip_files(clip_id)
        for role, src in written.items():
            dst = self.root / final[role]
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        write_json_atomic(self.marker_path(clip_id), marker)
        shutil.rmtree(self.scratch_root / clip_id, ignore_errors=True)

    def markers_all(self) -> list[dict]:
        """Every committed marker, sorted by clip id."""
        out = []
        for path in sorted(self.markers.glob("*.json")):
            data = self.marker(path.stem)
            if data is not None:
                out.append(data)
        return out

    def write_metadata(self) -> int:
        """Rewrite ``metadata.json`` from the ``ok`` markers (atomically); returns the count."""
        records = [m["record"] for m in self.markers_all() if m.get("status") == "ok"]
        if not records:
            (self.root / METADATA_NAME).unlink(missing_ok=True)
            return 0
        write_metadata(self.root, records)
        return len(records)

    def finish(self) -> None:
        """Remove the scratch root when it is empty."""
        try:
            self.scratch_root.rmdir()
        except OSError:
            pass
