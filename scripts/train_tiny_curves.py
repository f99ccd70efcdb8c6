#!/usr/bin/env python3
"""Train the tiny preset on a synthetic set for a few minutes and write the loss curves.

Runs the whole two-stage recipe on CPU with the shipped tiny configs
(``configs/stage1_tiny.yaml``, ``configs/stage2_tiny.yaml``):

1. ``synthesize_dataset``: ``--clips`` procedural clips (exact depth, points, cameras);
2. stage 1 for ``--steps1`` steps (geometry branch on a frozen, seeded random tiny Wan);
3. stage 2 for ``--steps2`` steps from the last stage-1 checkpoint.

Writes ``OUT/stage{1,2}/metrics.jsonl`` (every step), ``OUT/curves.json`` (window means of
each loss term every ``--window`` steps, wall time, machine) and prints a Markdown table
(the one in docs/benchmarks.md). Example (a few minutes on one CPU core)::

    python scripts/train_tiny_curves.py --out outputs/tiny_curves
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.training.config import load_config
from fantasyworld.training.logging import read_metrics
from fantasyworld.training.trainer import Trainer, loss_keys

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TERMS = ("objective", "loss_depth", "loss_pmap", "loss_camera", "loss_diff")


def _windows(rows: list[dict], window: int, keys: tuple[str, ...]) -> list[dict]:
    """Means of ``keys`` over consecutive windows of ``window`` steps (skipped steps ignored)."""
    out = []
    for start in range(0, len(rows), window):
        chunk = [r for r in rows[start:start + window] if not r.get("skipped")]
        if not chunk:
            continue
        entry = {"steps": f"{chunk[0]['step']}-{chunk[-1]['step']}"}
        for key in keys:
            vals = [r[key] for r in chunk if r.get(key) is not None]
            entry[key] = sum(vals) / len(vals) if vals else None
        entry["step_time_s"] = sum(r["step_time_s"] for r in chunk) / len(chunk)
        out.append(entry)
    return out


def _table(stage: int, windows: list[dict]) -> str:
    keys = [k for k in TERMS if k in loss_keys(stage)]
    head = "| steps | " + " | ".join(keys) + " | s/step |"
    sep = "|---" * (len(keys) + 2) + "|"
    lines = [head, sep]
    for w in windows:
        lines.append(f"| {w['steps']} | " + " | ".join(f"{w[k]:.4f}" for k in keys) + f" | {w['step_time_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/tiny_curves")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", default="32x48", help="HxW, multiples of 16")
    p.add_argument("--steps1", type=int, default=400)
    p.add_argument("--steps2", type=int, default=150)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the tiny model's ops are so small that OpenMP synchronisation "
                        "dominates with more, badly so on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    for sub in ("stage1", "stage2"):
        shutil.rmtree(out / sub, ignore_errors=True)
    data = out / "data"
    t0 = time.perf_counter()
    if not (data / "metadata.json").exists():
        synthesize_dataset(data, num_clips=args.clips, num_frames=args.frames, height=h, width=w, seed=args.seed)
    synth_s = time.perf_counter() - t0
    common = [f"data.root={data}", f"data.num_frames={args.frames}", f"data.height={h}", f"data.width={w}",
              f"seed={args.seed}", "log.progress=false"]

    t1 = time.perf_counter()
    cfg1 = load_config(CONFIGS / "stage1_tiny.yaml", [f"output_dir={out / 'stage1'}", f"steps={args.steps1}", *common])
    Trainer(cfg1).train()
    stage1_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    cfg2 = load_config(CONFIGS / "stage2_tiny.yaml", [
        f"output_dir={out / 'stage2'}", f"steps={args.steps2}",
        f"init_from={out / 'stage1' / f'step-{args.steps1}.safetensors'}", *common])
    Trainer(cfg2).train()
    stage2_s = time.perf_counter() - t2

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "data": f"{args.clips} synthetic clips, {args.frames} frames, {h}x{w}",
        "wall_s": {"synth": round(synth_s, 1), "stage1": round(stage1_s, 1), "stage2": round(stage2_s, 1)},
        "stage1": _windows(read_metrics(out / "stage1"), args.window, loss_keys(1)),
        "stage2": _windows(read_metrics(out / "stage2"), args.window, loss_keys(2)),
    }
    (out / "curves.json").write_text(json.dumps(result, indent=1))
    print(f"{result['date']}, {result['machine']}; {result['data']}; wall {result['wall_s']}")
    print("\nStage 1\n" + _table(1, result["stage1"]))
    print("\nStage 2\n" + _table(2, result["stage2"]))


if __name__ == "__main__":
    main()
