"""Read back the folder written by ``generate``, ``evaluate`` or ``demo`` as one scene.

Letters: T frames, H x W pixels, N fused points. Every array of a :class:`OutputScene` is in
one world frame with OpenCV axes (x right, y down, z forward); cameras are 4x4
world-to-camera matrices with pixel intrinsics at ``H x W``:

``generate`` (``generation.json``)
    world = the first predicted camera (the model's scene units). The fused cloud is
    ``points.ply``, the per-frame point maps ``points.npz``, the cameras ``cameras.json``
    (``predicted`` and ``requested``; the requested trajectory is relative to its own first
    camera, in its own units), the frames ``colmap/images`` or ``video.mp4``.
``demo`` (``demo.json``)
    its ``generation/`` folder, as above; with a clip, that clip of its ``evaluation/``.
``evaluate`` (``metrics.json`` and ``scenes/<clip>.npz``, :mod:`fantasyworld.eval.scenes`)
    world = the clip's ground-truth frame; the predicted point maps and cameras (``latents``
    mode) are mapped into it by the Sim(3) that aligns the predicted camera centres to the
    ground-truth ones (as in ``trajectories.png``); cameras ``predicted`` and ``ground_truth``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fantasyworld.inference.glb import DEFAULT_GLB_MAX_POINTS, FrustumSet, write_glb

__all__ = ["OUTPUT_KINDS", "NotAnOutputError", "OutputScene", "detect_output", "load_output", "write_output_glb"]

OUTPUT_KINDS = ("generate", "evaluate", "demo")
_MARKERS = {"generation.json": "generate", "metrics.json": "evaluate", "demo.json": "demo"}


class NotAnOutputError(ValueError):
    """The folder was not written by ``generate``, ``evaluate`` or ``demo``."""


@dataclass
class OutputScene:
    """One scene of an output folder (module docstring for the world frame).

    Attributes:
        kind: ``generate``, ``evaluate`` or ``demo``.
        source: the folder the arrays were read from.
        name: what the scene shows (the prompt, or the clip id).
        xyz, rgb, conf: fused cloud ``(N, 3)`` float32, ``(N, 3)`` uint8, ``(N,)`` float32.
        frames: ``(T, H, W, 3)`` uint8 video frames.
        point_maps, point_conf: per-frame point maps ``(T, H, W, 3)`` and confidences
            ``(T, H, W)``, or None.
        cameras: frustum sets by name (``predicted``, ``requested``, ``ground_truth``).
        clips: every clip with a saved evaluation scene (evaluate and demo folders).
    """

    kind: str
    source: Path
    name: str
    xyz: np.ndarray
    rgb: np.ndarray
    conf: np.ndarray
    frames: np.ndarray
    point_maps: np.ndarray | None
    point_conf: np.ndarray | None
    cameras: dict[str, FrustumSet] = field(default_factory=dict)
    clips: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def detect_output(path: str | Path) -> str:
    """The kind of output folder ``path`` is; raises :class:`NotAnOutputError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise NotAnOutputError(f"{path}: not a folder (give the --out folder of generate, evaluate or demo)")
    for marker, kind in _MARKERS.items():
        if (path / marker).is_file():
            return kind
    raise NotAnOutputError(f"{path}: not a generate, evaluate or demo output (none of "
                           f"{', '.join(_MARKERS)} is in it)")


def _frames(folder: Path) -> np.ndarray:
    images = sorted((folder / "colmap" / "images").glob("frame_*.png"))
    if images:
        from PIL import Image

        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
    from fantasyworld.data.formats import read_video

    return read_video(folder / "video.mp4")


def _load_generation(folder: Path, kind: str) -> OutputScene:
    from fantasyworld.inference.ply import read_ply

    missing = [n for n in ("cameras.json", "points.ply") if not (folder / n).is_file()]
    if missing:
        raise NotAnOutputError(f"{folder}: a generation without geometry ({', '.join(missing)} missing): "
                               f"nothing to show in 3D")
    cams = json.loads((folder / "cameras.json").read_text())
    h, w = int(cams["height"]), int(cams["width"])
    sets = {"predicted": FrustumSet("predicted", np.asarray(cams["w2c"]), np.asarray(cams["intrinsics"]), h, w)}
    req = cams.get("requested") or {}
    if req.get("w2c") is not None and req.get("intrinsics") is not None:
        sets["requested"] = FrustumSet("requested", np.asarray(req["w2c"]), np.asarray(req["intrinsics"]), h, w)
    xyz, rgb, conf = read_ply(folder / "points.ply")
    maps = mconf = None
    if (folder / "points.npz").is_file():
        with np.load(folder / "points.npz") as z:
            maps, mconf = z["world_points"].astype(np.float32), z["world_points_conf"].astype(np.float32)
    meta = json.loads((folder / "generation.json").read_text()) if (folder / "generation.json").is_file() else {}
    name = str(meta.get("settings", {}).get("prompt", "") or folder.name)
    return OutputScene(kind, folder, name, xyz, rgb, np.ones(len(xyz), np.float32) if conf is None else conf,
                       _frames(folder), maps, mconf, sets)


def _load_evaluation(folder: Path, clip: str | None) -> OutputScene:
    from fantasyworld.eval.metrics import apply_sim3, camera_centers, umeyama_alignment
    from fantasyworld.eval.scenes import list_scenes, read_scene

    clips = list_scenes(folder)
    if not clips:
        raise NotAnOutputError(f"{folder}: an evaluation without saved scenes (scenes/*.npz); re-run evaluate "
                               f"with a version that writes them")
    if clip is not None and clip not in clips:
        raise NotAnOutputError(f"{folder}: no scene for clip {clip!r}; saved: {', '.join(clips)}")
    name = clip or clips[0]
    s = read_scene(folder, name)
    t, h, w = s["gt_depth"].shape
    gt_w2c, pred_w2c = s["gt_w2c"], s["pred_w2c"]
    scale, rot, trans = umeyama_alignment(camera_centers(pred_w2c), camera_centers(gt_w2c))
    # pred -> gt world: p' = s R p + t; w2c' = [R_c R^T, s t_c - R_c R^T t] (scale moves into t)
    c2w = np.linalg.inv(pred_w2c)
    aligned = c2w.copy()
    aligned[:, :3, :3] = rot @ c2w[:, :3, :3]
    aligned[:, :3, 3] = apply_sim3(c2w[:, :3, 3], scale, rot, trans)
    maps = apply_sim3(s["pred_points"].reshape(-1, 3), scale, rot, trans).reshape(t, h, w, 3).astype(np.float32)
    conf = s["pred_conf"].astype(np.float32)
    keep = np.isfinite(conf) & np.isfinite(maps).all(-1)
    sets = {"predicted": FrustumSet("predicted", np.linalg.inv(aligned), s["gt_intrinsics"], h, w),
            "ground_truth": FrustumSet("ground_truth", gt_w2c, s["gt_intrinsics"], h, w)}
    return OutputScene("evaluate", folder, name, maps[keep], s["frames"][keep], conf[keep], s["frames"], maps, conf,
                       sets, clips)


def load_output(path: str | Path, clip: str | None = None) -> OutputScene:
    """Read the output folder ``path`` (module docstring); ``clip`` picks an evaluate scene.

    Raises:
        NotAnOutputError: the folder is not an output, or holds no geometry to show.
    """
    path = Path(path)
    kind = detect_output(path)
    if kind == "evaluate":
        return _load_evaluation(path, clip)
    if kind == "demo" and clip is not None:
        return _load_evaluation(path / "evaluation", clip)
    if kind == "demo":
        if not (path / "generation" / "generation.json").is_file():
            raise NotAnOutputError(f"{path}: a demo folder without generation/generation.json (unfinished demo?)")
        scene = _load_generation(path / "generation", "demo")
        if (path / "evaluation" / "metrics.json").is_file():
            from fantasyworld.eval.scenes import list_scenes

            scene.clips = list_scenes(path / "evaluation")
        return scene
    return _load_generation(path, kind)


def write_output_glb(path: str | Path, out: str | Path | None = None, clip: str | None = None,
                     max_points: int = DEFAULT_GLB_MAX_POINTS) -> tuple[Path, dict[str, int]]:
    """``fantasyworld export OUT_DIR --glb``: the scene's fused cloud and every camera set as
    ``scene.glb`` (default: in the folder the scene was read from). Returns the path and the
    counts of :func:`~fantasyworld.inference.glb.write_glb`."""
    scene = load_output(path, clip)
    target = Path(out) if out is not None else scene.source / "scene.glb"
    info = write_glb(target, scene.xyz, scene.rgb, list(scene.cameras.values()), max_points=max_points)
    return target, info
