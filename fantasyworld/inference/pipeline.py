"""``FantasyWorldPipeline``: prompt (+ image) + camera trajectory -> video and geometry.

    pipe = FantasyWorldPipeline.from_pretrained("outputs/fantasy_world_stage2", backbone="Wan2.1-T2V-1.3B-Diffusers",
                                                vae=".../vae", text_encoder=".../text_encoder", device="cuda",
                                                dtype="bfloat16")
    result = pipe("a courtyard with a fountain", camera="orbit", num_frames=81, height=336, width=592, seed=0)
    result.save("out/")

Steps of a call: encode the prompt and negative prompt (UMT5, or cached embeddings);
for I2V presets encode the first image (CLIP tokens + the VAE conditioning latent);
resolve the camera trajectory at ``(T, H, W)`` and turn it into Plücker rays relative to
frame 0 and then into pose features (once: they do not depend on the timestep); draw the
initial noise from a seeded CPU generator; run the Euler/CFG sampler (heads once, see
:mod:`fantasyworld.inference.sampler`); decode the latents with the Wan VAE (tiled for
large frames); fuse the coloured point cloud. No global random state is read or changed.

Checkpoints whose config has ``official_compat: true`` (the converted official
FantasyWorld-Wan2.1-I2V-14B-480P weights, ``fantasyworld convert-official``) get the
official inference's camera preprocessing instead (:meth:`FantasyWorldPipeline.camera_inputs`):
translations **divided** by a scene scale (given, or from a first-frame depth map or a depth
estimator, :func:`~fantasyworld.inference.official_cameras.official_translation_scale`), the principal
point reset to ``(W/2, H/2)`` and the doubled intrinsics of the official Plücker rays
(:func:`~fantasyworld.inference.official_cameras.official_plucker`); and ``wan_override.safetensors``
beside the weights, if the converter wrote one, is applied to the loaded backbone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasyworld.errors import CheckpointError
from fantasyworld.geometry.camera_sequence import CameraSequence
from fantasyworld.geometry.pose_encoding import cameras_from_pose_enc
from fantasyworld.inference.call_record import call_settings, generation_result, geometry_arrays
from fantasyworld.inference.camera_inputs import CameraInputs, build_camera_inputs
from fantasyworld.inference.images import load_image, load_text_embeddings
from fantasyworld.inference.loading import TINY_BACKBONE_SEED, fork_rng, load_text_component
from fantasyworld.inference.memory import BlockSwap, HostOffload, PhaseMeter, set_head_chunks, to_device_except
from fantasyworld.inference.memory_tiers import FP8_SCOPES, MemoryTier, get_memory_tier
from fantasyworld.inference.options import GenerationOptions
from fantasyworld.inference.ply import CLOUD_SOURCES
from fantasyworld.inference.result import GenerationResult
from fantasyworld.inference.sampler import (
    SINGLE,
    Conditioning,
    Expert,
    SampleResult,
    check_modes,
    initial_noise,
    run_sampling,
)
from fantasyworld.layers.fp8_linear import swap_linears_to_fp8
from fantasyworld.models import encoders
from fantasyworld.models.config import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, FantasyWorldConfig
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.official import OVERRIDE_FILE, apply_backbone_override
from fantasyworld.models.parallelize import compile_blocks
from fantasyworld.models.wan_backbone import WAN_TEXT_LEN, build_wan_transformer, rebuild_rope
from fantasyworld.models.wan_loading import cast_keeping_fp32, load_wan_transformer
from fantasyworld.models.weights import as_dtype, resolve_checkpoint

__all__ = [
    "TINY_BACKBONE_SEED", "VAE_TILING_MIN_AREA", "WAN_NEGATIVE_PROMPT", "CameraInputs", "FantasyWorldPipeline",
    "GenerationOptions", "cameras_from_pose_enc", "resolve_checkpoint",
]

#: Wan2.1's default negative prompt (the official Wan and FantasyWorld scripts use it).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
#: Frames at or above this pixel area are decoded with the VAE's tiling (``vae_tiling="auto"``):
#: at 480x832 tiling trades ~2.5x decode time for ~40% less decoder memory.
VAE_TILING_MIN_AREA = 480 * 832


class FantasyWorldPipeline:
    """Generation with a trained FantasyWorld model (stage-2 weights) and its encoders.

    Attributes:
        model: :class:`FantasyWorldModel` in eval mode.
        vae: diffusers ``AutoencoderKLWan`` (decoding, and the I2V conditioning latent).
        text_encoder, tokenizer: UMT5 encoder and tokenizer (``None`` if only cached
            embeddings are used).
        image_encoder, image_processor: CLIP vision model and processor (I2V presets).
        device, dtype: where and in which precision the transformer runs (the sampler's
            Euler state and the VAE stay fp32).
    """

    def __init__(self, model: FantasyWorldModel, vae, text_encoder=None, tokenizer=None, image_encoder=None,
                 image_processor=None, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32,
                 source: str = "", memory: str | MemoryTier | None = None) -> None:
        self.model = model.eval()
        self.vae = vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.device = torch.device(device)
        self.dtype = as_dtype(dtype)
        self.source = source
        self.memory = get_memory_tier(memory)  # placement between phases (inference.memory_tiers)
        self.block_swap: BlockSwap | None = None  # Wan blocks streamed from host memory (block-swap tiers)
        #: Wan transformer tensors replaced from ``wan_override.safetensors`` (official checkpoints).
        self.backbone_override: list[str] = []
        self._text_cache: dict[str, torch.Tensor] = {}
        self._place()

    def _place(self) -> None:
        """Put each component where the memory tier keeps it: the encoders in host memory when
        offloaded (they visit the GPU for their phase), the Wan blocks in pinned host memory under
        block swap, everything else on :attr:`device`."""
        cuda = self.device.type == "cuda"
        if self.block_swap is not None:
            self.block_swap.detach()
            self.block_swap = None
        if self.memory.block_swap and cuda:
            layers = [*self.model.pcb_layers, *self.model.irg_layers]
            self.block_swap = BlockSwap(layers, [layer.wan_block for layer in layers], self.device)
            to_device_except(self.model, list(self.model.transformer.blocks), self.device)
        else:
            self.model.to(self.device)
        self.vae.to(self.device)
        offload = self.memory.offload_encoders and cuda
        for module in (self.text_encoder, self.image_encoder):
            if module is not None and not offload:
                module.to(self.device)
        # the encoders' visits to the GPU (no-ops when they are resident)
        set_head_chunks(self.model, self.memory.heads_chunks)  # exact chunkings: the same values
        self._text_visit = HostOffload(self.text_encoder, self.device, offload)
        self._image_visit = HostOffload(self.image_encoder, self.device, offload)
        if cuda:
            torch.cuda.empty_cache()

    @property
    def config(self) -> FantasyWorldConfig:
        return self.model.config

    def quantize_fp8(self, scope: str = "wan") -> list[str]:
        """Float8 e4m3 weights (:class:`~fantasyworld.layers.fp8_linear.Float8Linear`) for the linear
        layers of :data:`FP8_SCOPES` ``[scope]``: ``wan`` the Wan blocks', ``all`` also the geometry
        blocks' and the bidirectional cross-attention's (inference only: nothing is trained here);
        returns the names replaced, relative to the model."""
        if scope not in FP8_SCOPES:
            raise ValueError(f"fp8 scope must be one of {', '.join(FP8_SCOPES)}, got {scope!r}")
        names = []
        for prefix in FP8_SCOPES[scope]:
            names += [f"{prefix}.{n}" for n in swap_linears_to_fp8(self.model.get_submodule(prefix), lambda *_: True)]
        self._place()
        return names

    def compile(self, granularity: str = "layers") -> FantasyWorldPipeline:
        """``torch.compile`` the transformer's layers (:func:`~fantasyworld.models.parallelize.compile_blocks`;
        not with block swap, whose hooks run between layers); the first call pays the compile time."""
        if self.block_swap is None:
            compile_blocks(self.model, granularity=granularity)
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        backbone: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        tokenizer: str | Path | None = None,
        image_encoder: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        preset: str | None = None,
        stage: int | None = None,
        memory: str | MemoryTier | None = None,
    ) -> FantasyWorldPipeline:
        """Load a checkpoint and its frozen components (local files only, nothing downloaded).

        Args:
            checkpoint: a stage-2 ``.safetensors`` (``step-N.safetensors``) or its directory
                (newest step); ``config.json`` beside it gives the architecture.
            backbone: Wan2.1 transformer directory (diffusers or original layout). Default:
                ``<checkpoint dir>/backbone`` if present; for tiny presets, ``"random"`` (or
                the preset's name) builds the seeded random tiny backbone
                (seed :data:`TINY_BACKBONE_SEED`, the one the tiny tests and demo use).
            vae, text_encoder, image_encoder: local directories (``from_pretrained``), or
                ``"tiny"`` for the tiny random encoders of :mod:`fantasyworld.models.encoders`.
                Default: ``<checkpoint dir>/<name>`` if present, else ``"tiny"`` for tiny presets.
                ``text_encoder`` may stay unset when every call passes ``prompt_embeds``.
            tokenizer: tokenizer directory (default: next to the text encoder).
            device, dtype: transformer placement and precision (``float32``, ``bfloat16``...).
                Every module that a ``_keep_in_fp32_modules`` list names stays fp32 (Wan's
                ``scale_shift_table``, ``time_embedder`` and norms, the geometry timestep MLPs).
            preset: preset name when the checkpoint has no ``config.json``.
            stage: override the checkpoint's ``stage`` metadata (1 loads a stage-1 file:
                geometry only, no camera conditioning).
            memory: memory tier (``"80"``, ``"48"``, ``"24"``: card GiB, see
                :mod:`fantasyworld.inference.memory_tiers`); default ``"80"``.

        Weights are read and cast in host memory, then placed by the tier (never fp32 on the card).

        A checkpoint with ``official_compat: true`` whose directory holds
        ``wan_override.safetensors`` (written by ``convert-official --backbone-override``)
        gets those tensors copied into the backbone after it is loaded
        (:func:`~fantasyworld.models.official.apply_backbone_override`); an override whose
        names or shapes do not fit the backbone raises :class:`CheckpointError`. An override
        file beside a checkpoint without ``official_compat`` is refused (only the converter
        writes one; dropping it silently would run another model).
        """
        weights, config, file_stage = resolve_checkpoint(checkpoint, preset)
        stage = stage or file_stage
        root = weights.parent
        target = torch.device(device)
        device = torch.device("cpu")  # build and cast in host memory; ``_place`` moves by tier
        dtype = as_dtype(dtype)
        tiny = config.name.startswith("tiny")
        if config.expert:
            raise CheckpointError(f"{checkpoint}: preset {config.name} is one expert of a two-expert model; load the "
                                  "directory holding high/ and low/ (TwoExpertPipeline; fantasyworld generate does)")

        def component(spec, name: str, required: bool = True):
            if spec is not None:
                return str(spec)
            if (root / name).is_dir():
                return str(root / name)
            if tiny:
                return "tiny"
            if required:
                raise CheckpointError(f"{checkpoint}: pass {name}=DIR (a local Wan2.1 {name} directory)")
            return None

        # 1. backbone
        spec = component(backbone, "backbone")
        if spec in ("tiny", "random", config.name):
            if not tiny:
                raise CheckpointError(f"a random backbone is only available for tiny presets, not {config.name}")
            with fork_rng(TINY_BACKBONE_SEED):
                transformer = build_wan_transformer(config.wan, device)
        else:
            transformer = load_wan_transformer(spec, torch.float32, device, expected_config=config.wan)
        overridden: list[str] = []
        if (root / OVERRIDE_FILE).is_file():
            if not config.official_compat:
                raise CheckpointError(
                    f"{root / OVERRIDE_FILE}: a backbone override beside a checkpoint whose config.json has "
                    "official_compat false; only convert-official writes one (remove it, or use the converted "
                    "checkpoint's config.json)")
            overridden = apply_backbone_override(root, transformer)  # fp32 copy, before any cast
        # 2. FantasyWorld modules (random init is overwritten; keep the caller's RNG untouched)
        with fork_rng(0):
            model = FantasyWorldModel(config, transformer, device=device)
        model.load_fantasyworld(weights, stage=stage)
        if dtype != torch.float32:
            cast_keeping_fp32(model, dtype)
            rebuild_rope(model.transformer, device)
        model.eval().requires_grad_(False)
        # 3. encoders
        vae_model = encoders.load_vae_spec(component(vae, "vae"), device)
        te, tok = load_text_component(component(text_encoder, "text_encoder", required=False), tokenizer, device,
                                      dtype)
        ie = proc = None
        if config.uses_clip:
            ie, proc = encoders.load_image_encoder_spec(component(image_encoder, "image_encoder"), device, dtype)
        pipe = cls(model, vae_model, te, tok, ie, proc, target, dtype, source=str(weights), memory=memory)
        pipe.backbone_override = overridden
        return pipe

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """``(1, 512, text_dim)`` fp32 UMT5 embeddings (zero after the prompt's tokens),
        memoised per prompt on the CPU."""
        if prompt not in self._text_cache:
            if self.text_encoder is None:
                raise ValueError("no text encoder loaded: pass text_encoder= to from_pretrained or prompt_embeds=")
            with self._text_visit:
                emb, _ = encoders.encode_text(self.text_encoder, self.tokenizer, [prompt], max_length=WAN_TEXT_LEN)
            self._text_cache[prompt] = emb.cpu()
        return self._text_cache[prompt].to(self.device)

    def _embeddings(self, value: Any, what: str) -> torch.Tensor:
        """Cached text embeddings -> ``(1, L, D)`` on the device (:func:`~fantasyworld.inference.images.
        load_text_embeddings`; I2V presets: padded or cut to Wan's 512 tokens)."""
        return load_text_embeddings(value, what, self.config.wan["text_dim"],
                                    WAN_TEXT_LEN if self.config.is_i2v else None).to(self.device)

    @torch.no_grad()
    def encode_image(self, image: Any, num_frames: int, height: int, width: int
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """I2V conditioning: ``(cond_latent (1, 20, F, H/8, W/8), clip tokens (1, N, image_dim),
        first frame (1, 3, H, W) in [-1, 1])`` built exactly as the latent cache builds them;
        presets without a CLIP branch (``uses_clip`` false) get ``None`` tokens."""
        if self.config.uses_clip and self.image_encoder is None:
            raise ValueError(f"preset {self.config.name} is image-to-video but no image encoder is loaded")
        first = load_image(image, height, width).to(self.device)
        video = torch.zeros(1, 3, num_frames, height, width, device=self.device)
        video[:, :, 0] = first[0]
        vae_dtype = next(self.vae.parameters()).dtype
        cond = encoders.i2v_condition_latent(self.vae, video.to(vae_dtype)).float()
        if not self.config.uses_clip:
            return cond, None, first
        with self._image_visit:
            clip = encoders.encode_image_clip(self.image_encoder, self.image_processor, first).float()
        return cond, clip, first

    def decode(self, latents: torch.Tensor, tiling: bool | str = "auto") -> np.ndarray:
        """Normalised latents ``(B, 16, F, h, w)`` -> ``(B, T, H, W, 3)`` uint8 frames
        (:func:`~fantasyworld.models.encoders.decode_video`; ``tiling="auto"`` tiles frames of at
        least :data:`VAE_TILING_MIN_AREA` pixels)."""
        if tiling == "auto":
            tiling = latents.shape[-2] * latents.shape[-1] * VAE_SPATIAL_STRIDE**2 >= VAE_TILING_MIN_AREA
        video = encoders.decode_video(self.vae, latents, tiling=bool(tiling))
        return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()

    # ------------------------------------------------------------------ cameras
    def camera_inputs(self, camera: CameraSequence | np.ndarray | str | Path, num_frames: int, height: int,
                      width: int, **options: Any) -> CameraInputs:
        """Resolve the camera and build the Plücker rays for this pipeline's model:
        :func:`~fantasyworld.inference.camera_inputs.build_camera_inputs` with the model's config
        (its keyword ``options``: ``image``, ``camera_magnitude``, ``camera_format``, ``fov_deg``,
        ``resample_camera``, ``translation_scale``, ``scale_depth``, ``depth_estimator``)."""
        return build_camera_inputs(self.config, camera, num_frames, height, width, **options)

    # ------------------------------------------------------------------ generation
    def __call__(
        self,
        prompt: str = "",
        negative_prompt: str | None = None,
        image: Any = None,
        camera: CameraSequence | np.ndarray | str | Path = "static",
        num_frames: int = 81,
        height: int = 336,
        width: int = 592,
        num_steps: int = 50,
        guidance_scale: float = 5.0,
        shift: float = 5.0,
        seed: int = 0,
        **options: Any,
    ) -> GenerationResult:
        """Generate one clip and its geometry.

        Args:
            prompt, negative_prompt: text; the negative prompt defaults to Wan's
                (:data:`WAN_NEGATIVE_PROMPT`); ``""`` is an empty negative prompt.
            image: first frame for I2V presets (path, PIL image, ``(H, W, 3)`` uint8 array
                or ``(3, H, W)`` tensor in [-1, 1]); resized to cover and centre-cropped.
            camera: named path (``"orbit"``, ``"dolly-in:1.0"`` ...), camera file/dir, w2c
                array ``(T, 4, 4)`` or :class:`CameraSequence` (see
                :mod:`fantasyworld.inference.trajectories`).
            num_frames: ``T = 4k + 1``; height, width: multiples of 16.
            num_steps, guidance_scale, shift: Euler steps, CFG scale, schedule shift.
            seed: the initial noise comes from ``torch.Generator('cpu').manual_seed(seed)``.
            options: keyword-only fields of :class:`~fantasyworld.inference.options.GenerationOptions`
                (camera reading, translation scale, cached embeddings, sampler variant,
                VAE tiling, point cloud, fps, progress); an unknown name is a ``TypeError``.
        """
        negative = WAN_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        return self._generate(prompt, negative, image, camera, num_frames, height, width, num_steps, guidance_scale,
                              shift, seed, GenerationOptions(**options))

    # ------------------------------------------------------------------ what differs between pipelines
    #: the expert key whose heads give the geometry (one model: :data:`~fantasyworld.inference.sampler.SINGLE`)
    geometry_expert: str = SINGLE

    def experts(self) -> dict[str, FantasyWorldModel]:
        """The models a call can run, by expert key: one model here (two-expert pipelines: both)."""
        return {SINGLE: self.model}

    def plan(self, num_steps: int, shift: float, schedule: str, geometry: str) -> list[str]:
        """The expert key of every sampling step (one model: the same key throughout)."""
        check_modes(geometry, schedule)
        return [SINGLE] * num_steps

    def _pose_feature(self, model: FantasyWorldModel, plucker: torch.Tensor) -> torch.Tensor | None:
        """``(1, L, P)`` pose features (or control-adapter tokens) of one model for Plücker rays
        ``(1, T, 6, H, W)``; ``None`` for a model that reads no camera (stage 1 without a
        control adapter)."""
        if model.stage != 2 and model.control_adapter is None:
            return None
        return model.encode_camera(plucker.to(self.dtype))

    # ------------------------------------------------------------------ the call, shared by every pipeline
    def _generate(self, prompt: str, negative: str, image: Any, camera: Any, num_frames: int, height: int,
                  width: int, num_steps: int, guidance_scale: float, shift: float, seed: int,
                  opts: GenerationOptions, last_image: Any = None) -> GenerationResult:
        """One call: camera features of each expert the plan runs (once), text and image
        conditioning, the shared sampling loop (:func:`~fantasyworld.inference.sampler.run_sampling`),
        decode, geometry arrays and the fused cloud, the settings record."""
        t0 = time.perf_counter()
        self._check_call(image, num_frames, height, width, opts)
        meter = PhaseMeter(self.device)
        sampling = opts.sampling(self.config.official_compat, self.memory.cfg_batch)
        plan = self.plan(num_steps, shift, sampling["schedule"], sampling["geometry"])
        used = set(plan) | ({self.geometry_expert} if sampling["geometry"] != "none" else set())
        models = {key: m for key, m in self.experts().items() if key in used}

        # 1. camera trajectory -> Plücker rays -> each expert's pose features (once)
        with meter.phase("camera"):
            cams = self.camera_inputs(camera, num_frames, height, width, image=image, **opts.camera_kwargs())
            plucker = cams.plucker.to(self.device)
            with torch.no_grad():
                poses = {key: self._pose_feature(m, plucker) for key, m in models.items()}

        # 2. text (and image) conditioning
        cond = self._conditioning(prompt, negative, image, num_frames, height, width, guidance_scale != 1.0,
                                  None, opts, meter, last_image=last_image)

        # 3. sampling
        f = (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1
        shape = (1, self.config.latent_channels, f, height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
        noise = initial_noise(shape, seed, self.device)
        with meter.phase("sample"):
            experts = {key: Expert(m, dataclasses.replace(cond, pose_feature=poses[key])) for key, m in models.items()}
            res = run_sampling(experts, plan, noise, geometry_expert=self.geometry_expert,
                               guidance_scale=guidance_scale, shift=shift, **sampling)

        # 4. decode
        with meter.phase("decode"):
            video = self.decode(res.latents, self._vae_tiling(opts))[0]

        # 5. geometry arrays and the fused cloud
        with meter.phase("fuse"):
            geo, w2c, k, cloud = geometry_arrays(video, res.geometry, (height, width), seed, opts)
        timings = {**meter.seconds, **res.timings, "total": time.perf_counter() - t0}
        del timings["sample"]  # reported as its parts (denoise, geometry)
        settings = call_settings(self, prompt, negative, image, cams, res, opts, num_frames=num_frames,
                                 height=height, width=width, num_steps=num_steps, guidance_scale=guidance_scale,
                                 shift=shift, seed=seed, camera_magnitude=opts.camera_magnitude)
        if meter.peak_gib:
            settings["peak_memory_gib"] = {k: round(v, 3) for k, v in meter.peak_gib.items()}
        if res.step_cache is not None:  # only with the option: the record is unchanged without it
            settings["step_cache"] = res.step_cache
        settings.update(self._extra_settings(res, last_image))
        return generation_result(video, res, geo, w2c, k, cams, cloud, settings, timings, opts)

    def _extra_settings(self, res: SampleResult, last_image: Any) -> dict[str, Any]:
        """Settings only this pipeline records (none for one model)."""
        return {}

    # ------------------------------------------------------------------ steps of a call
    def _check_call(self, image: Any, num_frames: int, height: int, width: int, opts: GenerationOptions) -> None:
        """Reject a request the model or the VAE cannot serve (the message says what to change)."""
        if (num_frames - 1) % VAE_TEMPORAL_STRIDE:
            raise ValueError(f"num_frames must be 4k+1 (the Wan VAE packs 4 frames per latent), got {num_frames}")
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of 16 (8x VAE, 2x2 patches), "
                             f"got {height}x{width}")
        if opts.cloud_source not in CLOUD_SOURCES:
            raise ValueError(f"cloud_source must be one of {CLOUD_SOURCES}, got {opts.cloud_source!r}")
        if self.config.is_i2v and image is None:
            raise ValueError(f"preset {self.config.name} is image-to-video: pass image=")

    def _conditioning(self, prompt: str, negative: str, image: Any, num_frames: int, height: int, width: int,
                      use_cfg: bool, pose_feature: torch.Tensor | None, opts: GenerationOptions,
                      meter: PhaseMeter, last_image: Any = None) -> Conditioning:
        """Text embeddings ``(1, Lt, text_dim)`` (and the negative ones under CFG), the I2V
        conditioning latent and CLIP tokens (:meth:`encode_image`, with ``last_image`` where the
        pipeline takes one), bundled with the pose features; phases ``encode_text`` and
        ``encode_image`` of ``meter``."""
        with meter.phase("encode_text"), self._text_visit:  # one visit for both prompts
            text = self._embeddings(opts.prompt_embeds, "prompt_embeds") if opts.prompt_embeds is not None \
                else self.encode_prompt(prompt)
            neg = None
            if use_cfg:
                if opts.negative_prompt_embeds is not None:
                    neg = self._embeddings(opts.negative_prompt_embeds, "negative_prompt_embeds")
                elif self.text_encoder is not None:
                    neg = self.encode_prompt(negative)
                else:
                    neg = torch.zeros_like(text)
        cond_latent = image_emb = None
        if self.config.is_i2v:
            with meter.phase("encode_image"):
                extra = {} if last_image is None else {"last_image": last_image}
                cond_latent, image_emb, _ = self.encode_image(image, num_frames, height, width, **extra)
        return Conditioning(text, neg, pose_feature, cond_latent, image_emb)

    def _vae_tiling(self, opts: GenerationOptions) -> bool | str:
        """The call's VAE tiling: the option when set, else the memory tier's."""
        return self.memory.vae_tiling if opts.vae_tiling == "auto" else opts.vae_tiling
