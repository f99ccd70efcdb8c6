"""The FantasyWorld trainer: stage 1 (latent bridging) and stage 2 (unified co-optimisation).

One optimizer step (letter legend B per-device batch, T pixel frames, F latent frames):

1. For each of ``grad_accum`` micro-batches (outside autocast, as vggt prepares batches):
   latents ``x0`` (B, 16, F, H/8, W/8) and text embeddings (B, L, D) come from the cache or
   are encoded on the fly with the frozen VAE / text encoder; per sample (seeded by its
   stream position, :mod:`fantasyworld.models.inputs`) a noise ``eps`` and a noise level
   ``sigma`` from Wan's shifted schedule (shift 5, uniform ``u``) give
   ``x_sigma = (1 - sigma) x0 + sigma eps`` and the flow target ``eps - x0``; stage 2 also
   builds Plucker rays (B, T, 6, H, W) from the ground-truth cameras.
2. Forward under ``torch.autocast(bf16)`` on GPU (fp32 on CPU); stage 1 runs only the PCBs
   and the geometry branch and does not compute ``L_diff`` (nothing trainable affects it).
3. Losses in fp32 (:func:`~fantasyworld.training.losses.per_sample_losses`) **per sample**, then
   averaged: the objective of a step is the mean over the global batch of per-sample
   objectives, so it does not depend on how the global batch is split over devices and
   accumulation steps (the batch-wide valid-pixel normalisation of ``compute_losses`` would).
4. Backward of ``sum(objective_i) / (B * grad_accum)``; FSDP2 reduce-scatters (averages)
   gradients over ranks after every micro-batch.
5. Global gradient norm, clipping, AdamW step, LR schedule; with ``model.cuda_graphs`` steps 2-5
   are one replayed CUDA graph (:mod:`~fantasyworld.training.graphed_step`).
6. Checkpoint every ``checkpoint.every`` steps; validation every ``validation.every`` steps
   (:mod:`fantasyworld.eval.validation`, passed in as ``validator``; it does not change the training).

Nothing is read back to the host inside a step: loss terms, gradient norm and skip flag stay
on the device (:class:`~fantasyworld.training.step_stats.StepStats`) until the log row every
``log.every`` steps (and at checkpoints, validations, the last step and a stop). A non-finite
loss or gradient norm (agreed by all ranks) skips the optimizer step on the device (fused
AdamW's ``found_inf``; other optimizers: a host check) and is reported at the next row;
``max_nonfinite_steps`` skips in a row stop the run with :class:`NonFiniteLossError`. SIGTERM
or SIGINT makes every rank finish the current step (several ranks: the step of the next row),
write a checkpoint and return; ``fantasyworld train`` then exits with 143 / 130;
``train(deadline=...)`` stops the same way once a wall-clock deadline has passed.

A time budget (``time_budget_s``, or a ``deadline``) also plans the run: from step 25 on, the
step rate measured on the run's own steps gives the number of steps that fit before the end,
at most ``steps`` (:mod:`~fantasyworld.training.time_budget`: where it is measured and when it
is planned again); the learning-rate schedule is rebuilt to end there (before the first plan
it assumes ``steps``: with warmup to at least step 25 it is the same curve), and the planned
count is saved in the checkpoints so that a resumed run keeps it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fantasyworld.errors import CheckpointError, NonFiniteLossError
from fantasyworld.layers.fp8_linear import swap_linears_to_fp8
from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.flow_matching import expert_sigma_range
from fantasyworld.models.inputs import pixel_frame_count, pixel_frame_subset, to_device, training_inputs
from fantasyworld.models.parallelize import compile_blocks
from fantasyworld.models.wan22 import load_wan22_base
from fantasyworld.models.wan_loading import cast_keeping_fp32, load_wan_transformer
from fantasyworld.models.weights import RUN_CONFIG_NAME
from fantasyworld.training import checkpoint as ckpt
from fantasyworld.training import data as stream
from fantasyworld.training.config import RANDOM, TINY_ENCODER, TINY_PRESETS, ConfigError, TrainConfig, config_to_dict
from fantasyworld.training.data import build_stream_loader, camera_dropped
from fantasyworld.training.data_checks import check_cache, validate_training_data
from fantasyworld.training.graphed_step import GraphedStep, StepOutputs, check_cuda_graphs
from fantasyworld.training.logging import MetricsLogger, get_logger
from fantasyworld.training.losses import loss_keys, per_sample_losses
from fantasyworld.training.lr_schedule import lr_multiplier, scheduled_lr
from fantasyworld.training.memory_tiers import MemorySettings, resolve_memory
from fantasyworld.training.optimizers import OPTIMIZERS, build_optimizer, clip_grad_norm
from fantasyworld.training.parallel import World, all_reduce_max, barrier, init_world, shard_model
from fantasyworld.training.signals import STOP_SIGNALS, SignalFlag, signal_exit_code
from fantasyworld.training.step_stats import StepStats
from fantasyworld.training.time_budget import PLAN_AT_STEP, StepPlanner, fitted_steps

__all__ = ["STOP_SIGNALS", "NonFiniteLossError", "TrainResult", "Trainer", "loss_keys", "signal_exit_code", "train"]

MODEL_CONFIG_NAME = "config.json"


@dataclass
class TrainResult:
    """What a finished (or stopped) run did.

    Attributes:
        step: optimizer steps completed.
        stopped: ``finished``, ``sigterm``, ``sigint`` (see :func:`signal_exit_code`) or
            ``time_limit`` (the ``deadline`` of :meth:`Trainer.train` passed).
        run_dir: the run directory.
        last_checkpoint: path of the newest ``step-N.safetensors`` (or None).
        history: the log rows of this process's run (rank 0), as in ``metrics.jsonl``.
        planned_steps: the step count planned to fit a time budget (None: no plan was made).
        planned_rate: the steps per second the last plan was made from (None: no plan).
    """

    step: int
    stopped: str
    run_dir: Path
    last_checkpoint: Path | None
    history: list[dict[str, float]]
    planned_steps: int | None = None
    planned_rate: float | None = None


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig` and trains.

    Args:
        config: the validated run config.
        world: the process's :class:`World` (default: :func:`init_world` from the environment).
    """

    def __init__(self, config: TrainConfig, world: World | None = None,
                 validator: Callable[[Trainer], Any] | None = None) -> None:
        """``validator``: builds the periodic validation from the trainer (needed when
        ``validation.every`` is set; ``fantasyworld train`` passes
        :class:`fantasyworld.eval.validation.Validator`, which lives above training)."""
        self.cfg = config
        self.world = world or init_world(config.device)
        self.log = get_logger()
        self.run_dir = Path(config.output_dir)
        self.global_batch = config.check_world(self.world.world_size)
        dev = self.world.device
        mp = config.mixed_precision
        self.use_bf16 = (mp == "bf16") or (mp == "auto" and dev.type == "cuda")
        self.stage = config.stage
        self._setup_run_dir()
        self._check_init_from()
        if config.data.root is not None and config.data.validate:
            # every record and file of data.root, before any model is built: a bad clip fails in seconds
            validate_training_data(self.cfg.data, self.log if self.world.is_main else None)
        self._build_encoders()
        self._build_model()
        self._build_optimizer()
        self._build_data()
        self.validator = None
        if config.validation.every:
            if validator is None:
                raise ConfigError("validation.every is set but no validator was given: run `fantasyworld train`, "
                                  "or pass validator=fantasyworld.eval.validation.Validator to Trainer")
            self.validator = validator(self)
        self._publish_run_dir()

    # ---------------------------------------------------------------------------- setup
    def _setup_run_dir(self) -> None:
        cfg, world = self.cfg, self.world
        ckpt.check_output_dir(self.run_dir)
        warn = self.log.warning if world.is_main else None
        self.resume_step = ckpt.latest_resumable_step(self.run_dir, warn) if cfg.resume else None
        if not cfg.resume:
            existing = ckpt.complete_steps(self.run_dir)
            if existing:
                raise ConfigError(
                    f"output_dir {self.run_dir} already holds checkpoints (newest step-{existing[-1]}): "
                    f"pass --resume (resume=true) to continue that run, or choose another output_dir")
        if self.resume_step is None and cfg.stage == 2 and not cfg.init_from:
            raise ConfigError(f"stage 2 needs a stage-1 checkpoint: no checkpoint to resume in {self.run_dir} "
                              f"and init_from is not set (init_from=PATH/step-N.safetensors)")

    def _publish_run_dir(self) -> None:
        """Create the run directory and write its configs: only after the checkpoint, the
        init weights, the data and the validator were all accepted, so a refused run (or a
        refused ``--resume``) leaves no new folder and rewrites nothing."""
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.run_dir)
            (self.run_dir / RUN_CONFIG_NAME).write_text(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
            self.model_config.save(self.run_dir / MODEL_CONFIG_NAME)
        if self.validator is not None and hasattr(self.validator, "start"):
            self.validator.start()
        barrier(self.world)

    def _build_encoders(self) -> None:
        """Frozen VAE / text (/ CLIP) encoders for raw data (or raw validation clips); nothing
        for a cache."""
        cfg, dev = self.cfg, self.world.device
        self.vae = self.text_encoder = self.tokenizer = self.image_encoder = self.image_processor = None
        if cfg.data.root is None and not (cfg.validation.every and cfg.validation.root):
            return
        from fantasyworld.models import encoders

        d = cfg.data
        tiny = cfg.model.preset in TINY_PRESETS
        dtype = torch.bfloat16 if self.use_bf16 else torch.float32
        preset = get_preset(cfg.model.preset)
        vae = d.vae or (TINY_ENCODER if tiny else None)
        text = d.text_encoder or (TINY_ENCODER if tiny else None)
        self.vae = encoders.load_vae_spec(vae, dev, dtype)
        self.text_encoder, self.tokenizer = encoders.load_text_encoder_spec(
            text, d.tokenizer, dev, dtype, tiny_dim=int(preset.wan["text_dim"]))
        if preset.uses_clip:
            image = d.image_encoder or (TINY_ENCODER if tiny else None)
            self.image_encoder, self.image_processor = encoders.load_image_encoder_spec(image, dev, dtype)

    def _build_model(self) -> None:
        cfg, world = self.cfg, self.world
        mcfg: FantasyWorldConfig = get_preset(cfg.model.preset)
        self.model_config = mcfg
        torch.manual_seed(cfg.seed)  # identical init on every rank (FSDP shards each rank's copy)
        backbone = cfg.model.backbone_dir
        transformer = None
        control_adapter = None
        if backbone not in (None, RANDOM) and mcfg.has_control_adapter:
            # Wan2.2-Fun expert: transformer + control adapter (+ the base LoRA) from the release layout
            base = load_wan22_base(backbone, mcfg, torch.bfloat16 if self.use_bf16 else torch.float32, "cpu",
                                   lora=cfg.model.base_lora, lora_multiplier=cfg.model.base_lora_multiplier)
            transformer, control_adapter = base.transformer, base.control_adapter
        elif backbone not in (None, RANDOM):
            wan_dtype = torch.bfloat16 if self.use_bf16 else torch.float32
            transformer = load_wan_transformer(backbone, wan_dtype, "cpu", expected_config=mcfg.wan)
        elif backbone == RANDOM and cfg.model.preset not in TINY_PRESETS and world.is_main:
            self.log.warning(f"model.backbone_dir=random: preset {mcfg.name} gets a random Wan backbone "
                             f"(smoke test only)")
        # a random backbone is built where it runs (fast on a GPU); a loaded one arrives on the CPU
        model = FantasyWorldModel(mcfg, transformer=transformer, control_adapter=control_adapter,
                                  device=world.device if transformer is None else None)
        model.set_stage(self.stage)
        self.memory: MemorySettings = resolve_memory(cfg)
        model.checkpointing = self.memory.checkpointing
        model.activation_offload = self.memory.activation_offload
        self.weight_keys = model.stage_state_keys(self.stage)

        if self.resume_step is not None:
            path = ckpt.weights_path(self.run_dir, self.resume_step)
            model.load_fantasyworld(path, self.stage)
        else:
            self._load_init_from(model)

        if self.use_bf16:
            cast_keeping_fp32(model.transformer, torch.bfloat16)
            if model.control_adapter is not None:
                model.control_adapter.to(torch.bfloat16)
        model.to(world.device)
        if self.memory.fp8_frozen:
            swap_linears_to_fp8(model.transformer.blocks, lambda name, _: True)
        model.train()
        model.checkpoint_heads = self.memory.checkpoint_heads
        cuda = world.device.type == "cuda"
        m = cfg.model
        model.set_dpt_layout(channels_last=cuda if m.dpt_channels_last is None else m.dpt_channels_last,
                             resize=m.dpt_resize or ("matmul" if cuda else "kernel"))
        if cfg.model.compile:  # torchtitan order: checkpointing, then compile, then sharding
            compile_blocks(model, num_shapes=stream.num_buckets(cfg.data), heads=True)  # a graph per bucket
        self.model = shard_model(model, world)
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise RuntimeError(f"stage {self.stage}: no trainable parameters")

    def _check_init_from(self) -> None:
        """Refuse an ``init_from`` that is absent or not a stage-1 checkpoint of this preset,
        from its header alone (before the data check and the model build)."""
        if self.cfg.init_from and self.resume_step is None:
            ckpt.check_init_from(self.cfg.init_from, self.cfg.stage, get_preset(self.cfg.model.preset).name)

    def _load_init_from(self, model: FantasyWorldModel) -> None:
        """Load ``init_from`` strictly (stage 2: a stage-1 checkpoint is required)."""
        if self.cfg.init_from:
            ckpt.load_init_from(model, self.cfg.init_from, self.log.info if self.world.is_main else None)

    def _build_optimizer(self) -> None:
        o = self.cfg.optim
        decay = [p for n, p in self.trainable if p.ndim >= 2 and "token" not in n]
        no_decay = [p for n, p in self.trainable if not (p.ndim >= 2 and "token" not in n)]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = build_optimizer(self.memory.optimizer, [g for g in groups if g["params"]], lr=o.lr,
                                         betas=tuple(o.betas), eps=o.eps, device=self.world.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_multiplier(self.cfg.steps))
        self.graphed: GraphedStep | None = None
        self.start_step = 0
        self.total_steps = self.cfg.steps  # the run's last step; a time budget's plan lowers it
        self.planned_steps: int | None = None
        self.nonfinite_streak = 0
        self._resume_rng: Any = None
        if self.resume_step is not None:
            state = ckpt.read_state(self.run_dir, self.resume_step)
            if state["stage"] != self.stage or state["preset"] != self.model_config.name:
                raise CheckpointError(f"{ckpt.state_path(self.run_dir, self.resume_step)}: stage {state['stage']} "
                                      f"preset {state['preset']} does not match the config (stage {self.stage}, "
                                      f"preset {self.model_config.name})")
            ckpt.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["lr_scheduler"])
            self.start_step = int(state["step"])
            self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
            if state.get("planned_steps") is not None:  # the run's time-budget plan, kept on resume
                self._set_total_steps(min(int(state["planned_steps"]), self.cfg.steps))
                self.planned_steps = self.total_steps
            self._resume_stream = {k: state[k] for k in (stream.STREAM_STATE_KEY,) if k in state}
            if state["samples_seen"] != self.start_step * self.global_batch:
                raise CheckpointError(
                    f"cannot resume step {self.start_step}: the checkpoint consumed {state['samples_seen']} samples, "
                    f"which is not step x global batch {self.global_batch} (the global batch changed)")
            rngs = state["rng"]
            if len(rngs) == self.world.world_size:
                self._resume_rng = rngs[self.world.rank]  # restored in train(), after iter(loader) draws
            elif self.world.is_main:
                self.log.warning(f"resuming on {self.world.world_size} ranks from a {len(rngs)}-rank checkpoint: "
                                 f"process RNG states are not restored (data order and noise are unaffected)")
            if self.world.is_main:
                self.log.info(f"resumed from {ckpt.weights_path(self.run_dir, self.resume_step)} at step "
                              f"{self.start_step}")
        if self.cfg.model.cuda_graphs:  # after any resume: the loaded groups get their device lr here
            check_cuda_graphs(self.world.device, self.world.world_size, self.memory)
            self.graphed = GraphedStep(self._optimizer_step, self.optimizer, self.world.device,
                                       log=self.log.info if self.world.is_main else None)

    def _lr_multiplier(self, total: int) -> Callable[[int], float]:
        """``optim``'s schedule over a run of ``total`` steps (``step -> multiplier``)."""
        o = self.cfg.optim
        return lr_multiplier(o.schedule, o.warmup_steps, total, o.min_lr_ratio)

    def _set_total_steps(self, total: int) -> None:
        """Make ``total`` the run's last step: the loop's end and the learning-rate schedule's
        (the multiplier depends on the step alone, so the curve is rebuilt, not rescaled)."""
        self.total_steps = total
        self.scheduler.lr_lambdas[0] = self._lr_multiplier(total)

    def _plan_steps(self, step: int, rate: float, end: float) -> int:
        """The step count that fits before ``end`` (``time.monotonic()``) at ``rate`` steps per
        second, between ``step`` and ``steps``, agreed by all ranks (the smallest)."""
        fit = fitted_steps(step, rate, end - time.monotonic(), self.cfg.steps)
        return int(-all_reduce_max(torch.tensor([-float(fit)], dtype=torch.float64), self.world).item())

    def _build_data(self) -> None:
        cfg, world = self.cfg, self.world
        d = cfg.data
        if d.cache_dir is not None:
            from fantasyworld.data.cache import CachedClipDataset

            dataset = CachedClipDataset(d.cache_dir)
            check_cache(dataset, d, self.model_config)  # frames, size and text width vs config and preset
        else:
            from fantasyworld.data.loader import RawClipDataset

            dataset = RawClipDataset(d.root, num_frames=d.num_frames, height=d.height, width=d.width,
                                     stride=d.stride, random=d.random_crop, allow_nonfinite=d.allow_nonfinite,
                                     seed=cfg.seed, **stream.bucket_kwargs(d))
        self.dataset = dataset
        stream.log_buckets(dataset, self.log if world.is_main else None)
        curriculum = self._curriculum(dataset)
        if d.cache_on_device:
            from fantasyworld.training.device_cache import DeviceCacheStream

            self.loader = DeviceCacheStream(dataset, world.device, seed=cfg.seed, batch_size=cfg.batch_size,
                                            world_size=world.world_size, rank=world.rank, grad_accum=cfg.grad_accum,
                                            start_step=self.start_step, curriculum=curriculum)
        else:
            self.loader = build_stream_loader(
                dataset, seed=cfg.seed, batch_size=cfg.batch_size, world_size=world.world_size, rank=world.rank,
                grad_accum=cfg.grad_accum, start_step=self.start_step, num_workers=d.num_workers,
                pin_memory=world.device.type == "cuda", curriculum=curriculum)
        if self.resume_step is not None:  # the bucket order must be the one the checkpoint was cut from
            stream.check_stream_state(self.loader, self._resume_stream, self.start_step,
                                      str(ckpt.state_path(self.run_dir, self.resume_step)))

    def _curriculum(self, dataset: Any) -> Any:
        """The :class:`~fantasyworld.data.curriculum.CurriculumOrder` of ``data.curriculum`` over
        ``dataset`` (every clip's difficulty from its cameras), or None when it is off."""
        cur = self.cfg.data.curriculum
        if cur.measure is None:
            return None
        from fantasyworld.data.curriculum import DIFFICULTY_MEASURES, CurriculumOrder, clip_poses

        measure = DIFFICULTY_MEASURES[cur.measure]
        difficulty = [measure(clip_poses(dataset, i)) for i in range(len(dataset))]
        order = CurriculumOrder(difficulty, cur.start_fraction, cur.ramp_steps, self.global_batch, self.cfg.seed)
        if self.world.is_main:
            self.log.info(f"curriculum ({cur.measure}): {order.summary()}")
        return order

    # ---------------------------------------------------------------------------- one step
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Model inputs and loss targets of one micro-batch (outside autocast):
        :func:`~fantasyworld.models.inputs.training_inputs` with this run's seed, shift and
        encoders; stage 2 without the cameras on the steps ``loss.camera_dropout`` drops."""
        mcfg, cfg = self.model_config, self.cfg
        positions = batch["sample_position"].tolist()  # a host tensor
        dropped = camera_dropped(cfg.seed, positions[0], self.global_batch, cfg.loss.camera_dropout)
        inputs = training_inputs(batch, device=self.world.device, stage=self.stage, seed=cfg.seed,
                                 shift=cfg.loss.shift, is_i2v=mcfg.is_i2v, encoders=self, clip=mcfg.uses_clip,
                                 camera=(self.stage == 2 and not dropped) or mcfg.has_control_adapter,
                                 sigma_range=expert_sigma_range(mcfg.expert, mcfg.expert_boundary))
        per_step = cfg.loss.pixel_frames_per_step
        if per_step is not None:  # loss.pixel_frames_per_step: a seeded frame subset per sample
            num_frames = inputs["depth"].shape[1]
            inputs["pixel_frames"] = to_device(pixel_frame_subset(
                positions, num_frames, pixel_frame_count(per_step, num_frames), cfg.seed), self.world.device, pin=True)
        return inputs

    def forward_losses(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and per-sample losses (:func:`~fantasyworld.training.losses.per_sample_losses`).

        Returns:
            ``(objective_sum, terms)``: the sum over the micro-batch of per-sample objectives
            (scalar, fp32, differentiable) and the per-term sums (detached) for logging.
        """
        loss = self.cfg.loss
        # a captured graph must not reuse autocast's cached weight casts across steps
        with torch.autocast(device_type=self.world.device.type, dtype=torch.bfloat16, enabled=self.use_bf16,
                            cache_enabled=self.graphed is None):
            outputs = self.model(
                inputs["latents"], inputs["timestep"], inputs["text_emb"], plucker=inputs.get("plucker"),
                cond_latent=inputs.get("cond_latent"), image_emb=inputs.get("image_emb"), stage=self.stage,
                pixel_frames=inputs.get("pixel_frames"))
        return per_sample_losses(outputs, inputs, stage=self.stage, lambda_geo=loss.lambda_geo, alpha=loss.alpha,
                                 camera_weight=loss.camera_weight, camera_loss=loss.camera_loss)

    def step_on_device(self, data_iter: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step: ``grad_accum`` micro-batches of prepare -> forward and losses ->
        backward, then the global gradient norm, clipping, the optimizer step and the LR schedule,
        with nothing read back to the host (fused AdamW skips a non-finite step by ``found_inf``).
        With ``model.cuda_graphs`` the micro-batches are prepared first, the rest is one CUDA graph.

        Returns:
            ``(means, grad_norm, skipped)`` on the device: this rank's loss terms of
            :func:`loss_keys` (means over its samples), the global norm before clipping and
            whether the step was skipped (a non-finite objective or norm on any rank).
        """
        accum = self.cfg.grad_accum
        self.model.train()
        if self.graphed is not None:
            out = self.graphed([self.prepare(next(data_iter)) for _ in range(accum)])
        else:  # each micro-batch prepared when it is due: one micro-batch's inputs alive at a time
            out = self._optimizer_step(self.prepare(next(data_iter)) for _ in range(accum))
            self.optimizer.zero_grad(set_to_none=True)
        self.last_lr = scheduled_lr(self.scheduler)
        with warnings.catch_warnings():  # a skipped step calls scheduler.step() without optimizer.step()
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        return out

    def _optimizer_step(self, micro_batches: Iterable[dict[str, Any]]) -> StepOutputs:
        """Forward, losses and backward of each prepared micro-batch, then the norm, clipping and
        the optimizer step (gradients are left in place; the caller clears them). No host read
        with the fused AdamW, so the whole of it can be captured as a CUDA graph."""
        cfg, dev = self.cfg, self.world.device
        keys = loss_keys(self.stage)
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        sums = torch.zeros(len(keys), dtype=torch.float64, device=dev)
        for inputs in micro_batches:
            total, terms = self.forward_losses(inputs)
            (total / (cfg.batch_size * cfg.grad_accum)).backward()  # a non-finite step is skipped below
            sums = sums + torch.stack([terms[k].detach().double() if k in terms else zero for k in keys])
        norm = clip_grad_norm([p for _, p in self.trainable], self.cfg.optim.grad_clip, dev)
        bad = (~torch.isfinite(norm) | ~torch.isfinite(sums[0])).float().reshape(1)
        skipped = (all_reduce_max(bad, self.world).to(dev) > 0)[0]
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = skipped.float()  # skips the whole update on the device
            self.optimizer.step()
        elif not bool(skipped):  # an optimizer without on-device skipping: one host read
            self.optimizer.step()
        return sums / (cfg.batch_size * cfg.grad_accum), norm, skipped

    def train_step(self, data_iter: Any, stop_requested: bool | str | None = None) -> tuple[dict[str, float], bool]:
        """:meth:`step_on_device` read back at once: ``(values, stop)``, the global means of the
        loss terms, ``lr``, ``grad_norm`` (NaN when skipped), ``skipped``; ``stop``: any rank asked."""
        stats = StepStats(loss_keys(self.stage), self.world.device)
        stats.add(*self.step_on_device(data_iter))
        values, (stop,) = stats.flush(self.world, [bool(stop_requested)])
        return {**values, "lr": self.last_lr}, stop

    # ---------------------------------------------------------------------------- loop
    def train(self, deadline: float | None = None) -> TrainResult:
        """Run from ``start_step`` to ``cfg.steps`` (or until SIGTERM / SIGINT, or until
        ``time.monotonic()`` passes ``deadline``: a checkpoint, then ``stopped="time_limit"``).

        The end of the run is the earlier of ``deadline`` and ``time_budget_s`` after the first
        step; when there is one, the step count is planned to fit it (module docstring)."""
        cfg, world = self.cfg, self.world
        t_start = time.monotonic()
        ends = [t for t in (deadline, None if cfg.time_budget_s is None else t_start + cfg.time_budget_s)
                if t is not None]
        end = min(ends) if ends else None
        plan = end is not None and self.planned_steps is None and self.total_steps > self.start_step + PLAN_AT_STEP
        planner = StepPlanner(world.device, time.monotonic, self.start_step) if plan else None
        plan_rate: float | None = None
        logger = MetricsLogger(self.run_dir, enabled=world.is_main, total_steps=self.total_steps,
                               start_step=self.start_step, tensorboard=cfg.log.tensorboard,
                               progress=cfg.log.progress, every=1, wandb=cfg.log.wandb,
                               wandb_project=cfg.log.wandb_project, run_config=config_to_dict(cfg))
        flag = SignalFlag()
        history: list[dict[str, float]] = []
        last_ckpt: Path | None = (ckpt.weights_path(self.run_dir, self.start_step) if self.start_step else None)
        stopped = "finished"
        step = self.start_step
        data_iter = iter(self.loader)  # draws a base seed from the process RNG
        if self._resume_rng is not None:  # so the RNG state is restored after it, as it was saved
            ckpt.restore_rng_state(self._resume_rng, self.world.device)
            self._resume_rng = None
        if world.is_main:
            n_train = sum(p.numel() for _, p in self.trainable)
            logger.write(f"stage {self.stage}, preset {self.model_config.name}: {n_train:,} trainable parameters, "
                         f"{world.world_size} process(es) on "
                         f"{world.device.type}, global batch {self.global_batch} = {cfg.batch_size} x "
                         f"{world.world_size} x {cfg.grad_accum}, {'bf16' if self.use_bf16 else 'fp32'} compute")
            note = OPTIMIZERS[self.memory.optimizer].start_note
            if note and self.start_step == 0:
                logger.write(f"optim.optimizer={self.memory.optimizer}: {note}")
        stats = StepStats(loss_keys(self.stage), world.device, self.nonfinite_streak)
        try:
            while step < self.total_steps:
                stats.add(*self.step_on_device(data_iter))
                step += 1
                if planner is not None and planner.due(step):
                    window = planner.rate(step)
                    if window is not None:
                        rate, first = window
                        plan_rate = rate
                        self.planned_steps = self._plan_steps(step, rate, end)
                        planner.planned(step, self.planned_steps)
                        if self.planned_steps != self.total_steps:
                            self._set_total_steps(self.planned_steps)
                            logger.set_total(self.total_steps)
                        logger.write(f"time budget: {rate:.2f} steps/s over steps {first}-{step} -> "
                                     f"{self.total_steps} steps (at most {cfg.steps}), "
                                     f"{end - time.monotonic():.1f} s left; the learning-rate schedule ends there")
                # this rank's stop requests: one process acts at once, several agree at the next row
                requests = [flag.raised is not None, end is not None and time.monotonic() >= end]
                due_ckpt = step % cfg.checkpoint.every == 0 or step == self.total_steps
                due_val = self.validator is not None and self.validator.due(step)
                if not (step % cfg.log.every == 0 or due_ckpt or due_val or (not world.distributed and any(requests))):
                    continue
                values, (stop_signal, out_of_time) = stats.flush(world, requests)
                self.nonfinite_streak = stats.streak
                values.update(lr=self.last_lr, samples_per_s=self.global_batch / values["step_time_s"])
                if world.device.type == "cuda":
                    values["max_memory_gib"] = torch.cuda.max_memory_allocated(world.device) / 2**30
                logger.log(step, values)
                history.append({"step": step, **values})
                stats.report_skips(step, values, cfg.max_nonfinite_steps, logger.write)
                if due_ckpt or stop_signal or out_of_time:
                    last_ckpt = self.save(step)
                if due_val and not (stop_signal or out_of_time):
                    self.validator.run(step, logger)
                if stop_signal or out_of_time:
                    stopped = (flag.raised or "sigterm") if stop_signal else "time_limit"  # torchrun sends SIGTERM
                    logger.write(f"{stopped.upper()}: checkpoint written at step {step} ({last_ckpt}); exiting "
                                 f"(status {signal_exit_code(stopped)}; --resume continues)")
                    break
        finally:
            flag.close()
            logger.close()
        return TrainResult(step, stopped, self.run_dir, last_ckpt, history, self.planned_steps, plan_rate)

    def save(self, step: int) -> Path:
        """Write the step's weights and resumable state (collective)."""
        return ckpt.save_checkpoint(
            self.run_dir, step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            world=self.world, weight_keys=self.weight_keys, stage=self.stage, preset=self.model_config.name,
            samples_seen=step * self.global_batch, keep_last=self.cfg.checkpoint.keep_last,
            extra_state={"nonfinite_streak": self.nonfinite_streak, "planned_steps": self.planned_steps,
                         **stream.stream_state(self.loader, step)})


def train(config: TrainConfig, world: World | None = None,
          validator: Callable[[Trainer], Any] | None = None) -> TrainResult:
    """Build a :class:`Trainer` and run it (the body of ``fantasyworld train``)."""
    return Trainer(config, world, validator).train()
