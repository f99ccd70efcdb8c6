"""The camera side of a generation: trajectory -> Plücker rays (our recipe or the official one).

:func:`build_camera_inputs` is what :meth:`FantasyWorldPipeline.camera_inputs
<fantasyworld.inference.pipeline.FantasyWorldPipeline.camera_inputs>` runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasyworld.geometry.camera_sequence import CameraSequence
from fantasyworld.inference.images import load_depth_map, raw_image
from fantasyworld.inference.official_cameras import official_plucker, official_translation_scale
from fantasyworld.inference.trajectories import DEFAULT_FOV_DEG, load_trajectory
from fantasyworld.models.config import FantasyWorldConfig

__all__ = ["CameraInputs", "build_camera_inputs"]


@dataclass
class CameraInputs:
    """What conditions the model on the camera (see :func:`build_camera_inputs`).

    Attributes:
        plucker: ``(1, T, 6, H, W)`` float32 Plücker rays fed to the pose encoder.
        trajectory: the conditioning cameras, relative to frame 0 with the translation
            scale applied (reported as the requested cameras), real pixel intrinsics.
        translation_scale: the factor applied to the translations (multiplied on our own
            checkpoints, **divided** under ``official_compat``).
        scale_source: ``"given"``, ``"depth"``, ``"depth_estimator"`` or ``"default"``.
        official_compat: whether the official preprocessing was used.
    """

    plucker: torch.Tensor
    trajectory: CameraSequence
    translation_scale: float
    scale_source: str
    official_compat: bool
    extra: dict = field(default_factory=dict)


def build_camera_inputs(
    config: FantasyWorldConfig,
    camera: CameraSequence | np.ndarray | str | Path,
    num_frames: int,
    height: int,
    width: int,
    *,
    image: Any = None,
    camera_magnitude: float | None = None,
    camera_format: str = "auto",
    fov_deg: float = DEFAULT_FOV_DEG,
    resample_camera: bool = False,
    translation_scale: float | None = None,
    scale_depth: Any = None,
    depth_estimator: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CameraInputs:
    """Resolve the camera and build the Plücker rays the pose encoder reads, for a model of ``config``.

    Our checkpoints: poses relative to frame 0, translations **multiplied** by
    ``translation_scale`` (default 1), rays with the real pixel intrinsics.

    ``official_compat`` checkpoints (the official inference's recipe): translations
    **divided** by a scale taken from exactly one of ``translation_scale`` (given),
    ``scale_depth`` (first-frame depth map: array or ``.npy``/``.npz`` file) or
    ``depth_estimator(first image at its own resolution)`` (MoGe-2 in the official),
    the depth unprojected with frame 0's intrinsics at ``(height, width)``
    (:func:`~fantasyworld.inference.official_cameras.official_translation_scale`); none of them
    means scale 1 (the official ``--using_scale False``) with a warning. The rays are
    :func:`~fantasyworld.inference.official_cameras.official_plucker` (principal point reset to
    ``(W/2, H/2)``, doubled intrinsics).
    """
    traj = load_trajectory(camera, num_frames, height, width, magnitude=camera_magnitude, fmt=camera_format,
                           fov_deg=fov_deg, resample=resample_camera)
    if not config.official_compat:
        if scale_depth is not None or depth_estimator is not None:
            raise ValueError("scale_depth / depth_estimator set the official translation scale and only apply "
                             f"to official_compat checkpoints ({config.name} is not one); use "
                             "translation_scale to multiply the translations")
        factor = 1.0 if translation_scale is None else float(translation_scale)
        rel = traj.scaled(factor) if factor != 1.0 else traj.relative()
        return CameraInputs(rel.plucker(False), rel, factor, "given" if translation_scale is not None
                            else "default", False)
    given = [s is not None for s in (translation_scale, scale_depth, depth_estimator)]
    if sum(given) > 1:
        raise ValueError("official_compat: give at most one translation-scale source (translation_scale, "
                         "scale_depth or depth_estimator)")
    if not any(given):
        warnings.warn("official_compat checkpoint without a translation scale: translations are used as given "
                      "(scale 1, the official --using_scale False); the official inference divides them by "
                      "the first frame's MoGe depth scale; pass translation_scale, scale_depth or "
                      "depth_estimator", stacklevel=4)
        scale, source = 1.0, "default"
    elif translation_scale is not None:
        scale, source = official_translation_scale(traj.K, scale=float(translation_scale)), "given"
    elif scale_depth is not None:
        scale, source = official_translation_scale(traj.K, depth=load_depth_map(scale_depth)), "depth"
    else:
        if image is None:
            raise ValueError("depth_estimator needs the first-frame image (image=)")
        scale = official_translation_scale(traj.K, image=raw_image(image), depth_estimator=depth_estimator)
        source = "depth_estimator"
    plucker = official_plucker(traj.w2c, traj.K, height, width, scale)
    return CameraInputs(plucker, traj.scaled(1.0 / scale), scale, source, True)
