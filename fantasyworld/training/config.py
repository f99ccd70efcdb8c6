"""Typed, self-checking run configuration of ``fantasyworld train``.

A run config is a tree of keyword-only dataclasses (torchtitan style): :class:`TrainConfig`
at the top with the sections ``model``, ``data``, ``optim``, ``loss``, ``checkpoint``, ``log`` and
``validation``. It is read from YAML (:func:`load_config`), then ``key=value`` overrides are
applied with dotted keys (``optim.lr=3e-4``, ``steps=100``), values parsed as YAML and
coerced to the field's type. Unknown keys, wrong types and bad combinations raise
:class:`ConfigError` with a message that names the key and says what to change.

Batch arithmetic (checked again at start, once the number of devices is known)::

    global_batch_size = batch_size (per device) x world_size x grad_accum

Anything the config cannot know before start (world size, whether a stage-1 checkpoint
exists) is checked by the trainer with the same kind of message.

This module is the schema (the sections, their defaults, documentation and checks); reading
YAML files with ``base:`` inheritance, overrides and the typed dict -> dataclass coercion are
in :mod:`fantasyworld.training.config_io` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fantasyworld.errors import ConfigError
from fantasyworld.heads.losses import CAMERA_LOSS_TYPES
from fantasyworld.models.encoders import TINY
from fantasyworld.training.config_io import (
    apply_overrides,
    config_to_dict,
    from_dict,
    read_config_file,
    unknown_choice,
)
from fantasyworld.training.lr_schedule import LR_SCHEDULE_NAMES

__all__ = [
    "BucketConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "ValidationConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "read_config_file",
]

TINY_PRESETS = ("tiny", "tiny-i2v", "tiny-wan2.2-high", "tiny-wan2.2-low")
"""Presets whose backbone and encoders may be seeded random models (no files)."""
RANDOM = "random"
"""``model.backbone_dir`` value asking for a seeded random backbone for any preset (smoke tests)."""
TINY_ENCODER = TINY
"""Encoder path value selecting the seeded tiny random encoders of :mod:`fantasyworld.models.encoders`."""


@dataclass(kw_only=True)
class ModelConfig:
    """Which architecture to build and how to run it."""

    preset: str = "tiny"
    """Model preset (``tiny``, ``tiny-i2v``, ``wan2.1-t2v-1.3b``, ``wan2.1-i2v-14b-480p``,
    ``wan2.2-fun-a14b-control-camera-high`` / ``-low`` (one expert, trained on its side of
    the timestep boundary), ``tiny-wan2.2-high`` / ``-low``)."""
    backbone_dir: str | None = None
    """Local Wan2.1 transformer (diffusers or original layout); for the Wan2.2 expert presets
    the Wan2.2-Fun-A14B-Control-Camera directory (``high_noise_model/``, ``low_noise_model/``).
    ``None`` is allowed only for the tiny presets (seeded random backbone); ``random`` forces a
    seeded random backbone for any preset (smoke tests and benchmarks only: nothing learned is
    meaningful)."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing of every Wan/geometry layer (memory for compute);
    the older spelling of ``checkpointing: layer``."""
    checkpointing: str | None = None
    """How the layers keep activations for backward (``models.checkpointing.CHECKPOINT_MODES``):
    ``none``, ``layer`` (each layer recomputed whole in backward) or ``selective`` (matmul and
    attention outputs kept, elementwise/norm ops recomputed: no GEMM is run twice, more memory
    than ``layer``). null: ``layer`` if ``gradient_checkpointing``, else the memory tier's, else
    ``none``."""
    checkpoint_heads: bool | None = None
    """Also recompute the DPT heads' full-resolution fusion stage one frame chunk at a time
    (1.3B, 81x336x592 on an H200: stage-2 peak 71 -> 50 GiB; docs/benchmarks.md). null: the
    memory tier's (off without one)."""
    activation_offload: str | None = None
    """Saved activations kept in pinned host memory between forward and backward
    (``models.fantasyworld.ACTIVATION_OFFLOAD``): ``none``, ``heads`` (the DPT heads' latent-rate
    stage and temporal upsamplers) or ``all``. Exact; costs host-device copies. null: the tier's."""
    fp8_frozen: bool | None = None
    """Store the frozen Wan blocks' linear layers as float8 e4m3 with row-wise scales (FP8 GEMMs
    on CUDA, half the bytes of bf16; gradients reach the activations through the dequantised
    weights). Changes the forward by the FP8 rounding. null: the tier's (off without one)."""
    dpt_channels_last: bool | None = None
    """DPT heads: run the full-resolution fusion convolutions in channels-last (NHWC) layout.
    null: on for CUDA (cuDNN's bf16 convolutions are NHWC), off on the CPU. Same values."""
    dpt_resize: str | None = None
    """DPT heads: bilinear resizes as the ``kernel`` or as two ``matmul`` products
    (``heads.resize``; same values in fp32, backward without atomics). null: ``matmul`` on
    CUDA, ``kernel`` on the CPU."""
    base_lora: str | None = None
    """Wan2.2 expert presets: a LoRA merged into the frozen base before training (the official
    inference merges the expert's Wan2.2-Fun reward LoRA); ``None``: none."""
    base_lora_multiplier: float = 0.55
    """Multiplier of ``base_lora`` (official: 0.55)."""
    compile: bool = False
    """``torch.compile`` every repeated layer and each head before sharding; the first step pays
    the compile time (2-5 minutes at 1.3B and 81x336x592), then faster: 2.25 instead of 2.97 s a
    stage-2 step at that size with layer checkpointing, 1.87 s with ``checkpointing: selective``
    (one H200, gradients equal to eager's within bf16 noise; docs/benchmarks.md). Far fewer
    kernel launches for small presets."""
    cuda_graphs: bool = False
    """Replay each optimizer step as one CUDA graph (small presets on one GPU; ``training.graphed_step``)."""


