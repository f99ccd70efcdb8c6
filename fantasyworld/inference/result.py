"""The result of one generation: every output as numpy arrays, and ``save(dir)``.

Letters: T pixel frames, H x W pixels, F = (T - 1) / 4 + 1 latent frames, N fused points.
Geometry conventions: world = the first predicted camera's frame, OpenCV axes (x right,
y down, z forward), z-depth, pixel intrinsics with the corner pixel convention.

Files written by :meth:`GenerationResult.save` (see docs/inference.md):

==============================  ===========================================================
``video.mp4``                   the generated video, T frames, H x W, 16 fps
``depth.npz``                   ``depth`` (T, H, W) float16, ``depth_conf`` (T, H, W) float16
``depth.mp4``                   Turbo-coloured inverse depth, T frames
``points.npz``                  ``world_points`` (T, H, W, 3) float32, ``world_points_conf`` (T, H, W)
``<archive>``                   the ``archive`` of any other registered head (its ``result_keys``)
``points.ply``                  fused cloud: N vertices x y z (float32) red green blue (uint8)
                                confidence (float32)
``cameras.json``                ``w2c`` / ``c2w`` (T, 4, 4), ``intrinsics`` (T, 3, 3),
                                ``pose_enc`` (T, 9), the requested trajectory
``cameras_re10k.txt``           RealEstate10K rows (predicted)
``cameras_requested_re10k.txt`` RealEstate10K rows (requested, relative to its frame 0)
``cameras_tum.txt``             TUM trajectory (predicted, camera-to-world)
``colmap/images/*.png``         the T frames
``colmap/sparse/0/*.txt``       COLMAP text model (cameras, images, points3D = the fused cloud)
``latents.npy``                 (16, F, H/8, W/8) float32 final latents (normalised)
``generation.json``             settings, shapes, timings
``scene.glb``                   glTF binary: the fused cloud (capped) and the predicted and
                                requested camera frustums (:mod:`~fantasyworld.inference.glb`)
``report.html``                 video, depth video, top-down trajectory plot
==============================  ===========================================================
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fantasyworld.data.colormap import colorize_depth
from fantasyworld.geometry.cameras import w2c_to_c2w
from fantasyworld.heads.registry import HEADS
from fantasyworld.inference import export
from fantasyworld.inference.colmap import write_gaussian_splatting_scene
from fantasyworld.inference.glb import FrustumSet, write_glb
from fantasyworld.inference.ply import PointCloud, write_ply
from fantasyworld.inference.report import write_report


@dataclass
class GenerationResult:
    """Outputs of one generation (batch element), all numpy.

    Attributes:
        video: ``(T, H, W, 3)`` uint8 RGB.
        latents: ``(16, F, H/8, W/8)`` float32 final denoised latents (normalised space).
        heads: the ``result_keys`` arrays of every head that ran (heads registry), float32:
            ``depth``, ``depth_conf`` ``(T, H, W)`` z-depth and confidence, ``world_points``
            ``(T, H, W, 3)``, ``world_points_conf`` ``(T, H, W)``, ``pose_enc`` ``(T, 9)``
            (VGGT ``absT_quaR_FoV``); also readable as attributes (``result.depth``).
        w2c: ``(T, 4, 4)`` float64 predicted world-to-camera (relative to frame 0).
        intrinsics: ``(T, 3, 3)`` float64 predicted pixel intrinsics (decoded from
            ``pose_enc`` with the field of view clamped to [1, 179] degrees).
        requested_w2c, requested_intrinsics: ``(T, 4, 4)`` / ``(T, 3, 3)`` the conditioning
            trajectory, relative to its first camera, intrinsics at ``(H, W)``.
        cloud: fused :class:`~fantasyworld.inference.ply.PointCloud` (N points).
        settings: the call's arguments (prompt, seed, steps ...), JSON-serialisable.
        timings: seconds per phase.
        fps: frame rate of the written videos.
    """

    video: np.ndarray
    latents: np.ndarray
    heads: dict[str, np.ndarray]
    w2c: np.ndarray | None
    intrinsics: np.ndarray | None
    requested_w2c: np.ndarray
    requested_intrinsics: np.ndarray
    cloud: PointCloud | None
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fps: float = 16.0

    @property
    def depth(self) -> np.ndarray | None:
        return self.heads.get("depth")

    @property
    def depth_conf(self) -> np.ndarray | None:
        return self.heads.get("depth_conf")

    @property
    def world_points(self) -> np.ndarray | None:
        return self.heads.get("world_points")

    @property
    def world_points_conf(self) -> np.ndarray | None:
        return self.heads.get("world_points_conf")

    @property
    def pose_enc(self) -> np.ndarray | None:
        return self.heads.get("pose_enc")

    @property
    def c2w(self) -> np.ndarray | None:
        """``(T, 4, 4)`` predicted camera-to-world."""
        return None if self.w2c is None else w2c_to_c2w(self.w2c)

    @property
    def has_geometry(self) -> bool:
        return self.depth is not None and self.w2c is not None

    def shapes(self) -> dict[str, list[int]]:
        """Shapes of the array outputs (also written to ``generation.json``)."""
        out = {"video": list(self.video.shape), "latents": list(self.latents.shape)}
        out.update({k: list(self.heads[k].shape) for spec in HEADS.values() for k in spec.result_keys
                    if k in self.heads})
        names = ("w2c", "intrinsics", "requested_w2c", "requested_intrinsics")
        out.update({n: list(getattr(self, n).shape) for n in names if getattr(self, n) is not None})
        if self.cloud is not None:
            out["cloud_xyz"] = list(self.cloud.xyz.shape)
        return out

    def save(self, out_dir: str | Path, colmap: bool = True, report: bool = True, glb: bool = True
             ) -> dict[str, Path]:
        """Write every output into ``out_dir`` (created); returns ``{file name: path}``.

        Geometry files are skipped when the generation ran without geometry; ``glb`` writes
        ``scene.glb`` (cloud capped at :data:`~fantasyworld.inference.glb.DEFAULT_GLB_MAX_POINTS`).
        """
        start = time.perf_counter()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        h, w = self.video.shape[1:3]
        paths: dict[str, Path] = {}
        paths["video.mp4"] = out / "video.mp4"
        export.save_video(paths["video.mp4"], self.video, self.fps)
        paths["latents.npy"] = out / "latents.npy"
        np.save(paths["latents.npy"], self.latents.astype(np.float32))
        for spec in HEADS.values():
            if spec.archive and spec.result_keys and all(k in self.heads for k in spec.result_keys):
                paths[spec.archive] = out / spec.archive
                export.save_arrays(paths[spec.archive], {k: self.heads[k] for k in spec.result_keys},
                                   spec.archive_dtype)
        if self.depth is not None:
            paths["depth.mp4"] = out / "depth.mp4"
            export.save_video(paths["depth.mp4"], colorize_depth(self.depth), self.fps)
        if self.w2c is not None:
            paths.update({k: v for k, v in export.save_cameras(
                out, self.w2c, self.intrinsics, h, w, self.pose_enc, self.requested_w2c,
                self.requested_intrinsics, fps=self.fps).items()})
        if self.cloud is not None:
            paths["points.ply"] = out / "points.ply"
            write_ply(paths["points.ply"], self.cloud.xyz, self.cloud.rgb, self.cloud.conf)
        if glb and self.w2c is not None:
            paths["scene.glb"] = out / "scene.glb"
            frustums = [FrustumSet("predicted", self.w2c, self.intrinsics, h, w),
                        FrustumSet("requested", self.requested_w2c, self.requested_intrinsics, h, w)]
            write_glb(paths["scene.glb"], None if self.cloud is None else self.cloud.xyz,
                      None if self.cloud is None else self.cloud.rgb, frustums)
        if colmap and self.w2c is not None:
            model_dir = write_gaussian_splatting_scene(
                out / "colmap", self.video, self.w2c, self.intrinsics,
                None if self.cloud is None else self.cloud.xyz, None if self.cloud is None else self.cloud.rgb)
            for name in ("cameras.txt", "images.txt", "points3D.txt"):
                paths[f"colmap/sparse/0/{name}"] = model_dir / name
            paths["colmap/images"] = out / "colmap" / "images"
        timings = dict(self.timings, save=time.perf_counter() - start)
        meta = {"settings": self.settings, "shapes": self.shapes(), "timings": timings,
                "files": sorted([*paths, "generation.json"] + (["report.html"] if report else []))}
        paths["generation.json"] = out / "generation.json"
        paths["generation.json"].write_text(json.dumps(meta, indent=1, default=str))
        if report:
            paths["report.html"] = out / "report.html"
            write_report(paths["report.html"], self.settings, self.requested_w2c, self.w2c,
                         sorted(k for k in paths if k != "colmap/images"), timings)
        return paths
