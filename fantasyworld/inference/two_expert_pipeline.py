"""``TwoExpertPipeline``: the Wan2.2 variant (two experts, first and last image) end to end.

    pipe = TwoExpertPipeline.from_pretrained("ckpt/wan22", backbone="models/Wan2.2-Fun-A14B-Control-Camera",
                                             high_lora=".../Wan2.2-Fun-A14B-InP-high-noise-HPS2.1.safetensors",
                                             low_lora=".../Wan2.2-Fun-A14B-InP-low-noise-HPS2.1.safetensors",
                                             vae=".../vae", text_encoder=".../text_encoder", device="cuda",
                                             dtype="bfloat16")
    result = pipe("a quiet street", image="first.png", last_image="last.png", camera="cameras.json")
    result.save("out/")

The checkpoint directory holds ``high/`` and ``low/`` (``convert-official --variant wan2.2``,
or two training runs' stage-2 checkpoints copied there), each a FantasyWorld checkpoint
with its ``config.json``. Each expert's frozen base (transformer + control adapter, plus
the reward LoRA the converter recorded in ``config.json``) comes from the
Wan2.2-Fun-A14B-Control-Camera directory (:mod:`fantasyworld.models.wan22`).

A call is :class:`~fantasyworld.inference.pipeline.FantasyWorldPipeline`'s own
(``_generate``: camera, conditioning, the shared sampling loop, decode, geometry, result);
this class overrides only what differs: the expert of each step (:meth:`TwoExpertPipeline.plan`,
the bf16 boundary rule of :func:`~fantasyworld.inference.two_expert.two_expert_plan`), the
models by key (:meth:`TwoExpertPipeline.experts`; each encodes the camera through its own
control adapter, once per call), geometry from the low expert, the first (required) and
optional last image through the VAE latent and the 4-channel mask
(:func:`~fantasyworld.inference.two_expert.first_last_condition_latent`, no CLIP tokens), the
extra settings, and the defaults: negative prompt ``""`` and 480x832 (the official Wan2.2
ones). Every export of the single-model path is written by the same
:class:`~fantasyworld.inference.result.GenerationResult`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasyworld.errors import CheckpointError
from fantasyworld.geometry.camera_sequence import CameraSequence
from fantasyworld.inference.images import load_image
from fantasyworld.inference.loading import TINY_BACKBONE_SEED, fork_rng, load_text_component
from fantasyworld.inference.options import GenerationOptions
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.result import GenerationResult
from fantasyworld.inference.sampler import SampleResult
from fantasyworld.inference.two_expert import first_last_condition_latent, two_expert_plan
from fantasyworld.models import encoders
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.official import OVERRIDE_FILE, apply_backbone_override
from fantasyworld.models.wan22 import OFFICIAL_LORA_MULTIPLIER, load_wan22_base
from fantasyworld.models.wan_backbone import build_wan_transformer, rebuild_rope
from fantasyworld.models.wan_loading import cast_keeping_fp32
from fantasyworld.models.weights import as_dtype, resolve_checkpoint

__all__ = ["EXPERT_DIRS", "TwoExpertPipeline", "is_two_expert_checkpoint"]

#: Sub-directories of a two-expert checkpoint.
EXPERT_DIRS = ("high", "low")


def is_two_expert_checkpoint(path: str | Path) -> bool:
    """``path`` is a directory with ``high/config.json`` and ``low/config.json``."""
    path = Path(path)
    return all((path / e / "config.json").is_file() for e in EXPERT_DIRS)


def _load_expert(folder: Path, expert: str, backbone: str | Path | None, lora: str | Path | None,
                 device: torch.device, dtype: torch.dtype) -> FantasyWorldModel:
    weights, config, stage = resolve_checkpoint(folder)
    if config.expert != expert or not config.has_control_adapter:
        raise CheckpointError(f"{folder}: config.json is preset {config.name} (expert {config.expert!r}), not the "
                              f"{expert}-noise expert of a control-adapter model")
    tiny = config.name.startswith("tiny")
    recorded = config.extra.get("base_lora")
    if backbone in (None, "random", "tiny") and tiny:
        with fork_rng(TINY_BACKBONE_SEED + EXPERT_DIRS.index(expert)):
            transformer = build_wan_transformer(config.wan, device)
            control = None  # built (seeded) with the model
    elif backbone is None:
        raise CheckpointError(f"{folder}: pass backbone= (the Wan2.2-Fun-A14B-Control-Camera directory)")
    else:
        if recorded and lora is None:
            raise CheckpointError(f"{folder}: this checkpoint was converted against the base merged with "
                                  f"{recorded['file']} x{recorded['multiplier']}; pass it as {expert}_lora=PATH "
                                  f"(--{expert}-lora)")
        multiplier = float(recorded["multiplier"]) if recorded else OFFICIAL_LORA_MULTIPLIER
        base = load_wan22_base(backbone, config, dtype, device, lora=lora, lora_multiplier=multiplier)
        transformer, control = base.transformer, base.control_adapter
    root = weights.parent
    if (root / OVERRIDE_FILE).is_file():
        if not config.official_compat:
            raise CheckpointError(f"{root / OVERRIDE_FILE}: a backbone override beside a checkpoint whose "
                                  "config.json has official_compat false; only convert-official writes one")
        apply_backbone_override(root, transformer, control)
    with fork_rng(EXPERT_DIRS.index(expert)):
        model = FantasyWorldModel(config, transformer, device=device, control_adapter=control)
    model.load_fantasyworld(weights, stage=stage)
    if dtype != torch.float32:
        cast_keeping_fp32(model, dtype)
        rebuild_rope(model.transformer, device)
    return model.eval().requires_grad_(False)


class TwoExpertPipeline(FantasyWorldPipeline):
    """Generation with the two experts of the Wan2.2 variant.

    Attributes:
        model: the low-noise expert (its config drives camera preprocessing and geometry).
        high_model: the high-noise expert.
        vae, text_encoder, tokenizer, device, dtype: as :class:`FantasyWorldPipeline`.
    """

    def __init__(self, high: FantasyWorldModel, low: FantasyWorldModel, vae, text_encoder=None, tokenizer=None,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32,
                 source: str = "") -> None:
        super().__init__(low, vae, text_encoder, tokenizer, None, None, device, dtype, source)
        if high.config.expert != "high" or low.config.expert != "low":
            raise ValueError(f"experts must be (high, low), got ({high.config.expert!r}, {low.config.expert!r})")
        self.high_model = high.eval()

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        checkpoint: str | Path,
        backbone: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        tokenizer: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        high_lora: str | Path | None = None,
        low_lora: str | Path | None = None,
    ) -> TwoExpertPipeline:
        """Load both experts of ``checkpoint`` (``high/``, ``low/``) and the encoders.

        Args:
            checkpoint: directory with ``high/`` and ``low/`` checkpoints.
            backbone: the Wan2.2-Fun-A14B-Control-Camera directory; for the tiny presets
                ``None``/``"random"`` builds seeded random backbones.
            vae, text_encoder, tokenizer: local directories or ``"tiny"`` (default for the
                tiny presets); the Wan2.1 VAE and umT5, as the official uses.
            high_lora, low_lora: each expert's reward LoRA; required when the converter
                recorded one (``config.json`` ``extra.base_lora``), merged with its multiplier.
        """
        root = Path(checkpoint)
        if not is_two_expert_checkpoint(root):
            raise CheckpointError(f"{root}: not a two-expert checkpoint (expected high/config.json and "
                                  "low/config.json, as convert-official --variant wan2.2 writes)")
        device, dtype = torch.device(device), as_dtype(dtype)
        loras = {"high": high_lora, "low": low_lora}
        experts = {e: _load_expert(root / e, e, backbone, loras[e], device, dtype) for e in EXPERT_DIRS}
        tiny = experts["low"].config.name.startswith("tiny")
        vae = vae if vae is not None else ("tiny" if tiny else None)
        if vae is None:
            raise CheckpointError(f"{root}: pass vae=DIR (the Wan2.1 VAE the Wan2.2-Fun release uses)")
        vae_model = encoders.load_vae_spec(vae, device)
        text_encoder = text_encoder if text_encoder is not None else ("tiny" if tiny else None)
        te, tok = load_text_component(text_encoder, tokenizer, device, dtype)
        return cls(experts["high"], experts["low"], vae_model, te, tok, device, dtype, source=str(root))

    # ------------------------------------------------------------------ what differs from one model
    #: geometry comes from the low-noise expert
    geometry_expert = "low"

    def experts(self) -> dict[str, FantasyWorldModel]:
        """``{"high": high-noise expert, "low": low-noise expert}``."""
        return {"high": self.high_model, "low": self.model}

    def plan(self, num_steps: int, shift: float, schedule: str, geometry: str) -> list[str]:
        """The boundary rule's expert of every step
        (:func:`~fantasyworld.inference.two_expert.two_expert_plan`: bf16 timestep > boundary
        runs the high expert; ``last-step`` geometry needs a low last step)."""
        return two_expert_plan(num_steps, shift, self.config.expert_boundary, schedule, geometry)

    @torch.no_grad()
    def encode_image(self, image: Any, num_frames: int, height: int, width: int, last_image: Any = None
                     ) -> tuple[torch.Tensor, None, torch.Tensor]:
        """``(cond_latent (1, 20, F, H/8, W/8), None, first frame (1, 3, H, W))``: the first and
        the optional last image through the VAE with the 4-channel mask (no CLIP)."""
        first = load_image(image, height, width).to(self.device)
        last = None if last_image is None else load_image(last_image, height, width).to(self.device)
        vae_dtype = next(self.vae.parameters()).dtype
        cond = first_last_condition_latent(self.vae, first.to(vae_dtype), num_frames,
                                           None if last is None else last.to(vae_dtype))
        return cond.float(), None, first

    def _extra_settings(self, res: SampleResult, last_image: Any) -> dict[str, Any]:
        """The experts, the boundary, the steps each expert ran and the last image."""
        return {"experts": [self.high_model.config.name, self.config.name],
                "expert_boundary": self.config.expert_boundary,
                "steps_high": res.expert_steps.get("high", 0), "steps_low": res.expert_steps.get("low", 0),
                "last_image": None if last_image is None else (
                    str(last_image) if isinstance(last_image, (str, Path)) else "<array>")}

    # ------------------------------------------------------------------ generation
    def __call__(  # type: ignore[override]
        self,
        prompt: str = "",
        negative_prompt: str | None = None,
        image: Any = None,
        camera: CameraSequence | np.ndarray | str | Path = "static",
        num_frames: int = 81,
        height: int = 480,
        width: int = 832,
        num_steps: int = 50,
        guidance_scale: float = 5.0,
        shift: float = 5.0,
        seed: int = 0,
        last_image: Any = None,
        **options: Any,
    ) -> GenerationResult:
        """Generate one clip and its geometry with both experts.

        Args:
            image: the first frame (required); last_image: the optional last frame.
            negative_prompt: default ``""`` (the official Wan2.2 default).
            others: as :meth:`FantasyWorldPipeline.__call__` (``options`` are
                :class:`~fantasyworld.inference.options.GenerationOptions` fields).
        """
        negative = "" if negative_prompt is None else negative_prompt
        return self._generate(prompt, negative, image, camera, num_frames, height, width, num_steps, guidance_scale,
                              shift, seed, GenerationOptions(**options), last_image=last_image)
