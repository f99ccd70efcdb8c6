"""``fantasyworld demo [--out DIR] [--smoke]``: synthesise worlds, train stage 1 and 2 on
the tiny preset, generate along an unseen camera path and evaluate on held-out worlds, all
on the CPU into one folder (see :mod:`fantasyworld.demo`). Open ``DIR/report.html`` first.
"""

from __future__ import annotations

import argparse
import os
import sys

#: torch threads of the demo (measured in docs/benchmarks.md, "Demo threads under load")
DEFAULT_THREADS = 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="the whole method on a CPU in minutes: train, generate, evaluate (one folder)")
    p.add_argument("--out", default="demo_output", help="output folder (refused if it holds files, unless "
                                                        "--overwrite or --resume)")
    p.add_argument("--smoke", action="store_true", help="seconds-long configuration that writes every file (tests)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier demo in --out first")
    p.add_argument("--resume", action="store_true",
                   help="continue a demo stopped by SIGTERM / Ctrl-C in --out (same settings)")
    p.add_argument("--stage1-steps", type=int, default=None, help="optimizer steps of stage 1 (default: the config's)")
    p.add_argument("--stage2-steps", type=int, default=None, help="optimizer steps of stage 2 (default: the config's)")
    p.add_argument("--stage-seconds", default=None, metavar="S1,S2",
                   help="wall-clock budgets of the two stages' steps; where the steps do not fit, a stage plans as "
                        "many as do and ends on time (default: the config's, 420,70; 0: no budget)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}: the tiny model's ops are too small to share "
                        "out, and more threads collapse on a busy machine; docs/benchmarks.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 whatever the scores (the report says whether the bars are met), 2 on a
    refused --out, 143 / 130 when stopped by SIGTERM / SIGINT (``--resume`` continues)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from fantasyworld.demo import DemoConfig, replace, run_demo
    from fantasyworld.errors import OutputError

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DemoConfig.smoke() if args.smoke else DemoConfig()
    overrides: dict[str, object] = {k: v for k, v in (("stage1_steps", args.stage1_steps),
                                                      ("stage2_steps", args.stage2_steps)) if v}
    if args.stage_seconds is not None:
        try:
            budgets = [float(v) for v in args.stage_seconds.split(",")]
        except ValueError:
            budgets = []
        if len(budgets) != 2 or min(budgets) < 0:
            print(f"error: --stage-seconds {args.stage_seconds!r}: give two seconds, S1,S2 (0: no budget)",
                  file=sys.stderr)
            return 2
        overrides.update(stage1_seconds=budgets[0] or None, stage2_seconds=budgets[1] or None)
    try:
        run_demo(args.out, replace(cfg, **overrides), resume=args.resume, overwrite=args.overwrite)
    except (OutputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)  # an in-process caller (a test) keeps its own
    return 0
