"""Does a CUDA-graphed training step (``model.cuda_graphs``) compute what the eager step computes?

Two trainers from the same seed, data and config, one eager and one graphed, take the same
``--steps`` steps (the graphed one: three eager warm-up steps, then capture and replays) with
deterministic kernels (``torch.use_deterministic_algorithms``, no cuDNN autotuning), so any
difference is the graph's. Prints, per step, both objectives and gradient norms, and at the end
the largest difference of every trainable parameter; writes ``OUT/check_graphed_step.json``.

    python benchmarks/check_graphed_step.py --out /tmp/graph_check            # tiny preset, stage 1
    python benchmarks/check_graphed_step.py --out /tmp/graph_check --stage 2 --preset small --size 128 \\
        --frames 17 --batch 8 --backbone random
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_small_steps as bench  # noqa: E402

from fantasyworld.training.trainer import Trainer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="graph_check_out")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--backbone", default=str(bench.ASSETS / "backbone"))
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--stage", type=int, default=1)
    return p.parse_args(argv)


def _bench_args(args: argparse.Namespace, work: Path, graphs: bool) -> argparse.Namespace:
    """``bench_small_steps``'s arguments for these settings (one log row per step)."""
    return bench.parse_args(["--out", str(work), "--device", "cuda", "--preset", args.preset, "--backbone",
                             args.backbone, "--frames", str(args.frames), "--size", str(args.size), "--batch",
                             str(args.batch), "--clips", str(args.clips), "--warmup", "0", "--steps",
                             str(args.steps), "--log-every", "1"] + (["--cuda-graphs"] if graphs else []))


def run(args: argparse.Namespace, work: Path, graphs: bool, init: Path | None) -> dict[str, Any]:
    ns = _bench_args(args, work, graphs)
    cfg = bench._config(ns, work, args.stage, "cache_on_device", init)
    cfg.output_dir = str(work / "runs" / f"stage{args.stage}_{'graphs' if graphs else 'eager'}")
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    trainer = Trainer(cfg)
    data = iter(trainer.loader)
    rows = []
    for _ in range(args.steps):
        means, norm, skipped = trainer.step_on_device(data)
        rows.append({"objective": float(means[0]), "grad_norm": float(norm), "skipped": bool(skipped)})
    params = {n: p.detach().float().cpu().clone() for n, p in trainer.trainable}
    captures = trainer.graphed.captures if trainer.graphed is not None else 0
    ckpt = trainer.save(args.steps) if args.stage == 1 else None
    del trainer
    torch.cuda.empty_cache()
    return {"rows": rows, "params": params, "captures": captures, "checkpoint": ckpt}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    work = Path(args.out)
    bench.prepare_data(_bench_args(args, work, False), work)  # the worlds and their latent cache
    init = None
    if args.stage == 2:
        init = run(argparse.Namespace(**{**vars(args), "stage": 1, "steps": 3}), work, False, None)["checkpoint"]
    eager = run(args, work, False, init)
    graphed = run(args, work, True, init)
    steps = []
    for i, (a, b) in enumerate(zip(eager["rows"], graphed["rows"], strict=True)):
        steps.append({"step": i + 1, "eager_objective": a["objective"], "graphed_objective": b["objective"],
                      "eager_grad_norm": a["grad_norm"], "graphed_grad_norm": b["grad_norm"]})
        print(f"step {i + 1:3d}  objective {a['objective']:.6f} / {b['objective']:.6f}  "
              f"grad norm {a['grad_norm']:.6f} / {b['grad_norm']:.6f}", flush=True)
    param_diff = max(float((eager["params"][n] - graphed["params"][n]).abs().max()) for n in eager["params"])
    param_scale = max(float(p.abs().max()) for p in eager["params"].values())
    report = {"preset": args.preset, "stage": args.stage, "steps": args.steps, "captures": graphed["captures"],
              "max_objective_diff": max(abs(s["eager_objective"] - s["graphed_objective"]) for s in steps),
              "max_param_diff": param_diff, "param_scale": param_scale, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(), "per_step": steps}
    print(json.dumps({k: v for k, v in report.items() if k != "per_step"}), flush=True)
    (work / "check_graphed_step.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
