"""Training steps per second of a small preset with the project's trainer: latent cache vs raw video.

One command renders synthetic worlds, caches them (``fantasyworld data cache`` with the
pretrained tiny VAE of ``fantasyworld/assets/tiny``, or ``--vae``), and times the trainer
(:class:`~fantasyworld.training.trainer.Trainer`, stage 1 and stage 2) on

* ``cache_on_device``: the cache held on the training device (``data.cache_on_device``);
* ``cache_loader``: the cache read per step by the DataLoader (``--workers`` processes);
* ``raw_video``: the raw clips, decoded and VAE/UMT5-encoded every step (for contrast).

Steps per second are measured over the steps after ``--warmup`` (cuDNN autotuning, the
allocator and, with ``--compile``, compilation happen before), from the trainer's own log
rows (``log.every`` steps each, timed once the device has finished them). Prints one line per
run and writes ``OUT/bench_small_steps.json``. Defaults: the demo's shapes (``tiny``, 9
frames at 32x32, batch 4).

    python benchmarks/bench_small_steps.py --device cuda                  # tiny preset on one GPU
    python benchmarks/bench_small_steps.py --device cpu --threads 1        # the demo's CPU step
    python benchmarks/bench_small_steps.py --device cuda --preset small --frames 17 --size 128 --batch 32 \\
        --vae OUT/assets/vae --backbone OUT/assets/backbone              # learn_gpu.py's shapes

``--profile N`` then profiles N stage-1 steps from the cache on the device
(``torch.profiler``): the operators by device time in ``OUT/profile.txt`` and, in the report,
the wall and device-busy seconds per step, the profiler events per step (host-bound
when the device is busy for a small share of the wall time) and, on a GPU, the operations of
one step that make the host wait for the device (``host_syncs_per_step``).
``--cuda-graphs`` replays each step as one CUDA graph (``model.cuda_graphs``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fantasyworld.data.cache import build_cache
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.demo import ASSETS
from fantasyworld.models.encoders import save_tiny_encoders
from fantasyworld.training.config import config_from_dict
from fantasyworld.training.signals import exit_on_signal
from fantasyworld.training.trainer import Trainer

VARIANTS = ("cache_on_device", "cache_loader", "raw_video")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_small_steps_out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--backbone", default=str(ASSETS / "backbone"), help="Wan backbone directory ('random': seeded)")
    p.add_argument("--vae", default=str(ASSETS / "vae"), help="VAE directory for the cache and the raw runs")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=50, help="steps before timing (a multiple of --log-every)")
    p.add_argument("--steps", type=int, default=300, help="timed steps (a multiple of --log-every)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes of cache_loader and raw_video")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--compile", action="store_true", help="model.compile (torch.compile of every layer)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="model.cuda_graphs (each step replayed as one CUDA graph after 3 eager steps)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--profile", type=int, default=0,
                   help="then profile this many stage-1 steps from the cache on the device (OUT/profile.txt)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run on tiny sizes (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.clips, args.frames, args.size, args.batch = 3, 5, 32, 1
        args.warmup, args.steps, args.log_every, args.workers = 1, 2, 1, 0
    if args.warmup % args.log_every or args.steps % args.log_every:
        p.error("--warmup and --steps must be multiples of --log-every")
    return args


def _config(args: argparse.Namespace, work: Path, stage: int, variant: str, init: Path | None) -> Any:
    data: dict[str, Any] = {"num_frames": args.frames, "height": args.size, "width": args.size}
    if variant == "raw_video":
        data.update(root=str(work / "worlds"), vae=args.vae, text_encoder=str(work / "encoders" / "text_encoder"),
                    random_crop=False, num_workers=args.workers, validate=False)
    else:
        data.update(cache_dir=str(work / "cache"), cache_on_device=variant == "cache_on_device",
                    num_workers=0 if variant == "cache_on_device" else args.workers)
    total = args.warmup + args.steps
    cfg = {"stage": stage, "output_dir": str(work / "runs" / f"{variant}_stage{stage}"), "steps": total,
           "batch_size": args.batch, "seed": 0, "device": args.device, "mixed_precision": "auto",
           "model": {"preset": args.preset, "backbone_dir": args.backbone, "compile": args.compile,
                     "cuda_graphs": args.cuda_graphs},
           "data": data, "optim": {"lr": 1e-4, "warmup_steps": 10},
           "checkpoint": {"every": total, "keep_last": 1},
           "log": {"every": args.log_every, "tensorboard": False, "progress": False}}
    if init is not None:
        cfg["init_from"] = str(init)
    return config_from_dict(cfg)


def timed_run(args: argparse.Namespace, work: Path, stage: int, variant: str, init: Path | None
              ) -> tuple[dict[str, Any], Path | None]:
    """Train ``warmup + steps`` steps; ``(result row, last checkpoint)``."""
    cfg = _config(args, work, stage, variant, init)
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    build_s = time.perf_counter() - start
    result = trainer.train()
    exit_on_signal(result.stopped, f"stage {stage} {variant}")  # a signal ends the benchmark, not one run
    rows = [r for r in result.history if r["step"] > args.warmup]
    steps = sum(r["steps"] for r in rows)
    seconds = sum(r["steps"] * r["step_time_s"] for r in rows)
    row = {"stage": stage, "variant": variant, "steps_per_s": steps / seconds, "samples_per_s": steps * args.batch /
           seconds, "timed_steps": int(steps), "build_s": build_s, "final_objective": rows[-1]["objective"],
           "graphs_captured": trainer.graphed.captures if trainer.graphed is not None else 0}
    if torch.cuda.is_available() and trainer.world.device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del trainer
    return row, result.last_checkpoint


def profile_steps(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Where a stage-1 step's time goes: ``--profile`` steps (after ``--warmup``) under
    ``torch.profiler``; the operators by their own device time in ``OUT/profile.txt``, the
    device-busy share of the wall time (low: launch- or host-bound) in the returned row."""
    from torch.profiler import ProfilerActivity, profile

    steps = args.profile
    cfg = _config(argparse.Namespace(**{**vars(args), "warmup": args.warmup, "steps": steps}), work, 1,
                  "cache_on_device", None)
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    trainer = Trainer(cfg)
    cuda = trainer.world.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    data_iter = iter(trainer.loader)
    for _ in range(args.warmup):
        trainer.step_on_device(data_iter)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step_on_device(data_iter)
        sync()
        wall = time.perf_counter() - start
    syncs = count_host_syncs(trainer, data_iter) if cuda else None
    events = prof.key_averages()
    device_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy_us = sum(e.self_device_time_total for e in events) if cuda else float("nan")
    table = events.table(sort_by=device_key, row_limit=40, max_name_column_width=90)
    (work / "profile.txt").write_text(table + "\n")
    print(table, flush=True)
    row = {"steps": steps, "wall_s_per_step": wall / steps, "device_busy_s_per_step": busy_us / 1e6 / steps,
           "ops_per_step": sum(e.count for e in events if e.device_type.name == "CPU") / steps,
           "host_syncs_per_step": syncs}
    print(json.dumps(row), flush=True)
    return row


