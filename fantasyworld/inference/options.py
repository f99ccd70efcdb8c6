"""Settings of one generation beyond prompt, camera, size, schedule and seed.

:class:`GenerationOptions` groups the keyword-only arguments of
:meth:`FantasyWorldPipeline.__call__ <fantasyworld.inference.pipeline.FantasyWorldPipeline.__call__>`
(camera-file reading, the translation scale, cached embeddings, the sampler's variants and
its optional step cache, VAE tiling, the point cloud and the written videos); each field documents itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fantasyworld.inference.ply import DEFAULT_CONF_PERCENTILE, DEFAULT_MAX_POINTS
from fantasyworld.inference.step_cache import StepCacheSettings
from fantasyworld.inference.trajectories import DEFAULT_FOV_DEG

__all__ = ["GenerationOptions"]


@dataclass(kw_only=True)
class GenerationOptions:
    """Keyword-only settings of a generation (defaults are the documented behaviour)."""

    camera_magnitude: float | None = None
    """Named paths: distance, degrees or zoom factor (see
    :func:`~fantasyworld.inference.trajectories.load_trajectory`)."""
    camera_format: str = "auto"
    """Camera files: the format (``auto`` sniffs it)."""
    fov_deg: float = DEFAULT_FOV_DEG
    """Horizontal field of view for named paths and files without intrinsics."""
    resample_camera: bool = False
    """Resample a camera file with another frame count to ``num_frames``."""
    translation_scale: float | None = None
    """Our checkpoints: multiplies the requested (relative) translations, to bring a file's
    units to the model's scene scale (default 1). ``official_compat`` checkpoints: the
    official scene scale the translations are **divided** by (see ``camera_inputs``)."""
    scale_depth: Any = None
    """``official_compat`` only: take that scale from a first-frame depth map (array or
    ``.npy``/``.npz``)."""
    depth_estimator: Callable[[np.ndarray], np.ndarray] | None = None
    """``official_compat`` only: take that scale from ``depth_estimator(image)``."""
    prompt_embeds: Any = None
    """Cached text embeddings (tensor or safetensors file with ``text_emb``) instead of
    running the text encoder."""
    negative_prompt_embeds: Any = None
    """Cached negative-prompt embeddings; a missing negative with no text encoder uses zeros."""
    geometry: str = "auto"
    """``"final"``, ``"last-step"`` or ``"none"`` (see the sampler); ``"auto"``: ``last-step``
    for ``official_compat`` checkpoints (the official reads geometry inside the last step's
    conditional pass), ``final`` for this project's."""
    schedule: str = "auto"
    """Sampling grid: ``"project"`` (diffusers' flow-matching Euler grid), ``"official"`` (the
    released sampler: its grid and bfloat16-rounded timesteps) or ``"auto"``: ``official``
    for ``official_compat`` checkpoints, ``project`` otherwise."""

    def resolved(self, official_compat: bool) -> tuple[str, str]:
        """``(schedule, geometry)`` with ``auto`` resolved for a checkpoint."""
        schedule = self.schedule if self.schedule != "auto" else ("official" if official_compat else "project")
        geometry = self.geometry if self.geometry != "auto" else ("last-step" if official_compat else "final")
        return schedule, geometry

    def sampling(self, official_compat: bool, tier_cfg_batch: bool = True) -> dict[str, Any]:
        """The keyword arguments of :func:`~fantasyworld.inference.sampler.sample` these options set
        (``tier_cfg_batch``: the memory tier's CFG batching, used when ``cfg_batch`` is unset)."""
        schedule, geometry = self.resolved(official_compat)
        return {"schedule": schedule, "geometry": geometry, "cfg_batch": self.resolved_cfg_batch(tier_cfg_batch),
                "progress": self.progress, "step_cache": self.step_cache_settings()}

    def step_cache_settings(self) -> StepCacheSettings | None:
        """The sampler's step-cache settings, ``None`` when ``step_cache`` is unset (off)."""
        if self.step_cache is None:
            return None
        return StepCacheSettings(float(self.step_cache), self.step_cache_first_steps, self.step_cache_last_steps,
                                 self.step_cache_probe_blocks)

    def resolved_cfg_batch(self, tier_cfg_batch: bool) -> bool:
        """``cfg_batch`` when set, else the memory tier's choice ``tier_cfg_batch``."""
        return tier_cfg_batch if self.cfg_batch is None else self.cfg_batch

    cfg_batch: bool | None = None
    """Batch the CFG passes in one forward or run them apart; None: the memory tier's choice."""
    step_cache: float | None = None
    """First-block step caching (:mod:`~fantasyworld.inference.step_cache`): skip a step's
    remaining blocks when the first block's output moved less than this relative L1 since the
    last computed step; ``None`` (default): off, every step in full."""
    step_cache_first_steps: int = 2
    """Step caching: the first steps that always run in full."""
    step_cache_last_steps: int = 2
    """Step caching: the last steps that always run in full."""
    step_cache_probe_blocks: int = 1
    """Step caching: how many of the first Wan blocks the probe runs."""
    vae_tiling: bool | str = "auto"
    """``"auto"`` (the memory tier's choice: tiles large frames by default), True or False."""
    cloud_source: str = "depth"
    """Fused cloud from ``"depth"`` (depth + predicted cameras, VGGT's recommendation) or
    ``"points"`` (the point-map head)."""
    conf_percentile: float = DEFAULT_CONF_PERCENTILE
    """Point-cloud confidence filter (percentile of the confidences dropped)."""
    max_points: int = DEFAULT_MAX_POINTS
    """Point-cloud size cap."""
    fps: float = 16.0
    """Frame rate of the written videos."""
    progress: bool = True
    """Show tqdm bars."""

    def camera_kwargs(self) -> dict[str, Any]:
        """The fields :meth:`FantasyWorldPipeline.camera_inputs` takes, by name."""
        names = ("camera_magnitude", "camera_format", "fov_deg", "resample_camera", "translation_scale",
                 "scale_depth", "depth_estimator")
        return {name: getattr(self, name) for name in names}
