"""Ground-truth pass-through: geometry a dataset already ships (``--depth gt``, ``--cameras gt``).

The geometry is read from a seed-layout dataset (``--gt-root``; default: the folder above
the videos folder when it holds a ``metadata.json``, as ``fantasyworld data synth`` writes
it), matched to each video by clip id or by the record's video file, read with the
loader's checks (:func:`fantasyworld.data.loader.inspect_clip`) and brought to the output
frames with the same crop/resize (nearest sampling for depth, ``CropResize.intrinsics``
for K).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fantasyworld.data.formats import METADATA_NAME, ClipRecord, Reporter, load_metadata
from fantasyworld.data.loader import inspect_clip
from fantasyworld.data.transforms import CropResize
from fantasyworld.errors import MISSING_FILE, DataError


@dataclass
class GroundTruthClip:
    """One clip's ground truth at the output frames: ``w2c`` ``(T, 4, 4)``, ``K``
    ``(T, 3, 3)``, ``depth`` ``(T, H, W)`` (0 = invalid) and ``points`` ``(T, H, W, 3)``."""

    w2c: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    points: np.ndarray


class GroundTruthSource:
    """The clips of a seed-layout dataset, looked up by video."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / METADATA_NAME).is_file():
            raise DataError(self.root / METADATA_NAME, MISSING_FILE,
                            "ground-truth pass-through needs a seed-layout dataset here (--gt-root)")
        self.records = load_metadata(self.root)
        self._by_id = {r.clip_id: r for r in self.records}

    @staticmethod
    def default_root(videos: str | Path) -> Path | None:
        """The folder above a videos folder (or above a glob's folder) if it holds metadata."""
        p = Path(videos)
        folder = p if p.is_dir() else Path(os.path.dirname(str(p)) or ".")
        while any(ch in str(folder) for ch in "*?[") and folder != folder.parent:
            folder = folder.parent
        for cand in (folder.parent, folder):
            if (cand / METADATA_NAME).is_file():
                return cand
        return None

    def record(self, clip_id: str, video: Path) -> ClipRecord:
        rec = self._by_id.get(clip_id)
        if rec is None:
            for r in self.records:
                if r.video.exists() and video.exists() and os.path.samefile(r.video, video):
                    rec = r
                    break
        if rec is None:
            raise DataError(self.root / METADATA_NAME, MISSING_FILE,
                            f"no ground-truth record for clip {clip_id!r} ({video.name})")
        return rec

    def clip(self, clip_id: str, video: Path, indices: np.ndarray, plan: CropResize) -> GroundTruthClip:
        """Ground truth of frames ``indices`` through ``plan`` (raises :class:`DataError`)."""
        rec = self.record(clip_id, video)
        info = inspect_clip(self.root, rec, Reporter())
        assert info is not None
        if int(indices.max()) >= info.num_frames:
            raise DataError(rec.cameras, MISSING_FILE,
                            f"ground truth has {info.num_frames} frames, frame {int(indices.max())} requested")
        rows_cols = plan.index_maps()
        depth = info.depth.read(indices, allow_nonfinite=True, rows_cols=rows_cols)
        points = info.points.read(indices, allow_nonfinite=True, rows_cols=rows_cols)
        bad = ~(np.isfinite(depth) & (depth > 0) & np.isfinite(points).all(-1))
        depth[bad] = 0.0
        points[bad] = 0.0
        return GroundTruthClip(info.w2c[indices], plan.intrinsics(info.K[indices]), depth, points)