@dataclass(kw_only=True)
class BucketConfig:
    """Resolution and frame-count buckets (``data.buckets``; :mod:`fantasyworld.data.buckets`,
    docs/data.md#buckets). Off unless ``sizes`` or ``aspect_ratios`` is set: then every clip
    is brought to its bucket's shape (nearest aspect ratio, longest frame count it supplies)
    instead of ``data.num_frames x data.height x data.width``, and every batch holds one bucket."""

    sizes: list[list[int]] | None = None
    """Explicit buckets, each ``[frames, height, width]``: frames 4k+1, height and width multiples of 16."""
    aspect_ratios: list[float] | None = None
    """Generate the buckets instead: one resolution per ratio (width / height) of about ``area`` pixels."""
    area: int | None = None
    """Pixel area of generated buckets (null: ``data.height x data.width``)."""
    frames: list[int] | None = None
    """Frame counts of generated buckets, each 4k+1 (null: ``[data.num_frames]``)."""
    unfit: str = "error"
    """Clips that fit no bucket (too short for every bucket, or cropped more than ``max_crop``):
    ``error`` refuses the run naming the first one, ``skip`` trains without them (listed in the log)."""
    max_crop: float | None = None
    """A clip fits no bucket if the aspect crop would cut more than this share of its area (null: any)."""


@dataclass(kw_only=True)
class CurriculumConfig:
    """A curriculum over clip difficulty (``data.curriculum``; :mod:`fantasyworld.data.curriculum`).
    Off unless ``measure`` is set: then the first ``ramp_steps`` steps draw their samples from
    the easiest clips by that measure, a pool growing linearly from ``start_fraction`` of the
    clips to all of them; from ``ramp_steps`` on the order is the usual one."""

    measure: str | None = None
    """Difficulty of a clip from its cameras: ``rotation`` (largest angle from frame 0) or
    ``translation`` (largest camera displacement); null: no curriculum."""
    start_fraction: float = 0.25
    """Share of the easiest clips the first step draws from, in (0, 1]."""
    ramp_steps: int = 0
    """Optimizer steps until every clip is in the pool (>= 1 with a measure)."""


