"""How much better than constant depth can a model whose depth comes from 16-pixel tokens be?

The geometry branch reads one token per 16x16 pixels of each latent frame, and its DPT head
must produce pixel depth from them. The token-resolution oracle
(:func:`fantasyworld.eval.baselines.token_depth`: the ground truth averaged over each token
cell, bilinearly upsampled) is what a per-token perfect depth gives; its ratio against
constant depth, on the evaluation's median-aligned AbsRel, is the ceiling of the depth bar's
ratio for a model that does not resolve detail inside a token. This renders synthetic worlds
at each size (the demo's seed and trajectory mix) and prints that ceiling::

    python benchmarks/depth_ceiling.py --sizes 32,48,64,96,128 --frames 9 --clips 80
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fantasyworld.data.synth import render_clip  # noqa: E402
from fantasyworld.eval.baselines import constant_depth, token_depth  # noqa: E402
from fantasyworld.eval.metrics import depth_metrics  # noqa: E402


def ceiling(size: int, frames: int, clips: int, seed: int = 0) -> dict[str, float]:
    """Mean AbsRel (median-aligned) of constant depth and of the oracle over ``clips`` worlds."""
    const, oracle = [], []
    for i in range(clips):
        depth = render_clip(seed, i, frames, size, size).depth.astype(np.float64)
        valid = depth > 0
        const.append(depth_metrics(constant_depth(depth.shape), depth, valid)["abs_rel_median"])
        oracle.append(depth_metrics(token_depth(depth, valid), depth, valid)["abs_rel_median"])
    c, o = float(np.mean(const)), float(np.mean(oracle))
    return {"size": size, "tokens_per_frame": (size // 16) ** 2, "constant_abs_rel": c, "oracle_abs_rel": o,
            "ceiling": c / o}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32,48,64,96,128")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--clips", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rows = [ceiling(int(s), a.frames, a.clips, a.seed) for s in a.sizes.split(",")]
    for r in rows:
        print(f"{r['size']:4d}x{r['size']:<4d} {r['tokens_per_frame']:3d} tokens/frame: "
              f"constant {r['constant_abs_rel']:.4f}  oracle {r['oracle_abs_rel']:.4f}  "
              f"ceiling {r['ceiling']:.2f}x", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
