"""Per-clip evaluation scenes: what the viewer needs to show a prediction beside the truth.

``evaluate`` writes one ``OUT/scenes/<clip_id>.npz`` per sample clip (the clips that get
figures in the report, ``EvalSettings.sample_clips``) with the ``latents``-mode prediction.
Letters T frames, H x W pixels; cameras are 4x4 world-to-camera matrices, OpenCV axes;
each ``gt_*`` array is in the clip's ground-truth frame and units, each ``pred_*`` array in
the prediction's own frame (the first predicted camera) and scale:

================  ====================  ==========================================
``frames``        (T, H, W, 3) uint8    the clip's frames
``gt_depth``      (T, H, W) float32     ground-truth z-depth
``gt_w2c``        (T, 4, 4) float64     ground-truth cameras
``gt_intrinsics`` (T, 3, 3) float64     pixel intrinsics at H x W
``pred_points``   (T, H, W, 3) float32  predicted point maps
``pred_conf``     (T, H, W) float32     predicted depth confidence
``pred_w2c``      (T, 4, 4) float64     predicted cameras
================  ====================  ==========================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SCENES_DIR", "list_scenes", "read_scene", "write_scene"]

SCENES_DIR = "scenes"


def write_scene(out_dir: str | Path, sample: dict[str, Any]) -> Path | None:
    """Write ``out_dir/scenes/<clip_id>.npz`` from one evaluation sample (the report's
    figure dict: ``clip_id``, ``frames``, ``gt`` and ``latents``); None without a
    ``latents`` prediction."""
    pred = sample.get("latents")
    if pred is None:
        return None
    gt = sample["gt"]
    path = Path(out_dir) / SCENES_DIR / f"{sample['clip_id']}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, frames=np.asarray(sample["frames"], np.uint8), gt_depth=np.asarray(gt["depth"], np.float32),
        gt_w2c=np.asarray(gt["w2c"], np.float64), gt_intrinsics=np.asarray(gt["intrinsics"], np.float64),
        pred_points=np.asarray(pred["world_points"], np.float32), pred_conf=np.asarray(pred["depth_conf"], np.float32),
        pred_w2c=np.asarray(pred["w2c"], np.float64))
    return path


def list_scenes(out_dir: str | Path) -> list[str]:
    """Clip ids with a saved scene in ``out_dir/scenes``, sorted."""
    return sorted(p.stem for p in (Path(out_dir) / SCENES_DIR).glob("*.npz"))


def read_scene(out_dir: str | Path, clip_id: str) -> dict[str, np.ndarray]:
    """The arrays of ``out_dir/scenes/<clip_id>.npz`` (module docstring)."""
    with np.load(Path(out_dir) / SCENES_DIR / f"{clip_id}.npz") as z:
        return {k: z[k] for k in z.files}
