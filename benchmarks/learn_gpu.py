"""Does training learn geometry? One command, one GPU, about eight and a half minutes, a verdict.

Phases (each with a wall-clock budget, ``--budget``; each stops on time and says how):

1. **render**: ``fantasyworld data synth`` worlds (``--frames`` frames at ``--size``, seed
   ``--seed``) until ``--worlds`` or the render budget (``--max-seconds``: the worlds finished
   by then); the held-out split of :mod:`fantasyworld.data.split` (``--held-out-fraction``)
   is set aside, the rest linked into a training root;
2. **pretrain**: ``scripts/pretrain_tiny_backbone.py --preset PRESET --data TRAIN`` makes
   this run's VAE and Wan backbone from ``--pretrain-clips`` training videos (no labels), its
   VAE and backbone phases capped at 38% and 47% of the budget (the rest: reading the videos,
   the latent statistics, saving), their passes replayed as CUDA graphs on a GPU
   (``--no-pretrain-cuda-graphs`` turns that off); or, with ``--reuse-assets DIR``, an earlier
   run's ``assets/`` copied instead (:func:`check_reusable_assets`); meanwhile the render goes
   on in a child process (:func:`start_more_worlds`; ``--no-render-during-pretrain`` turns it
   off) and the training root is rebuilt over every world at the end of the phase; with
   ``--reuse-data DIR`` (an earlier run's ``--out``) the render, pretrain and cache phases are
   that run's: its worlds, assets and cache are linked, not made (:func:`check_reusable_data`);
3. **cache**: ``fantasyworld data cache`` of the training root (latents, tiny-UMT5 text,
   float16 geometry at pixel resolution); stage 1 loads it onto the GPU once for both
   stages (``data.cache_on_device``);
4. **stage 1** and 5. **stage 2** with the project's trainer on the cache (stage 2's camera-loss
   weight ``--camera-weight2`` 10; the paper's 3 is a flag away), each with its phase's
   deadline: the trainer measures its step rate over its first 25 steps and plans as many steps
   as fit the rest (capped by ``--max-steps1`` / ``--max-steps2``; the cosine schedule spans
   them); the deadline stops it with a checkpoint if it runs late;
6. **eval**: ``fantasyworld evaluate`` (``latents`` mode, no camera input) of both stages on
   ``--eval-clips`` held-out worlds, with the evaluation's baselines (constant depth,
   identity poses, one plane), and the flow-matching loss of the stage-2 model (with and
   without cameras) against the frozen backbone's on the same held-out latents and noise.

Writes into ``--out``: ``learning_curves.png``, ``held_out.json`` / ``held_out.md`` (table,
diffusion losses, verdict), ``learn.json`` (settings, phases with budget / seconds / how
each stopped, steps, rates), the worlds, runs, evaluations and assets; prints the verdict
with its bars (``benchmarks/learn_report.py``). Exit status 0 on PASS, 1 on FAIL.

Why these defaults (docs/evaluation.md, "Learning at scale on one GPU"): at 32x32 (2x2
tokens a frame) relative rotation did not generalise from a few hundred to two thousand
worlds, while the camera head learns once the information is in its input; 128x128 gives
8x8 tokens per latent frame, and the render budget buys a few thousand distinct worlds of
17 frames, each a whole trajectory (the largest motion per clip: windows of longer renders
would shrink the rotations the 4x bar is measured on); batch 32 at the step rate of the
``small`` preset fills the stage-1 budget with ~1000-1100 steps of a cosine schedule (one H100).

    python benchmarks/learn_gpu.py --out learn_out                       # one H200, ~8.5 minutes
    python benchmarks/learn_gpu.py --out /tmp/learn_smoke --smoke        # CPU, seconds (tests)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learn_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_SCRIPT = ROOT / "scripts" / "pretrain_tiny_backbone.py"
PRETRAIN_SHARE = 0.85  # of the pretrain budget: the VAE and backbone passes together (LearnConfig.vae_share)
PHASES = ("render", "pretrain", "cache", "stage1", "stage2", "eval")


@dataclass
class Budget:
    """Wall-clock seconds per phase (default total 490 s; with start-up about 8.5 minutes)."""

    render: float = 45.0
    pretrain: float = 100.0
    cache: float = 35.0
    stage1: float = 160.0
    stage2: float = 60.0
    eval: float = 90.0

    @classmethod
    def parse(cls, text: str, base: Budget | None = None) -> Budget:
        """``render=60,stage1=200``: the named phases changed, the others kept."""
        out = base if base is not None else cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in PHASES:
                raise ValueError(f"unknown phase {name!r} in --budget (phases: {', '.join(PHASES)})")
            setattr(out, name, float(value))
        return out


@dataclass
class LearnConfig:
    """Settings of a run (defaults: one H200, module docstring; :meth:`smoke`: CPU, seconds)."""

    preset: str = "small"
    worlds: int = 5000
    frames: int = 17
    size: int = 128
    trajectory_frames: int = 0  # > frames: each world a window of a longer camera path (data synth --trajectory-frames)
    seed: int = 0
    held_out_fraction: float = 0.05
    batch: int = 32
    lr1: float = 1e-3
    lr2: float = 3e-4
    warmup1: int = 150
    warmup2: int = 50
    shift1: float = 0.3
    shift2: float = 1.0
    camera_weight: float = 30.0
    camera_weight2: float = 10.0  # > 0: stage 2's camera loss weight (the paper's: 3); 0: camera_weight
    camera_dropout: float = 0.5
    pixel_frames1: float = 0.0  # > 0: stage 1 supervises that many (or that share of) pixel frames per sample
    max_steps1: int = 8000
    max_steps2: int = 4000
    log_every: int = 25
    eval_clips: int = 48
    eval_sigma: float = 0.05
    diffusion_clips: int = 32
    diffusion_train_clips: int = 16  # the same flow MSE on training clips (reported beside, not a bar; 0: off)
    geometry_train_clips: int = 8  # the stage-2 geometry scored on training clips too (beside, not a bar; 0: off)
    diffusion_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    workers: int = 16
    compile: bool = False
    cuda_graphs: bool = True  # model.cuda_graphs on a GPU: each training step replayed as one CUDA graph
    pretrain_cuda_graphs: bool = True  # the pretraining script's --cuda-graphs on a GPU (VAE and backbone passes)
    device: str = "cuda"
    pretrain_clips: int = 2000
    pretrain_steps: tuple[int, int] | None = None  # (VAE, backbone) step caps; None: the recipe's
    pretrain_batch: int = 0  # > 0: both pretraining batches (the smoke run's); 0: the recipe's
    vae_share: float = 0.38  # the VAE pass's share of the pretrain budget; the backbone's is 0.85 minus it
    render_during_pretrain: bool = True  # the render goes on (more worlds) while the backbone pretrains
    reuse_assets: str = ""  # an earlier run's assets/ (VAE, backbone) instead of pretraining (:func:`reuse_assets`)
    reuse_data: str = ""  # an earlier run's --out: its worlds, assets and cache; render, pretrain, cache skipped
    budget: Budget = field(default_factory=Budget)

    @classmethod
    def smoke(cls) -> LearnConfig:
        """Every phase at tiny sizes on the CPU (seconds): nothing it prints means anything."""
        return cls(worlds=8, frames=5, size=32, held_out_fraction=0.25, batch=2, warmup1=0, warmup2=0,
                   max_steps1=3, max_steps2=2, log_every=1, eval_clips=1, diffusion_clips=1,
                   diffusion_train_clips=1, geometry_train_clips=1,
                   diffusion_sigmas=(0.5,), workers=1, device="cpu", pretrain_steps=(2, 2), pretrain_batch=2,
                   budget=Budget(render=60, pretrain=120, cache=60, stage1=120, stage2=120, eval=120))


class Phases:
    """Start and end of every phase against its budget (``learn.json["phases"]``). With
    ``record``, each start and end rewrites that file with the phases so far (``"finished":
    false``; a phase begun has no ``seconds`` yet), so a run stopped part-way (a time limit, a
    signal) still says what each phase did and which one was running."""

    def __init__(self, budget: Budget, record: Path | None = None, header: dict[str, Any] | None = None) -> None:
        self.budget, self.rows, self.t0 = budget, {}, time.perf_counter()
        self.record, self.header = record, header or {}

    def start(self, name: str) -> None:
        """Begin ``name``."""
        self.rows[name] = {"budget_s": getattr(self.budget, name), "start_s": time.perf_counter() - self.t0}
        self._mono = time.monotonic()
        say(f"{name}: budget {getattr(self.budget, name):.0f} s")
        self._write()

    def deadline(self, name: str) -> float:
        """The end of ``name``'s budget on the ``time.monotonic`` clock."""
        return self._mono + getattr(self.budget, name)

    def left(self, name: str) -> float:
        """Seconds left of ``name``'s budget."""
        return self.deadline(name) - time.monotonic()

    def end(self, name: str, **info: Any) -> None:
        row = self.rows[name]
        row["seconds"] = time.perf_counter() - self.t0 - row["start_s"]
        row["over_budget"] = row["seconds"] > row["budget_s"]
        row.update(info)
        say(f"{name}: {row['seconds']:.1f} s" + "".join(f", {k} {v}" for k, v in info.items()))
        self._write()

    def _write(self) -> None:
        if self.record is not None:
            partial = {**self.header, "finished": False, "phases": self.rows,
                       "total_seconds": time.perf_counter() - self.t0}
            self.record.write_text(json.dumps(partial, indent=1, default=str) + "\n")


