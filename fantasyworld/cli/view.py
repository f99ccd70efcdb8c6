"""``fantasyworld view OUT_DIR [--host 127.0.0.1 --port 8080]``: the interactive 3D viewer of
a folder written by ``generate``, ``evaluate`` or ``demo`` (:mod:`fantasyworld.viewer`).
Open the printed address in a browser; Ctrl-C stops it.

Exit codes: 0 stopped, 2 not an output folder (or no geometry), 3 viser not installed.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``view`` sub-command."""
    p = sub.add_parser("view", help="interactive 3D viewer of a generate/evaluate/demo output (browser, viser)",
                       description="Serve the fused point cloud (confidence slider), per-frame point maps (frame "
                                   "slider), the predicted, requested and ground-truth camera frustums and the "
                                   "selected frame's image to a browser.")
    p.add_argument("out_dir", help="folder written by generate, evaluate or demo")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: reachable from other machines)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    p.add_argument("--clip", default=None, help="evaluate/demo folders: show this evaluation clip")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the folder, then serve until interrupted."""
    from fantasyworld.viewer.outputs import NotAnOutputError, load_output

    try:
        scene = load_output(args.out_dir, args.clip)  # a bad folder fails before viser is imported
    except NotAnOutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import viser  # noqa: F401
    except ImportError:
        print('error: the viewer needs viser: pip install -e ".[view]"', file=sys.stderr)
        return 3
    from fantasyworld.viewer.app import serve

    try:
        serve(scene, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0
