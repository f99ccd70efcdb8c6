"""What ``evaluate`` is pointed at: a one-model checkpoint or a two-expert (Wan2.2 variant) directory.

A one-model checkpoint (``step-N.safetensors`` or its run directory) is loaded with
:class:`~fantasyworld.inference.pipeline.FantasyWorldPipeline`. A directory holding ``high/``
and ``low/`` (``convert-official --variant wan2.2``, or two training runs' checkpoints) is
loaded with :class:`~fantasyworld.inference.two_expert_pipeline.TwoExpertPipeline`, and the
modes read it as follows:

* ``generation``: the two-expert sampler (each step the expert of the bf16 boundary rule,
  geometry from the low-noise expert), conditioned on the clip's first frame (no last image:
  the clip's own last frame would hand the model part of the answer) and its cameras through
  each expert's control adapter;
* ``latents``: the one forward with every head at ``timestep = 1000 sigma`` runs the
  **low-noise** expert, the one whose heads the two-expert model reads. A ``sigma`` whose
  bf16-rounded timestep is above the boundary (a high-noise step, where the official model
  never reads geometry) is refused with :class:`~fantasyworld.errors.UnsupportedModeError`
  before anything is loaded;
* as for one model, ``generation`` needs stage-2 weights: it is skipped unless both experts are.

One expert's folder alone (``.../low``) is refused by the one-model loader (a
:class:`~fantasyworld.errors.CheckpointError` naming the two-expert directory to pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fantasyworld.errors import UnsupportedModeError
from fantasyworld.models.config import FantasyWorldConfig
from fantasyworld.models.weights import training_clip_shape

__all__ = ["EvalCheckpoint", "check_latents_sigma", "default_size", "inspect_checkpoint", "load_pipeline"]


@dataclass
class EvalCheckpoint:
    """The checkpoint of an evaluation.

    Attributes:
        path: what ``metrics.json`` names (the weights file, or the two-expert directory).
        config: the model's config (two experts: the low-noise expert's, which gives geometry).
        stage: the checkpoint's stage (two experts: the lower of the two).
        run_dir: where a training run's ``train_config.yaml`` is looked for.
        experts: the experts' preset names, high first (empty for one model).
    """

    path: Path
    config: FantasyWorldConfig
    stage: int
    run_dir: Path
    experts: tuple[str, ...] = ()

    @property
    def two_expert(self) -> bool:
        return bool(self.experts)


def inspect_checkpoint(checkpoint: str | Path) -> EvalCheckpoint:
    """Read ``checkpoint``'s config and stage without loading weights."""
    from fantasyworld.inference.pipeline import resolve_checkpoint
    from fantasyworld.inference.two_expert_pipeline import EXPERT_DIRS, is_two_expert_checkpoint

    if is_two_expert_checkpoint(checkpoint):
        root = Path(checkpoint)
        found = {e: resolve_checkpoint(root / e) for e in EXPERT_DIRS}
        weights, config, _ = found["low"]
        return EvalCheckpoint(root, config, min(s for _, _, s in found.values()), weights.parent,
                              tuple(c.name for _, c, _ in found.values()))
    weights, config, stage = resolve_checkpoint(checkpoint)
    return EvalCheckpoint(weights, config, stage, weights.parent)


def check_latents_sigma(ckpt: EvalCheckpoint, sigma: float) -> None:
    """Refuse the ``latents`` mode of a two-expert checkpoint at a high-noise ``sigma``
    (module docstring); a no-op for one model."""
    if not ckpt.two_expert:
        return
    from fantasyworld.inference.two_expert import expert_for_timestep

    boundary = ckpt.config.expert_boundary
    if expert_for_timestep(1000.0 * sigma, boundary) == "high":
        raise UnsupportedModeError(
            f"{ckpt.path}: the latents mode at sigma {sigma:g} (timestep {1000 * sigma:g}) is a high-noise step of "
            f"this two-expert model, whose heads are never read: its depth, points and cameras come from the "
            f"low-noise expert, which runs at bf16 timesteps <= {boundary:g}; pass --sigma {boundary / 1000:g} or "
            "less, or --modes generation")


def load_pipeline(ckpt: EvalCheckpoint, *, backbone: str | None, vae: str | None, text_encoder: str | None,
                  device: str, high_lora: str | None = None, low_lora: str | None = None) -> Any:
    """The pipeline of ``ckpt``: one model, or both experts (``high_lora`` / ``low_lora``: the
    reward LoRAs a converted Wan2.2 checkpoint recorded; only for two experts)."""
    if ckpt.two_expert:
        from fantasyworld.inference.two_expert_pipeline import TwoExpertPipeline

        return TwoExpertPipeline.from_pretrained(ckpt.path, backbone=backbone, vae=vae, text_encoder=text_encoder,
                                                 device=device, high_lora=high_lora, low_lora=low_lora)
    if high_lora or low_lora:
        raise UnsupportedModeError(f"{ckpt.path}: --high-lora / --low-lora need a two-expert checkpoint (a "
                                   "directory with high/ and low/)")
    from fantasyworld.inference.pipeline import FantasyWorldPipeline

    return FantasyWorldPipeline.from_pretrained(ckpt.path, backbone=backbone, vae=vae, text_encoder=text_encoder,
                                                device=device)


def default_size(ckpt: EvalCheckpoint, dataset_root: Path, num_frames: int | None, height: int | None,
                 width: int | None) -> tuple[int, int, int]:
    """``(num_frames, height, width)``: the given values, else the training run config
    (``train_config.yaml`` beside the weights), else the first clip rounded down to ``4k + 1``
    frames and multiples of 16 pixels."""
    from fantasyworld.data.formats import Reporter, load_metadata
    from fantasyworld.data.loader import inspect_clip

    run_t, run_h, run_w = training_clip_shape(ckpt.run_dir)
    t, h, w = num_frames or run_t, height or run_h, width or run_w
    if t is None or h is None or w is None:
        records = load_metadata(dataset_root)
        info = inspect_clip(dataset_root, records[0], Reporter())
        assert info is not None
        t = t or (info.num_frames - 1) // 4 * 4 + 1
        h = h or info.height // 16 * 16
        w = w or info.width // 16 * 16
    return int(t), int(h), int(w)