def say(msg: str) -> None:
    print(f"[learn] {msg}", flush=True)


def train_config(cfg: LearnConfig, stage: int, cache: Path, run_dir: Path, assets: Path, steps: int,
                 init: Path | None, log_every: int | None = None) -> Any:
    """The trainer's config of one stage (``configs/stage{1,2}_small.yaml`` with this run's values)."""
    from fantasyworld.training.config import config_from_dict

    lr, warmup, shift = (cfg.lr1, cfg.warmup1, cfg.shift1) if stage == 1 else (cfg.lr2, cfg.warmup2, cfg.shift2)
    camera_weight = cfg.camera_weight2 if stage == 2 and cfg.camera_weight2 > 0 else cfg.camera_weight
    data = {
        "stage": stage, "output_dir": str(run_dir), "steps": steps, "batch_size": cfg.batch, "seed": cfg.seed,
        "device": cfg.device, "mixed_precision": "auto",
        "model": {"preset": cfg.preset, "backbone_dir": str(assets / "backbone"), "compile": cfg.compile,
                  "cuda_graphs": cfg.cuda_graphs and cfg.device == "cuda"},
        "data": {"cache_dir": str(cache), "num_frames": cfg.frames, "height": cfg.size, "width": cfg.size,
                 "cache_on_device": True},
        "optim": {"lr": lr, "weight_decay": 0.01, "warmup_steps": min(warmup, steps // 4), "schedule": "cosine",
                  "min_lr_ratio": 0.05, "grad_clip": 1.0},
        "loss": {"shift": shift, "camera_weight": camera_weight,
                 "camera_dropout": cfg.camera_dropout if stage == 2 else 0.0,
                 "pixel_frames_per_step": (cfg.pixel_frames1 or None) if stage == 1 else None},
        "checkpoint": {"every": steps, "keep_last": 1},
        "log": {"every": min(log_every or cfg.log_every, steps), "tensorboard": False, "progress": False},
    }
    if init is not None:
        data["init_from"] = str(init)
    return config_from_dict(data)


def _rate(history: list[dict[str, Any]]) -> float:
    """Steps per second over the log rows after the first (compilation, allocator warm-up)."""
    rows = history[1:] or history
    return sum(r["steps"] for r in rows) / sum(r["steps"] * r["step_time_s"] for r in rows)


def _first_row_seconds(history: list[dict[str, Any]]) -> float:
    """Seconds of the first log row: its steps plus the start-up they include (the eager steps
    before the CUDA graph's capture, the capture, cuDNN's autotuning of every new shape). It
    comes out of the stage's budget before the trainer measures its rate, so it is where two
    runs at the same step rate plan different step counts."""
    return history[0]["steps"] * history[0]["step_time_s"] if history else 0.0


def run_stage(cfg: LearnConfig, stage: int, out: Path, phases: Phases, init: Path | None) -> Any:
    """Train the stage in its budget: the trainer plans its step count from the rate it measures
    over its own first steps (``fantasyworld.training.trainer``, a time budget) so that the cosine
    schedule ends with the phase's deadline; the result of :meth:`Trainer.train`."""
    from fantasyworld.data.cache import CachedClipDataset
    from fantasyworld.training.device_cache import load_device_cache
    from fantasyworld.training.signals import exit_on_signal
    from fantasyworld.training.trainer import Trainer

    name = f"stage{stage}"
    phases.start(name)
    if torch.cuda.is_available() and cfg.device != "cpu":
        # fixed shapes from here on: the DPT heads' convolutions autotuned once. Not earlier: the
        # pretraining's VAE runs many causal-convolution shapes, and autotuning them all took 21 s
        # of its 38 s budget (measured)
        torch.backends.cudnn.benchmark = True
    start = time.monotonic()
    load_device_cache(CachedClipDataset(out / "cache"), torch.device(cfg.device))  # kept for both stages
    load_s = time.monotonic() - start
    cap = cfg.max_steps1 if stage == 1 else cfg.max_steps2
    start = time.monotonic()
    trainer = Trainer(train_config(cfg, stage, out / "cache", out / "runs" / name, out / "assets", cap, init))
    build_s = time.monotonic() - start
    start = time.monotonic()
    result = trainer.train(deadline=phases.deadline(name))
    train_s = time.monotonic() - start
    exit_on_signal(result.stopped, name)
    rate = f"{result.planned_rate:.1f} steps/s over its first steps -> " if result.planned_rate else ""
    say(f"{name}: {rate}{result.step} steps of batch {cfg.batch} (cap {cap}), {result.stopped}")
    del trainer
    gc.collect()  # the stage's model and optimizer states leave the GPU before the next phase
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    phases.end(name, steps=result.step, planned_steps=result.planned_steps, stopped=result.stopped,
               planned_steps_per_s=None if result.planned_rate is None else round(result.planned_rate, 2),
               steps_per_s=round(_rate(result.history), 2), cache_load_s=round(load_s, 1),
               build_s=round(build_s, 1), train_s=round(train_s, 1),
               stepping_s=round(sum(r["steps"] * r["step_time_s"] for r in result.history), 1),
               first_row_s=round(_first_row_seconds(result.history), 1))
    return result


def pretrain_argv(cfg: LearnConfig, train_root: Path, assets: Path, n_clips: int, budget: float) -> list[str]:
    """The pretraining script's command line for this run: its VAE and backbone passes stop at
    ``cfg.vae_share`` (38%) and ``PRETRAIN_SHARE - vae_share`` (47%) of ``budget`` seconds, or at
    ``cfg.pretrain_steps`` if that comes first (the rest of the budget: start-up, calibration,
    the prompt-dependence check, saving)."""
    argv = ["--preset", cfg.preset, "--data", str(train_root), "--out", str(assets), "--device", cfg.device,
            "--clips", str(n_clips), "--frames", str(cfg.frames), "--size", str(cfg.size), "--workers",
            str(cfg.workers), "--seed", str(cfg.seed), "--vae-seconds", f"{cfg.vae_share * budget:.1f}",
            "--dit-seconds", f"{(PRETRAIN_SHARE - cfg.vae_share) * budget:.1f}"]
    if cfg.pretrain_cuda_graphs and cfg.device == "cuda":
        argv.append("--cuda-graphs")
    if cfg.pretrain_steps:
        argv += ["--vae-steps", str(cfg.pretrain_steps[0]), "--dit-steps", str(cfg.pretrain_steps[1])]
    if cfg.pretrain_batch > 0:
        argv += ["--vae-batch", str(cfg.pretrain_batch), "--dit-batch", str(cfg.pretrain_batch)]
    return argv


def _pretrain(cfg: LearnConfig, train_root: Path, assets: Path, n_clips: int, budget: float) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("pretrain_tiny_backbone", PRETRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.main(pretrain_argv(cfg, train_root, assets, n_clips, budget))


class AssetsError(ValueError):
    """``--reuse-assets`` names a folder that cannot stand in for this run's pretraining."""


def check_reusable_assets(cfg: LearnConfig, source: Path) -> dict[str, Any]:
    """The ``pretrain.json`` of an earlier run's ``assets/`` folder ``source``, if it can stand in
    for this run's pretraining (:func:`reuse_assets`); else :class:`AssetsError`.

    Why: the pretraining phase stops on time, so two runs with the same settings get different
    VAEs and backbones, and the geometry learnt on top of them differs by more than most levers
    do (docs/evaluation.md, "Ninth and tenth runs"). With the same assets, two runs that change
    one setting compare that setting. Refused (:class:`AssetsError`, naming the file) when the
    folder lacks ``vae/``, ``backbone/`` or ``pretrain.json``, when it was pretrained for another
    preset, frame count or size, or when its pretraining videos may include this run's held-out
    worlds: videos of a run with the same ``--seed`` are the same worlds, so that run's held-out
    fraction must be at least this one's (the split holds out the smallest clip hashes), and its
    ``learn.json`` must be there to say so.
    """
    record = source / "pretrain.json"
    for need in (source / "vae", source / "backbone", record):
        if not need.exists():
            raise AssetsError(f"--reuse-assets {source}: {need} is missing (pass the assets/ folder of a finished run)")
    pre = json.loads(record.read_text())
    args = pre.get("args", {})
    for key, want in (("preset", cfg.preset), ("frames", cfg.frames), ("size", cfg.size)):
        if args.get(key) != want:
            raise AssetsError(f"{record}: pretrained with {key} {args.get(key)!r}, this run has {want!r}")
    if args.get("data"):  # a run's training videos: which worlds were they?
        found = _learn_record_of(Path(args["data"]), source)
        if found is None:
            raise AssetsError(f"{record}: pretrained on {args['data']}, but no learn.json beside it says which "
                              "worlds were held out there, so this run's held-out worlds may have been seen")
        other = json.loads(found.read_text())["settings"]
        if other["seed"] == cfg.seed and other["held_out_fraction"] < cfg.held_out_fraction:
            raise AssetsError(f"{found}: held-out fraction {other['held_out_fraction']} with the same seed "
                              f"{cfg.seed}: its pretraining saw worlds that this run's {cfg.held_out_fraction} "
                              "holds out")
    elif pre.get("pretrain_seed") == cfg.seed:
        raise AssetsError(f"{record}: rendered its own worlds with seed {cfg.seed}, this run's seed")
    return pre


def _learn_record_of(data: Path, source: Path) -> Path | None:
    """The ``learn.json`` of the run whose training videos ``data`` pretrained ``source``: beside
    ``data``, else beside ``source`` (a run moved whole) unless that run reused its assets too
    (then its record says nothing about the videos)."""
    if (data.parent / "learn.json").is_file():
        return data.parent / "learn.json"
    beside = source.parent / "learn.json"
    if beside.is_file() and "assets_from" not in json.loads(beside.read_text()).get("phases", {}).get("pretrain", {}):
        return beside
    return None


def reuse_assets(cfg: LearnConfig, source: Path, assets: Path) -> dict[str, Any]:
    """Copy an earlier run's pretrained VAE and backbone (``source``: its ``assets/`` folder, as
    written by :func:`_pretrain`) into ``assets``; returns its ``pretrain.json``. The checks are
    :func:`check_reusable_assets`'s."""
    pre = check_reusable_assets(cfg, source)
    record = source / "pretrain.json"
    if assets.exists():
        shutil.rmtree(assets)
    assets.mkdir(parents=True)
    for name in ("vae", "backbone"):
        shutil.copytree(source / name, assets / name)
    shutil.copy2(record, assets / "pretrain.json")
    return pre


class DataError(ValueError):
    """``--reuse-data`` names a folder that cannot stand in for this run's first three phases."""


#: What must agree between a run and the run whose data it reuses (they fix the worlds, the split
#: and the shapes of the cache; the stages' and the evaluation's settings may differ).
DATA_SETTINGS = ("preset", "frames", "size", "seed", "held_out_fraction", "trajectory_frames")
#: What a reused run must hold: the folders the stages and the evaluation read.
DATA_PARTS = ("worlds", "data_train", "assets/vae", "assets/backbone", "assets/encoders/text_encoder",
              "assets/pretrain.json", "cache")


def check_reusable_data(cfg: LearnConfig, source: Path) -> dict[str, Any]:
    """The ``learn.json`` of the earlier run ``source`` (its ``--out``) if its worlds, assets and
    cache can stand in for this run's render, pretrain and cache phases; else :class:`DataError`.

    Why: with ``--reuse-assets`` a paired run still renders and caches (~80 s and ~35 s of one
    GPU call); reusing the data as well leaves the whole call to the stages and the evaluation,
    on the same worlds, held-out split, VAE, backbone and latents. Refused (naming the file) when
    a part is missing, when the earlier run had not finished its cache phase, or when one of
    :data:`DATA_SETTINGS` differs (another split, other worlds or other shapes).
    """
    record = source / "learn.json"
    if not record.is_file():
        raise DataError(f"--reuse-data {source}: {record} is missing (pass the --out folder of an earlier run)")
    earlier = json.loads(record.read_text())
    cache_row = earlier.get("phases", {}).get("cache", {})
    if "seconds" not in cache_row:
        raise DataError(f"{record}: that run did not finish its cache phase, so its cache may be partial")
    for part in DATA_PARTS:
        if not (source / part).exists():
            raise DataError(f"--reuse-data {source}: {source / part} is missing")
    settings = earlier.get("settings", {})
    for key in DATA_SETTINGS:
        if settings.get(key) != getattr(cfg, key):
            raise DataError(f"{record}: {key} {settings.get(key)!r}, this run has {getattr(cfg, key)!r}")
    return earlier


def link_data(source: Path, out: Path) -> None:
    """Symbolic links ``out/worlds``, ``out/data_train``, ``out/assets`` and ``out/cache`` to
    ``source``'s (nothing is copied; the stages and the evaluation only read them)."""
    for name in ("worlds", "data_train", "assets", "cache"):
        (out / name).symlink_to((source / name).resolve(), target_is_directory=True)


def start_more_worlds(cfg: LearnConfig, worlds: Path, seconds: float, log: Path) -> subprocess.Popen | None:
    """With ``render_during_pretrain``: ``fantasyworld data synth --append`` of the worlds still
    missing up to ``--worlds`` into ``worlds``, as a child process stopped by ``--max-seconds
    seconds`` on all but two of ``workers`` (the pretraining keeps its clips on the GPU, so the
    CPUs are free meanwhile but for the host thread that drives the pretraining; the
    worlds are the ones a longer render phase would have made: clip ``i`` depends only on
    ``(seed, i)``). Returns the process (output to ``log``), or ``None`` when there is nothing
    to do."""
    from fantasyworld.data.formats import load_metadata

    missing = cfg.worlds - len(load_metadata(worlds))
    if not cfg.render_during_pretrain or missing <= 0 or seconds <= 0:
        return None
    cmd = [sys.executable, "-m", "fantasyworld", "data", "synth", "--out", str(worlds), "--append", "--quiet",
           "--clips", str(missing), "--frames", str(cfg.frames), "--size", f"{cfg.size}x{cfg.size}",
           "--seed", str(cfg.seed), "--workers", str(max(1, cfg.workers - 2)), "--max-seconds", f"{seconds:.1f}"]
    if cfg.trajectory_frames:
        cmd += ["--trajectory-frames", str(cfg.trajectory_frames)]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def finish_more_worlds(proc: subprocess.Popen | None, log: Path, grace_s: float = 60.0) -> None:
    """Wait for :func:`start_more_worlds`'s render (it stops itself on time; after ``grace_s`` more
    it is terminated) and raise ``RuntimeError`` with its log's tail when it failed."""
    if proc is None:
        return
    try:
        rc = proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise RuntimeError(f"the render during pretraining failed (exit {rc}); {log}:\n{tail}")


def split_worlds(worlds: Path, train_root: Path, fraction: float) -> tuple[list[str], list[str], list[str]]:
    """``(ids, train_ids, held_ids)`` of the worlds in ``worlds`` (the per-clip hash split of
    :mod:`fantasyworld.data.split`), with ``train_root`` (re)made to hold the training ones."""
    from fantasyworld.data.formats import load_metadata
    from fantasyworld.data.split import split_clip_ids
    from fantasyworld.demo import make_train_root

    ids = [r.clip_id for r in load_metadata(worlds)]
    train_ids, held_ids = split_clip_ids(ids, fraction)
    shutil.rmtree(train_root, ignore_errors=True)
    make_train_root(worlds, train_root, train_ids)
    return ids, train_ids, held_ids


def make_data(cfg: LearnConfig, out: Path, phases: Phases) -> tuple[list[str], list[str], list[str], dict, dict]:
    """The render, pretrain and cache phases (module docstring) into ``out``; returns ``(ids,
    train_ids, held_ids, pretrain record, tiny encoders' paths)``."""
    from fantasyworld.data.cache import build_cache
    from fantasyworld.data.synth import synthesize_dataset
    from fantasyworld.models.encoders import save_tiny_encoders

    phases.start("render")
    started = time.perf_counter()
    worlds, train_root = out / "worlds", out / "data_train"
    synthesize_dataset(worlds, num_clips=cfg.worlds, num_frames=cfg.frames, height=cfg.size, width=cfg.size,
                       seed=cfg.seed, workers=cfg.workers, time_limit_s=cfg.budget.render,
                       trajectory_frames=cfg.trajectory_frames or None)
    ids, train_ids, held_ids = split_worlds(worlds, train_root, cfg.held_out_fraction)
    phases.end("render", worlds=len(ids), train=len(train_ids), held_out=len(held_ids),
               worlds_per_s=round(len(ids) / (time.perf_counter() - started), 1))

    phases.start("pretrain")
    assets = out / "assets"
    render_log = out / "render_during_pretrain.log"
    more = start_more_worlds(cfg, worlds, 0.9 * cfg.budget.pretrain, render_log)
    try:
        if cfg.reuse_assets:  # the phase renders only (same budget, so as many worlds as a pretraining run)
            pre = reuse_assets(cfg, Path(cfg.reuse_assets), assets)
        else:
            pre = _pretrain(cfg, train_root, assets, min(cfg.pretrain_clips, len(train_ids)), cfg.budget.pretrain)
        encoders = save_tiny_encoders(assets / "encoders")
        finish_more_worlds(more, render_log, grace_s=60.0 + (cfg.budget.pretrain if cfg.reuse_assets else 0.0))
    finally:  # an error or Ctrl-C stops the render too (timeout and the terminal signal the whole group)
        if more is not None and more.poll() is None:
            more.terminate()
            more.wait()
    extra: dict[str, Any] = {}
    if more is not None:  # the training root again, over every world (the split is per clip: none moves)
        rendered = len(ids)
        ids, train_ids, held_ids = split_worlds(worlds, train_root, cfg.held_out_fraction)
        extra = {"worlds_added": len(ids) - rendered, "worlds": len(ids), "train": len(train_ids),
                 "held_out": len(held_ids)}
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    if cfg.reuse_assets:
        extra["assets_from"] = str(Path(cfg.reuse_assets).resolve())
    phases.end("pretrain", vae_steps=pre["vae"]["steps"], vae_psnr_db=round(pre["vae"]["reconstruction_psnr_db"], 2),
               backbone_steps=pre["backbone"]["steps"], backbone_flow_loss=round(pre["backbone"]["final_flow_loss"], 4),
               **extra)

    phases.start("cache")
    cache = build_cache(train_root, out / "cache", assets / "vae", encoders["text_encoder"], num_frames=cfg.frames,
                        height=cfg.size, width=cfg.size, device=cfg.device, geometry_dtype="float16",
                        workers=min(cfg.workers, 12) if cfg.workers > 1 else 0, batch_size=32, overwrite=True)
    size_gb = sum(p.stat().st_size for p in cache.glob("*.safetensors")) / 1e9
    phases.end("cache", clips=len(train_ids), gigabytes=round(size_gb, 2))
    return ids, train_ids, held_ids, pre, encoders


def reused_data(cfg: LearnConfig, source: Path, out: Path, phases: Phases
                ) -> tuple[list[str], list[str], list[str], dict, dict]:
    """``--reuse-data``: the first three phases are ``source``'s (:func:`check_reusable_data`),
    linked into ``out`` (:func:`link_data`); their rows in ``learn.json`` are the earlier run's,
    with ``reused_from``. Returns what :func:`make_data` does."""
    from fantasyworld.data.formats import load_metadata
    from fantasyworld.data.split import split_clip_ids

    earlier = check_reusable_data(cfg, source)
    link_data(source, out)
    for name in ("render", "pretrain", "cache"):
        phases.rows[name] = {**earlier["phases"][name], "reused_from": str(source.resolve())}
    say(f"render, pretrain, cache: reused from {source}")
    ids = [r.clip_id for r in load_metadata(out / "worlds")]
    train_ids, held_ids = split_clip_ids(ids, cfg.held_out_fraction)
    pre = json.loads((out / "assets" / "pretrain.json").read_text())
    return ids, train_ids, held_ids, pre, {"text_encoder": out / "assets" / "encoders" / "text_encoder"}


def run(cfg: LearnConfig, out: Path) -> dict[str, Any]:
    """All phases (module docstring); returns ``learn.json``."""
    from fantasyworld.eval.evaluate import EvalSettings, evaluate
    from fantasyworld.inference.pipeline import FantasyWorldPipeline
    from fantasyworld.training.device_cache import release_device_cache

    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"
    phases = Phases(cfg.budget, out / "learn.json",
                    {"settings": _settings(cfg), "device": device, "torch": torch.__version__})
    say(f"{device}, torch {torch.__version__}, preset {cfg.preset}, {cfg.frames} frames at {cfg.size}x{cfg.size}")
    if importlib.util.find_spec("scipy") is None and not torch.cuda.is_available():
        # the Chamfer's nearest neighbours: scipy's k-d tree, else exact brute force (on the GPU if any)
        say("warning: neither scipy nor a GPU: the evaluation's point metrics fall back to brute force on the "
            "CPU and the eval phase will overrun its budget (pip install scipy)")

    if cfg.reuse_data:
        ids, train_ids, held_ids, pre, encoders = reused_data(cfg, Path(cfg.reuse_data), out, phases)
    else:
        ids, train_ids, held_ids, pre, encoders = make_data(cfg, out, phases)
    worlds, assets = out / "worlds", out / "assets"

    result1 = run_stage(cfg, 1, out, phases, None)
    result2 = run_stage(cfg, 2, out, phases, result1.last_checkpoint)
    release_device_cache()
    if cfg.device == "cuda":
        torch.cuda.empty_cache()

    phases.start("eval")
    settings = EvalSettings(split="held-out", held_out_fraction=cfg.held_out_fraction, max_clips=cfg.eval_clips,
                            num_frames=cfg.frames, height=cfg.size, width=cfg.size, sigma=cfg.eval_sigma,
                            modes=("latents",), seed=cfg.seed)
    kw = {"backbone": str(assets / "backbone"), "vae": str(assets / "vae"),
          "text_encoder": str(encoders["text_encoder"]), "device": cfg.device}
    evals = {}
    pipe = None
    baselines: dict = {}  # the same held-out clips for both stages: their baselines are scored once
    for stage, result in ((1, result1), (2, result2)):
        pipe = FantasyWorldPipeline.from_pretrained(result.last_checkpoint, **kw)
        metrics = evaluate(result.last_checkpoint, worlds, out / f"eval_stage{stage}", settings, pipe=pipe,
                           log=lambda m, s=stage: say(f"eval stage {s}: {m.strip()}"), baseline_scores=baselines)
        evals[stage] = metrics["summary"]["latents"]
    if cfg.geometry_train_clips > 0:  # held-out far below training: too few worlds; both alike: too few steps
        train_settings = replace(settings, split="train", max_clips=cfg.geometry_train_clips)
        scored = evaluate(result2.last_checkpoint, worlds, out / "eval_stage2_train", train_settings, pipe=pipe,
                          log=lambda m: say(f"eval stage 2, training clips: {m.strip()}"))
        evals["train"] = scored["summary"]["latents"]
    diffusion = learn_report.diffusion_losses(pipe, assets / "backbone", worlds, held_ids[:cfg.diffusion_clips],
                                              cfg.diffusion_sigmas, cfg.seed, cfg.frames, cfg.size)
    if cfg.diffusion_train_clips > 0:  # over-fitting (training clips better) or under-training (both alike)
        diffusion["training_clips"] = learn_report.diffusion_losses(
            pipe, assets / "backbone", worlds, train_ids[:cfg.diffusion_train_clips], cfg.diffusion_sigmas,
            cfg.seed, cfg.frames, cfg.size)
    phases.end("eval", clips=evals[2]["num_clips"])

    verdict = learn_report.acceptance(evals[1], evals[2], diffusion)
    summary = {**phases.header, "finished": True, "phases": phases.rows,
               "total_seconds": time.perf_counter() - phases.t0,
               "pretrain": {k: pre[k] for k in ("vae", "backbone", "prompt_dependence") if k in pre},
               "held_out_clips": held_ids[:cfg.eval_clips], "acceptance": verdict}
    learn_report.plot_curves(out, {"stage 1": result1.history, "stage 2": result2.history})
    learn_report.write_tables(out, evals[1], evals[2], verdict, diffusion, summary, train_stage2=evals.get("train"))
    (out / "learn.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    over = [n for n, r in phases.rows.items() if r["over_budget"]]
    say(f"total {summary['total_seconds']:.0f} s" + (f"; over budget: {', '.join(over)}" if over else ""))
    for line in verdict["lines"]:
        print(line, flush=True)
    return summary


def _settings(cfg: LearnConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["budget"] = asdict(cfg.budget)
    return d


def parse_args(argv: list[str] | None = None) -> tuple[LearnConfig, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="learn_out")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, seconds (tests)")
    p.add_argument("--budget", dest="budget_text", default="",
                   help=f"seconds per phase, e.g. stage1=200,eval=60 ({', '.join(PHASES)})")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier --out first")
    p.add_argument("--pretrain-steps", dest="pretrain_steps_text", default="", metavar="VAE,BACKBONE",
                   help="step caps of the two pretraining passes, e.g. 400,500: below what the budget fits, "
                        "the pretraining runs a fixed schedule instead of stopping on time")
    base = LearnConfig()
    for f in fields(LearnConfig):
        if f.name in ("budget", "pretrain_steps", "diffusion_sigmas"):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(getattr(base, f.name), bool):  # --name and --no-name, whichever the default
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, type=type(getattr(base, f.name)), default=None)
    args = p.parse_args(argv)
    cfg = LearnConfig.smoke() if args.smoke else LearnConfig()
    for f in fields(LearnConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    cfg.budget = Budget.parse(args.budget_text, cfg.budget)
    if args.pretrain_steps_text:
        try:
            vae, backbone = (int(v) for v in args.pretrain_steps_text.split(","))
        except ValueError:
            p.error(f"--pretrain-steps {args.pretrain_steps_text!r}: two step counts VAE,BACKBONE, e.g. 400,500")
        if vae < 1 or backbone < 1:
            p.error(f"--pretrain-steps {args.pretrain_steps_text!r}: both step counts must be at least 1")
        cfg.pretrain_steps = (vae, backbone)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: pass --device cpu (slow) or --smoke")
    if not 0.0 < cfg.vae_share < PRETRAIN_SHARE:
        p.error(f"--vae-share {cfg.vae_share}: between 0 and {PRETRAIN_SHARE} (the two passes' share of the "
                "pretrain budget; the backbone gets the rest of it)")
    if cfg.reuse_assets and cfg.reuse_data:
        p.error("--reuse-assets and --reuse-data: pass one (--reuse-data reuses the assets too)")
    if cfg.reuse_assets:
        try:
            check_reusable_assets(cfg, Path(cfg.reuse_assets))
        except (AssetsError, OSError, KeyError, json.JSONDecodeError) as err:
            p.error(f"cannot reuse the assets: {err}")
    if cfg.reuse_data:
        try:
            check_reusable_data(cfg, Path(cfg.reuse_data))
        except (DataError, OSError, json.JSONDecodeError) as err:
            p.error(f"cannot reuse the data: {err}")
        if Path(args.out).resolve() == Path(cfg.reuse_data).resolve():
            p.error(f"--out {args.out} is the run --reuse-data names: choose another folder")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            p.error(f"--out {out} is not empty: pass --overwrite or choose another folder")
        shutil.rmtree(out)
    return cfg, out


def main(argv: list[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    if cfg.device == "cpu":
        torch.set_num_threads(1)  # the small ops of these models: one thread (docs/benchmarks.md)
    summary = run(cfg, out)
    return 0 if summary["acceptance"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
