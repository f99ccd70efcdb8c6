"""``fantasyworld export OUT_DIR --glb``: write ``scene.glb`` (fused cloud + camera frustums)
from a folder written by ``generate``, ``evaluate`` or ``demo`` (:mod:`fantasyworld.inference.glb`).

Exit codes: 0 written, 2 not an output folder (or no geometry in it).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = sub.add_parser("export", help="export an output folder's scene (GLB: point cloud + camera frustums)",
                       description="Read a generate, evaluate or demo output folder and write its fused point cloud "
                                   "and camera frustums as a binary glTF file (Blender, web viewers, Gradio).")
    p.add_argument("out_dir", help="folder written by generate, evaluate or demo")
    p.add_argument("--glb", action="store_true", help="write a GLB file (the only format so far; required)")
    p.add_argument("--out", default=None, help="GLB path (default: scene.glb in the folder the scene comes from)")
    p.add_argument("--clip", default=None, help="evaluate/demo folders: the evaluation clip to export")
    p.add_argument("--max-points", type=int, default=None,
                   help="point cap (seeded subsample; default: the GLB writer's DEFAULT_GLB_MAX_POINTS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export; print the file and what it holds."""
    from fantasyworld.viewer.outputs import NotAnOutputError, write_output_glb

    if not args.glb:
        print("error: choose a format: --glb", file=sys.stderr)
        return 2
    try:
        kwargs = {} if args.max_points is None else {"max_points": args.max_points}
        path, info = write_output_glb(args.out_dir, args.out, clip=args.clip, **kwargs)
    except NotAnOutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}: " + ", ".join(f"{v} {k}" + (" cameras" if k != "points" else "") for k, v in info.items()))
    return 0
