"""Validation samples during training: the current weights on fixed held-out clips.

Every ``validation.every`` optimizer steps and at the last step (config
:class:`~fantasyworld.training.config.ValidationConfig`), every rank runs, on the same
``max_clips`` clips of the validation split (chosen once; frames ``T``, ``H x W`` of the
training data):

1. the ``latents`` mode of ``fantasyworld evaluate``
   (:func:`~fantasyworld.eval.evaluate.predict_from_latents`): each clip's VAE latents noised
   to ``validation.sigma`` with seeded noise, one forward, the heads' depth, points and
   cameras scored against the ground truth (:func:`~fantasyworld.eval.evaluate.score_clip`);
2. stage 2 with one process: a short generation (``generate_steps`` Euler steps, no CFG)
   along the first clip's cameras with the inference pipeline, shown in the depth figure.

Outputs (rank 0): ``validation/step-NNNNNN_depth.png`` (frames, ground-truth and predicted
depth; :func:`~fantasyworld.eval.report.depth_figure`) and ``..._trajectories.png`` (top
views; :func:`~fantasyworld.eval.report.trajectory_figure`), one ``validation.jsonl`` row
(mean scores, ``seconds``), TensorBoard images ``val/depth``, ``val/trajectories`` and
scalars ``val/<score>``, ``val/seconds``, and, when ``validation.metric`` improves,
``best.safetensors`` (the stage's trainable weights, the format of ``step-N.safetensors``)
with ``best.json`` (step, metric, value).

Training is not changed by validation: it reads no training data, draws its noise from its
own seeded generators and runs inside :func:`torch.random.fork_rng`, so the losses of a run
are the same with and without it (tested).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasyworld.eval.evaluate import CAMERA_KEYS, DEPTH_KEYS, POINT_KEYS

__all__ = ["BEST_INFO", "BEST_WEIGHTS", "HIGHER_IS_BETTER", "METRICS", "VALIDATION_LOG", "Validator"]

#: Scores a validation reports (``fantasyworld evaluate``'s keys).
METRICS = (*DEPTH_KEYS, *CAMERA_KEYS, *POINT_KEYS)
#: Scores where larger is better (accuracies, AUC); the others are errors.
HIGHER_IS_BETTER = frozenset({"delta_1_25_median", "delta_1_25_scale_shift", "rra@15", "rta@15", "auc@30"})
VALIDATION_DIR = "validation"
VALIDATION_LOG = "validation.jsonl"
BEST_WEIGHTS = "best.safetensors"
BEST_INFO = "best.json"


def check_metric(metric: str) -> None:
    """Raise :class:`~fantasyworld.errors.ConfigError` naming ``validation.metric`` (and the
    closest known score) when ``metric`` is not one of :data:`METRICS`."""
    from fantasyworld.training.config import ConfigError, unknown_choice

    if metric not in METRICS:
        raise ConfigError(unknown_choice("validation.metric", metric, METRICS))


def _better(value: float, best: float | None, metric: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


class Validator:
    """Runs the validation of one :class:`~fantasyworld.training.trainer.Trainer`.

    Args:
        trainer: the trainer (its model, encoders, world, run directory and config).
    """

    def __init__(self, trainer) -> None:
        from fantasyworld.data.loader import RawClipDataset
        from fantasyworld.data.split import select_split
        from fantasyworld.eval.evaluate import _frames_uint8, _ground_truth
        from fantasyworld.training.config import ConfigError

        check_metric(trainer.cfg.validation.metric)
        self.trainer = trainer
        self.cfg = trainer.cfg.validation
        d = trainer.cfg.data
        root = self.cfg.root or d.root
        from fantasyworld.training.data import bucket_kwargs

        # with data.buckets, each validation clip at its bucket's shape (forwards are one clip each)
        dataset = RawClipDataset(root, num_frames=d.num_frames, height=d.height, width=d.width, **bucket_kwargs(d))
        ids = [r.clip_id for r in dataset.records]
        chosen = select_split(ids, self.cfg.split, self.cfg.held_out_fraction)[: self.cfg.max_clips]
        if not chosen:
            raise ConfigError(f"validation: split {self.cfg.split!r} of {root} holds no clip (set validation.split "
                              f"or validation.held_out_fraction)")
        self.clip_ids = chosen
        self.samples = [dataset[ids.index(c)] for c in chosen]
        self.truth = [_ground_truth(s) for s in self.samples]
        self.frames = [_frames_uint8(s["video"]) for s in self.samples]
        self.run_dir = Path(trainer.run_dir)
        self.log_path = self.run_dir / VALIDATION_LOG
        self.best: dict[str, Any] | None = None
        if trainer.world.is_main:
            info = self.run_dir / BEST_INFO
            if trainer.start_step and info.is_file():
                self.best = json.loads(info.read_text())

    def start(self) -> None:
        """Called by the trainer once the run directory exists (nothing is written before the
        run is accepted): ``validation.jsonl`` keeps only the rows up to the resumed step."""
        if self.trainer.world.is_main:
            start_step = self.trainer.start_step
            rows = [r for r in (self.rows() if start_step else []) if r["step"] <= start_step]
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def rows(self) -> list[dict[str, Any]]:
        """Rows of ``validation.jsonl``."""
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def due(self, step: int) -> bool:
        """Validate after optimizer step ``step`` (1-based)?"""
        return step % self.cfg.every == 0 or step == self.trainer.total_steps

    # ------------------------------------------------------------------ one validation
    def _pipeline(self):
        from fantasyworld.inference.pipeline import FantasyWorldPipeline

        t = self.trainer
        return FantasyWorldPipeline(t.model, t.vae, t.text_encoder, t.tokenizer, t.image_encoder, t.image_processor,
                                    device=t.world.device, dtype=torch.float32, source=str(t.run_dir))

    def _predict(self) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
        from fantasyworld.eval.evaluate import predict_from_generation, predict_from_latents, score_clip

        t, cfg = self.trainer, self.cfg
        pipe = self._pipeline()
        figs, scores = [], []
        for i, (sample, gt) in enumerate(zip(self.samples, self.truth)):
            with torch.autocast(device_type=t.world.device.type, dtype=torch.bfloat16, enabled=t.use_bf16):
                pred = predict_from_latents(pipe, sample, cfg.sigma, cfg.seed + i, t.stage, cfg.camera_conditioning)
            scores.append(score_clip(pred, gt))
            figs.append({"clip_id": sample["clip_id"], "gt": gt, "frames": self.frames[i], "latents": pred})
        if t.stage == 2 and cfg.generate_steps > 0 and not t.world.distributed:
            with torch.autocast(device_type=t.world.device.type, dtype=torch.bfloat16, enabled=t.use_bf16):
                res = predict_from_generation(pipe, self.samples[0], cfg.seed, cfg.generate_steps, 1.0,
                                              t.cfg.loss.shift)
            figs[0]["generation"] = {"depth": res.depth, "w2c": res.w2c, "video": res.video}
        return figs, scores

    def run(self, step: int, logger) -> dict[str, Any]:
        """Validate the current weights after step ``step`` (collective: every rank calls it);
        returns the ``validation.jsonl`` row."""
        from fantasyworld.eval.evaluate import _nanmean
        from fantasyworld.eval.report import depth_figure, trajectory_figure
        from fantasyworld.training import checkpoint as ckpt
        from fantasyworld.training.parallel import all_reduce_max

        t, cfg = self.trainer, self.cfg
        start = time.perf_counter()
        devices = [t.world.device] if t.world.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            figs, scores = self._predict()
        t.model.train()
        means = {k: _nanmean([s.get(k, float("nan")) for s in scores]) for k in METRICS}
        value = means[cfg.metric]
        improved = _better(value, None if self.best is None else self.best.get("value"), cfg.metric)
        # every rank saves or none does (the gather is collective)
        improved = bool(all_reduce_max(torch.tensor([float(improved)]), t.world).item() > 0)
        if improved and cfg.keep_best:
            self._save_best(step, value, ckpt)
        seconds = time.perf_counter() - start
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in means.items()},
               "seconds": seconds, "clips": self.clip_ids, "best": improved}
        if t.world.is_main:
            out = self.run_dir / VALIDATION_DIR
            out.mkdir(parents=True, exist_ok=True)
            images = {"depth": np.asarray(depth_figure(figs)), "trajectories": np.asarray(trajectory_figure(figs))}
            from PIL import Image

            for name, arr in images.items():
                Image.fromarray(arr).save(out / f"step-{step:06d}_{name}.png")
            logger.log_images(step, {f"val/{name}": arr for name, arr in images.items()})
            logger.log_scalars(step, {**{f"val/{k}": v for k, v in means.items()}, "val/seconds": seconds})
            with self.log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            logger.write(f"validation at step {step} on {len(self.clip_ids)} clip(s): {cfg.metric} {value:.4g}"
                         + (" (best so far)" if improved else "") + f", rot_err {means['rot_err']:.3g} deg, "
                         f"{seconds:.1f} s")
        return row

    def _save_best(self, step: int, value: float, ckpt) -> None:
        from safetensors.torch import save_file

        t, cfg = self.trainer, self.cfg
        tensors = ckpt.gather_trainable_state(t.model, t.weight_keys, t.world)
        self.best = {"step": step, "metric": cfg.metric, "value": value,
                     "lower_is_better": cfg.metric not in HIGHER_IS_BETTER, "clips": self.clip_ids}
        if t.world.is_main:
            meta = ckpt.weights_metadata(t.stage, t.model_config.name, step,
                                         {"validation_metric": cfg.metric, "validation_value": value})
            ckpt._atomic_write(self.run_dir / BEST_WEIGHTS, lambda p: save_file(tensors, str(p), metadata=meta))
            (self.run_dir / BEST_INFO).write_text(json.dumps(self.best, indent=1) + "\n")