def count_host_syncs(trainer: Trainer, data_iter: Any) -> int:
    """Operations of one step that make the host wait for the device (CUDA's sync debug mode:
    blocking copies, reads of device values); each one empties the queue the host keeps ahead."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.step_on_device(data_iter)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def prepare_data(args: argparse.Namespace, work: Path) -> None:
    """The worlds (``WORK/worlds``), the tiny encoders and the latent cache (``WORK/cache``) the
    runs train on; each is made only if it is not there yet."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "worlds" / "metadata.json").is_file():
        synthesize_dataset(work / "worlds", num_clips=args.clips, num_frames=args.frames, height=args.size,
                           width=args.size, seed=11, workers=None if args.clips > 8 else 1)
    encoders = save_tiny_encoders(work / "encoders")
    if not (work / "cache" / "index.json").is_file():
        build_cache(work / "worlds", work / "cache", args.vae, encoders["text_encoder"], num_frames=args.frames,
                    height=args.size, width=args.size, device=args.device, geometry_dtype="float16",
                    batch_size=16, workers=0 if args.smoke else min(4, os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: convolutions autotuned in the warm-up
    work = Path(args.out)
    prepare_data(args, work)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    header = {"preset": args.preset, "frames": args.frames, "size": args.size, "batch": args.batch,
              "device": device, "torch": torch.__version__, "compile": args.compile, "cuda_graphs": args.cuda_graphs,
              "log_every": args.log_every}
    print(json.dumps(header), flush=True)
    rows = []
    init = None
    for stage in (int(s) for s in args.stages.split(",")):
        if stage == 2 and init is None:  # stage 2 starts from a stage-1 checkpoint
            _, init = timed_run(argparse.Namespace(**{**vars(args), "warmup": 0, "steps": args.log_every}),
                                work, 1, "cache_on_device", None)
        for variant in args.variants.split(","):
            row, last = timed_run(args, work, stage, variant, init if stage == 2 else None)
            if stage == 1 and init is None:
                init = last
            rows.append(row)
            print(f"stage {stage} {variant:16s} {row['steps_per_s']:8.2f} steps/s  {row['samples_per_s']:8.1f} "
                  f"samples/s  (objective {row['final_objective']:.4f})", flush=True)
    report = {**header, "runs": rows}
    if args.profile:
        report["profile"] = profile_steps(args, work)
    (work / "bench_small_steps.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
