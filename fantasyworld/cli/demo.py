"""``fantasyworld demo [--out DIR] [--smoke]``: synthesise worlds, train stage 1 and 2 on
the tiny preset, generate along an unseen camera path and evaluate on held-out worlds, all
on the CPU into one folder (see :mod:`fantasyworld.demo`). Open ``DIR/report.html`` first.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="the whole method on a CPU in minutes: train, generate, evaluate (one folder)")
    p.add_argument("--out", default="demo_output", help="output folder (replaced if it holds an earlier demo)")
    p.add_argument("--smoke", action="store_true", help="seconds-long configuration that writes every file (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 whatever the scores (the report says whether the bars are met)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from fantasyworld.demo import DemoConfig, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run_demo(args.out, DemoConfig.smoke() if args.smoke else DemoConfig())
    except (FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
