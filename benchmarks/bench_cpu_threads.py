"""The demo's stage-1 step time on the CPU for each torch thread count, alone and beside a
competing CPU-bound process (docs/benchmarks.md, "Demo threads under load").

Each (threads, competitor) cell runs in a fresh process: the demo's stage-1 training config
(pretrained tiny backbone, 32x32, 9 frames, batch 4) on a few rendered worlds, ``--steps``
optimizer steps; the cell's figure is the median ``step_time_s`` after the first
``--warmup`` steps. The competitor is a pure-Python busy loop (one core, no torch).

    python3 benchmarks/bench_cpu_threads.py --threads 1,2 --steps 10 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _one_cell(threads: int, steps: int, workdir: Path) -> list[float]:
    """Run ``steps`` demo stage-1 steps on ``threads`` torch threads in this process."""
    import torch

    torch.set_num_threads(threads)
    from fantasyworld.data.formats import load_metadata
    from fantasyworld.data.synth import synthesize_dataset
    from fantasyworld.demo import DemoConfig, _train_config, cache_training_worlds, make_train_root
    from fantasyworld.training.trainer import Trainer

    cfg = DemoConfig(num_clips=8, stage1_steps=steps, stage1_seconds=None, progress=False)
    worlds = synthesize_dataset(workdir / "worlds", num_clips=cfg.num_clips, num_frames=cfg.num_frames,
                                height=cfg.size, width=cfg.size, seed=0, workers=1)
    make_train_root(worlds, workdir / "train", [r.clip_id for r in load_metadata(worlds)])
    cache = cache_training_worlds(workdir / "train", workdir / "cache", cfg)
    result = Trainer(_train_config(cfg, 1, cache, workdir / "run", None)).train()
    return [row["step_time_s"] for row in result.history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    p.add_argument("--out", default=None, help="write the cells as JSON")
    p.add_argument("--cell", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one cell
    args = p.parse_args()
    if args.cell is not None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_one_cell(args.cell, args.steps, Path(tmp))))
        return
    cells = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for competitor in (False, True):
        for threads in (int(t) for t in args.threads.split(",")):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competitor else None
            try:
                out = subprocess.run([sys.executable, __file__, "--cell", str(threads), "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True, check=True).stdout
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            times = json.loads(out.strip().splitlines()[-1])[args.warmup:]
            cell = {"threads": threads, "competitor": competitor, "median_s_per_step": statistics.median(times),
                    "min_s": min(times), "max_s": max(times), "load_average": os.getloadavg()[0]}
            cells.append(cell)
            print(json.dumps(cell), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(cells, indent=1) + "\n")


if __name__ == "__main__":
    main()