@dataclass(kw_only=True)
class DataConfig:
    """Training data: a raw seed-layout dataset (encoded on the fly) or a latent cache."""

    root: str | None = None
    """Raw dataset root (``metadata.json`` + videos/depth/points/camera_params), encoded every step."""
    cache_dir: str | None = None
    """Latent cache written by ``fantasyworld data cache`` (the fast path at scale)."""
    num_frames: int | None = 81
    """Pixel frames per sample, ``4k + 1``. With a cache: must equal the cache's (or be null)."""
    height: int | None = 336
    """Pixel height, a multiple of 16 (one DiT token covers 16x16 pixels)."""
    width: int | None = 592
    """Pixel width, a multiple of 16."""
    stride: int = 1
    """Temporal stride between sampled frames (raw data)."""
    random_crop: bool = True
    """Raw data: random start frame and crop window per sample (seeded by seed, epoch, index)."""
    allow_nonfinite: bool = False
    """Raw data: mask NaN/inf depth/points as invalid instead of raising."""
    validate: bool = True
    """Raw data: check every record and file header, shape and dtype before training (no frame is
    decoded), so a bad clip fails at once; ``fantasyworld train --skip-validation`` turns it off."""
    validate_values: bool = False
    """Raw data, with ``validate``: also read every depth/points array in full, refusing NaN/inf."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    cache_on_device: bool = False
    """With ``cache_dir``: the whole cache held on the training device, batches gathered there."""
    vae: str | None = None
    """Raw data: local ``AutoencoderKLWan`` directory, or ``tiny`` (default for tiny presets)."""
    text_encoder: str | None = None
    """Raw data: local ``UMT5EncoderModel`` directory, or ``tiny`` (default for tiny presets)."""
    tokenizer: str | None = None
    """Raw data: tokenizer directory (default: ``text_encoder/../tokenizer`` or ``text_encoder``)."""
    image_encoder: str | None = None
    """Raw data, I2V presets: local ``CLIPVisionModel`` directory, or ``tiny``."""
    buckets: BucketConfig = field(default_factory=BucketConfig)
    """Resolution and frame-count buckets (off by default)."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Easiest clips first (off by default)."""


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW on the trainable parameters: linear warmup, then a constant or cosine learning rate."""

    lr: float = 1e-5
    """Peak learning rate (seed: 1e-5 for both stages)."""
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    """Linear warmup from lr / warmup_steps to lr over this many optimizer steps, then ``schedule``."""
    schedule: str = "constant"
    """After warmup: ``constant`` (the peak lr) or ``cosine`` (half a cosine from the peak down to
    ``min_lr_ratio * lr`` at the run's last step, ``steps``); see ``training.trainer.LR_SCHEDULES``."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule as a fraction of ``lr``."""
    optimizer: str | None = None
    """``adamw`` (fp32 moments), ``adamw8bit`` (8-bit moments, torchao) or ``adamw8bit-bnb`` (8-bit
    moments, bitsandbytes; both ``pip install -e ".[lowmem]"``); ``training.optimizers.OPTIMIZERS``.
    null: the memory tier's, else ``adamw``."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm (all ranks, all trainable parameters) to this; null: off
    (the norm is still logged)."""


@dataclass(kw_only=True)
class LossConfig:
    """``L = L_diff + lambda_geo * (L_depth + L_pmap + camera_weight * L_camera)`` (stage 1: no L_diff)."""

    lambda_geo: float = 1.0
    """Geometry weight lambda (the paper's value was not published; SPEC default 1.0)."""
    alpha: float = 0.2
    """Weight of the ``-log C`` confidence regulariser (VGGT default)."""
    camera_weight: float = 3.0
    """Weight of ``L_camera`` inside the geometry sum (the paper's 3)."""
    camera_loss: str = "huber"
    """Camera-loss penalty: ``huber`` (smooth-L1, VGGT's paper) or ``l1`` (VGGT's released code)."""
    shift: float = 5.0
    """Timestep shift of the training noise schedule (Wan: 5)."""
    pixel_frames_per_step: float | None = None
    """Supervise depth and point maps on K of each sample's T pixel frames (an integer K >= 1, or
    a fraction of T: K = max(1, round(fraction T))), drawn per sample from the run seed; the heads'
    full-resolution stage runs on those only, the camera loss keeps every frame. For stage 1;
    null (default): every frame."""
    camera_dropout: float = 0.0
    """Stage 2: share of steps without camera conditioning (seeded), so geometry keeps reading the video."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """``step-N.safetensors`` (trainable weights) + ``step-N.state.pt`` (resumable state)."""

    every: int = 1000
    """Write a checkpoint every N optimizer steps (and always at the last step)."""
    keep_last: int = 3
    """Keep the newest K complete checkpoints; older ones are deleted after a successful save."""


@dataclass(kw_only=True)
class LogConfig:
    """TensorBoard scalars, ``metrics.jsonl``, optional Weights & Biases and the progress bar
    (rank 0 only)."""

    every: int = 1
    """One log row (``metrics.jsonl``, TensorBoard / W&B, progress bar) every N steps with the
    means over them (also at checkpoints, validations, the end, a stop): the only host-device
    synchronisation, so small models on a GPU want N >= 10; several ranks agree on a stop there."""
    tensorboard: bool = True
    wandb: bool = False
    """Also log to Weights & Biases in offline mode (``RUN/wandb/offline-run-*``, nothing is sent;
    ``wandb sync`` uploads it later). Needs ``pip install -e ".[wandb]"``."""
    wandb_project: str = "fantasyworld"
    progress: bool = True
    """A tqdm progress bar with the loss breakdown."""


@dataclass(kw_only=True)
class ValidationConfig:
    """Validation samples during training (:mod:`fantasyworld.eval.validation`): every
    ``every`` steps the current weights predict geometry on fixed held-out clips (and, in
    stage 2, generate a short clip); scores, depth and trajectory images go to
    ``validation/``, ``validation.jsonl`` and TensorBoard, and the best weights to
    ``best.safetensors``. Off by default."""

    every: int = 0
    """Validate every N optimizer steps and at the last step (0: off). Each validation costs
    about ``max_clips`` forwards (plus ``generate_steps`` in stage 2); docs/training.md."""
    root: str | None = None
    """Raw seed-layout dataset of the validation clips (default: ``data.root``); required when
    training from a cache (it is encoded with ``data.vae`` / ``data.text_encoder``)."""
    split: str = "held-out"
    """Which clips of ``root``: ``held-out`` (clip-id hash, as ``fantasyworld evaluate``), ``train`` or ``all``."""
    held_out_fraction: float = 0.2
    """Share of the clips in the held-out split."""
    max_clips: int = 2
    """The first N clips of the split (a fixed set for the whole run)."""
    sigma: float = 0.1
    """Noise level of the latents the geometry is read from, in [0, 1)."""
    camera_conditioning: str = "none"
    """Stage 2: feed the clips' cameras as Plucker rays (``gt``) or not (``none``)."""
    generate_steps: int = 4
    """Stage 2, one process: Euler steps of a short generation along the first clip's cameras (0: off)."""
    metric: str = "abs_rel_median"
    """Validation score that picks the best checkpoint (a key of ``fantasyworld evaluate``'s scores)."""
    keep_best: bool = True
    """Write ``best.safetensors`` (+ ``best.json``) whenever ``metric`` improves."""
    seed: int = 0
    """Noise seed of the validation forwards (clip i uses seed + i)."""


@dataclass(kw_only=True)
class TrainConfig:
    """One training run (stage 1 or stage 2)."""

    stage: int = 1
    """1: latent bridging (geometry branch only); 2: unified co-optimisation (needs init_from)."""
    output_dir: str = "outputs/run"
    """Run directory: checkpoints, ``config.json`` (model), ``train_config.yaml``, ``tb/``."""
    init_from: str | None = None
    """Weights to start from: required in stage 2 (a stage-1 ``step-N.safetensors``, loaded
    strictly); optional in stage 1 (stage-1 weights). Ignored when resuming a run."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``output_dir`` (``--resume``)."""
    steps: int = 1000
    """Optimizer steps in total (with ``time_budget_s``: at most this many)."""
    time_budget_s: float | None = None
    """Wall-clock seconds for the optimizer steps, counted from the first step (building the
    model and data is not counted). The run measures its step rate over steps 6-25, then sets
    its step count to what fits the budget (never above ``steps``), so the learning-rate
    schedule ends with the budget, and stops at the budget with a checkpoint if it runs late
    (``stopped: time_limit``). The planned count is saved in the checkpoints: a resumed run
    continues to it (its budget counted afresh from its first step, as a hard stop). null: ``steps`` steps."""
    batch_size: int = 1
    """Samples per device per micro-batch."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch_size: int | None = None
    """Samples per optimizer step; must equal batch_size x devices x grad_accum (null: derived)."""
    seed: int = 0
    """Seeds the model init, the data order and crops, and the per-sample noise and timesteps."""
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu`` or ``cuda``."""
    mixed_precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``bf16`` or ``fp32``. Trainable weights,
    gradients and optimizer states are always fp32; the frozen Wan backbone is stored in bf16
    under bf16 (except diffusers' fp32-kept modules)."""
    max_nonfinite_steps: int = 5
    """A non-finite loss or gradient skips the step; this many skipped steps in a row stop the run."""
    memory_tier: str | None = None
    """``80``, ``48`` or ``24``: a bundle of memory settings for a card of that many GB
    (``training.memory_tiers.TRAIN_MEMORY_TIERS``); keys set explicitly win over it. null: none."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key and the fix on any bad setting."""
        from fantasyworld.models.config import PRESET_NAMES

        def fail(msg: str) -> None:
            raise ConfigError(msg)

        if self.stage not in (1, 2):
            fail(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and not self.init_from and not self.resume:
            fail("stage 2 starts from a stage-1 checkpoint: set init_from=PATH/step-N.safetensors "
                 "(the output of a stage-1 run)")
        for key in ("steps", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                fail(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.global_batch_size is not None:
            per_device = self.batch_size * self.grad_accum
            if self.global_batch_size < 1 or self.global_batch_size % per_device:
                fail(f"global_batch_size {self.global_batch_size} is not a multiple of batch_size "
                     f"{self.batch_size} x grad_accum {self.grad_accum} = {per_device}: change batch_size "
                     f"or grad_accum so that batch_size x devices x grad_accum = global_batch_size")
        if self.device not in ("auto", "cpu", "cuda"):
            fail(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.mixed_precision not in ("auto", "bf16", "fp32"):
            fail(f"mixed_precision must be auto, bf16 or fp32, got {self.mixed_precision!r}")
        if self.max_nonfinite_steps < 1:
            fail(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            fail(f"time_budget_s must be > 0 seconds (or null: no budget), got {self.time_budget_s}")

        m = self.model
        if m.preset not in PRESET_NAMES:
            fail(unknown_choice("model.preset", m.preset, PRESET_NAMES))
        tiny = m.preset in TINY_PRESETS
        if m.backbone_dir is None and not tiny:
            fail(f"model.backbone_dir is required for preset {m.preset!r}: set it to the local Wan2.1 "
                 f"transformer directory (or 'random' for a smoke test with random weights)")

        d = self.data
        if (d.root is None) == (d.cache_dir is None):
            fail("set exactly one of data.root (raw seed-layout dataset, encoded on the fly) and "
                 f"data.cache_dir (latent cache); got root={d.root!r}, cache_dir={d.cache_dir!r}")
        if d.num_frames is not None and (d.num_frames < 1 or (d.num_frames - 1) % 4):
            fail(f"data.num_frames must be 4k+1 (1, 5, 9, ..., 81), got {d.num_frames}")
        for key in ("height", "width"):
            v = getattr(d, key)
            if v is not None and (v < 16 or v % 16):
                fail(f"data.{key} must be a positive multiple of 16 (one DiT token is 16x16 pixels), got {v}")
        if d.root is not None:
            if d.num_frames is None:
                fail("data.num_frames is required with raw data (data.root)")
            if not tiny:
                for key in ("vae", "text_encoder"):
                    if getattr(d, key) in (None, TINY_ENCODER):
                        fail(f"data.{key} must be a local model directory for preset {m.preset!r} with raw data "
                             f"(or train from a latent cache: data.cache_dir)")
            if "i2v" in m.preset:
                if d.image_encoder is None and not tiny:
                    fail(f"preset {m.preset!r} is image-to-video: set data.image_encoder (CLIP vision "
                         f"directory) for raw data, or use a cache built with --image-encoder")
        if d.cache_on_device and d.cache_dir is None:
            fail("data.cache_on_device needs a latent cache (data.cache_dir)")
        if d.stride < 1 or d.num_workers < 0:
            fail(f"data.stride must be >= 1 and data.num_workers >= 0, got {d.stride}, {d.num_workers}")
        from fantasyworld.data.buckets import resolve_bucket_config

        area = d.height * d.width if d.height and d.width else None
        resolve_bucket_config(d.buckets, area, d.num_frames)  # raises ConfigError naming the data.buckets key
        cur = d.curriculum
        if cur.measure is not None:
            from fantasyworld.data.curriculum import DIFFICULTY_MEASURES

            if cur.measure not in DIFFICULTY_MEASURES:
                fail(unknown_choice("data.curriculum.measure", cur.measure, tuple(DIFFICULTY_MEASURES)))
            if not 0 < cur.start_fraction <= 1:
                fail(f"data.curriculum.start_fraction must be in (0, 1], got {cur.start_fraction}")
            if cur.ramp_steps < 1:
                fail(f"data.curriculum.ramp_steps must be >= 1 with a measure, got {cur.ramp_steps}")
            if d.buckets.sizes or d.buckets.aspect_ratios:
                fail("data.curriculum and data.buckets cannot be used together: every batch of a bucketed run "
                     "must hold one bucket, which the curriculum's draws do not keep")

        o = self.optim
        if not o.lr > 0:
            fail(f"optim.lr must be > 0, got {o.lr}")
        if o.warmup_steps < 0:
            fail(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        if o.schedule not in LR_SCHEDULE_NAMES:
            fail(f"optim.schedule must be one of {', '.join(LR_SCHEDULE_NAMES)}, got {o.schedule!r}")
        if not 0 <= o.min_lr_ratio <= 1:
            fail(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        if o.grad_clip is not None and not o.grad_clip > 0:
            fail(f"optim.grad_clip must be > 0 or null (off), got {o.grad_clip}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            fail(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if self.loss.lambda_geo < 0 or self.loss.alpha < 0 or self.loss.shift <= 0 or \
                not 0.0 <= self.loss.camera_dropout < 1.0:
            fail("loss.lambda_geo and loss.alpha must be >= 0, loss.shift > 0, loss.camera_dropout in [0, 1)")
        if self.loss.camera_loss not in CAMERA_LOSS_TYPES:
            fail(f"loss.camera_loss must be one of {', '.join(CAMERA_LOSS_TYPES)}, got {self.loss.camera_loss!r}")
        if self.checkpoint.every < 1 or self.checkpoint.keep_last < 1:
            fail(f"checkpoint.every and checkpoint.keep_last must be >= 1, got "
                 f"{self.checkpoint.every}, {self.checkpoint.keep_last}")
        if self.log.every < 1:
            fail(f"log.every must be >= 1, got {self.log.every}")
        k = self.loss.pixel_frames_per_step
        if k is not None and (not k > 0 or (k >= 1 and k != int(k))):
            fail(f"loss.pixel_frames_per_step must be an integer >= 1 (frames) or a fraction in (0, 1) of the "
                 f"frames, or null (every frame); got {k}")
        if k is not None and k >= 1 and d.num_frames is not None and k > d.num_frames:
            fail(f"loss.pixel_frames_per_step {int(k)} exceeds data.num_frames {d.num_frames}: use at most "
                 f"{d.num_frames} (or null for every frame)")
        from fantasyworld.heads.resize import RESIZE_MODES
        from fantasyworld.training.memory_tiers import validate_memory

        if m.dpt_resize is not None and m.dpt_resize not in RESIZE_MODES:
            fail(unknown_choice("model.dpt_resize", m.dpt_resize, RESIZE_MODES))
        validate_memory(self, fail)
        if m.cuda_graphs and self.device == "cpu":
            fail("model.cuda_graphs needs a CUDA device: set device=cuda (or auto), or model.cuda_graphs=false")
        self._validate_validation(fail)

    def _validate_validation(self, fail) -> None:
        from fantasyworld.data.split import SPLITS

        v = self.validation
        if v.every < 0:
            fail(f"validation.every must be >= 0 (0: off), got {v.every}")
        if not v.every:
            return
        if v.root is None and self.data.root is None:
            fail("validation.every > 0 needs raw clips with ground truth: set validation.root to a seed-layout "
                 "dataset (training from data.cache_dir has no frames to validate on)")
        if v.split not in SPLITS:
            fail(f"validation.split must be one of {', '.join(SPLITS)}, got {v.split!r}")
        if not 0.0 < v.held_out_fraction < 1.0 or v.max_clips < 1 or v.generate_steps < 0:
            fail("validation.held_out_fraction must be in (0, 1), validation.max_clips >= 1 and "
                 "validation.generate_steps >= 0")
        if not 0.0 <= v.sigma < 1.0:
            fail(f"validation.sigma must be in [0, 1), got {v.sigma}")
        if v.camera_conditioning not in ("none", "gt"):
            fail(f"validation.camera_conditioning must be none or gt, got {v.camera_conditioning!r}")
        # validation.metric is checked by the validator itself (its score names live in eval/)

    def check_world(self, world_size: int) -> int:
        """The global batch for ``world_size`` devices; raises if it contradicts ``global_batch_size``."""
        got = self.batch_size * world_size * self.grad_accum
        if self.global_batch_size is not None and got != self.global_batch_size:
            want = self.global_batch_size
            hint = ""
            if want % (self.batch_size * world_size) == 0:
                hint = f": set grad_accum={want // (self.batch_size * world_size)}"
            elif want % (world_size * self.grad_accum) == 0:
                hint = f": set batch_size={want // (world_size * self.grad_accum)}"
            raise ConfigError(
                f"global_batch_size {want} != batch_size {self.batch_size} x {world_size} devices x "
                f"grad_accum {self.grad_accum} = {got}{hint}")
        return got


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts (YAML layout)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config is a mapping, got {type(data).__name__}")
    return from_dict(TrainConfig, data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML run config (or start from defaults with ``path=None``), resolve its
    ``base:`` chain (:func:`read_config_file`), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_config_file(path)
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise
