"""The end of a generation call shared by every pipeline: geometry arrays, the settings record, the result.

:class:`~fantasyworld.inference.pipeline.FantasyWorldPipeline` and
:class:`~fantasyworld.inference.two_expert_pipeline.TwoExpertPipeline` run the same call
(:meth:`FantasyWorldPipeline._generate <fantasyworld.inference.pipeline.FantasyWorldPipeline._generate>`);
these functions turn its :class:`~fantasyworld.inference.sampler.SampleResult` and the decoded
video into a :class:`~fantasyworld.inference.result.GenerationResult`. Letters: T pixel frames,
H x W pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasyworld.geometry.pose_encoding import cameras_from_pose_enc
from fantasyworld.heads.registry import HEADS
from fantasyworld.inference.camera_inputs import CameraInputs
from fantasyworld.inference.options import GenerationOptions
from fantasyworld.inference.ply import PointCloud, generation_cloud
from fantasyworld.inference.result import GenerationResult
from fantasyworld.inference.sampler import SampleResult

__all__ = ["call_settings", "geometry_arrays", "generation_result"]


def geometry_arrays(video: np.ndarray, geometry: dict[str, Any], image_hw: tuple[int, int], seed: int,
                    opts: GenerationOptions
                    ) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None, PointCloud | None]:
    """Head outputs of batch item 0 as numpy, the decoded cameras ``w2c`` ``(T, 4, 4)`` / ``K``
    ``(T, 3, 3)`` (None without the camera head) and the fused cloud (None if not asked for).

    Args:
        video: ``(T, H, W, 3)`` uint8 decoded frames (the cloud's colours).
        geometry: the sampler's head outputs, each ``(B, ...)``.
        image_hw: ``(H, W)`` of the frames.
        seed: the call's seed (the cloud's subsample).
    """
    geo = {k: v[0].cpu().numpy() for k, v in geometry.items() if isinstance(v, torch.Tensor)}
    w2c = k = None
    if "pose_enc" in geo:
        w2c, k = cameras_from_pose_enc(geo["pose_enc"], image_hw)
    cloud = generation_cloud(video, geo, w2c, k, opts.cloud_source, opts.conf_percentile, opts.max_points, seed)
    return geo, w2c, k, cloud


def call_settings(pipe: Any, prompt: str, negative: str, image: Any, cams: CameraInputs, res: SampleResult,
                  opts: GenerationOptions, *, camera_magnitude: float | None, **call: Any) -> dict[str, Any]:
    """The ``settings`` record of a result (what was asked and what was used).

    Args:
        pipe: the pipeline (its ``config``, ``memory`` tier, ``source``, ``device``, ``dtype``
            and ``backbone_override``).
        call: ``num_frames``, ``height``, ``width``, ``num_steps``, ``guidance_scale``,
            ``shift``, ``seed`` of the call.
    """
    cfg = pipe.config
    settings = {
        "prompt": prompt if opts.prompt_embeds is None else f"<embeddings> {prompt}".strip(),
        "negative_prompt": negative if opts.negative_prompt_embeds is None else "<embeddings>",
        "image": None if image is None else (str(image) if isinstance(image, (str, Path)) else "<array>"),
        "camera": cams.trajectory.source,
        "camera_magnitude": cams.trajectory.extra.get("magnitude", camera_magnitude),
        "translation_scale": cams.translation_scale, "translation_scale_source": cams.scale_source,
        "official_compat": cfg.official_compat, "num_frames": call["num_frames"], "height": call["height"],
        "width": call["width"], "num_steps": call["num_steps"], "guidance_scale": call["guidance_scale"],
        "shift": call["shift"], "seed": call["seed"],
        **dict(zip(("schedule", "geometry"), opts.resolved(cfg.official_compat), strict=True)),
        "geometry_timestep": res.geometry_timestep,
        "cfg_batch": opts.resolved_cfg_batch(pipe.memory.cfg_batch),
        "memory_tier": pipe.memory.name,
        "heads_chunks": None if pipe.memory.heads_chunks is None else list(pipe.memory.heads_chunks),
        "cloud_source": opts.cloud_source, "conf_percentile": opts.conf_percentile,
        "max_points": opts.max_points,
        "preset": cfg.name, "checkpoint": pipe.source, "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""), "fps": opts.fps,
    }
    if pipe.backbone_override:
        settings["backbone_override"] = len(pipe.backbone_override)
    return settings


def generation_result(video: np.ndarray, res: SampleResult, geo: dict[str, np.ndarray], w2c: np.ndarray | None,
                      k: np.ndarray | None, cams: CameraInputs, cloud: PointCloud | None, settings: dict,
                      timings: dict, opts: GenerationOptions) -> GenerationResult:
    """The :class:`GenerationResult` of a call: every registered head's arrays that ran, batch item 0."""
    return GenerationResult(
        video=video, latents=res.latents[0].cpu().numpy(),
        heads={key: geo[key] for spec in HEADS.values() for key in spec.result_keys if key in geo}, w2c=w2c,
        intrinsics=k, requested_w2c=cams.trajectory.w2c, requested_intrinsics=cams.trajectory.K, cloud=cloud,
        settings=settings, timings=timings, fps=opts.fps)
