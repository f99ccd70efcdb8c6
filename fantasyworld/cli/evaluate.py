"""``fantasyworld evaluate --checkpoint CKPT --data ROOT [--split held-out]``: geometry of a
checkpoint on held-out clips against ground truth and trivial baselines (docs/evaluation.md).

Writes ``OUT/metrics.json`` and the report (``report.html`` + PNG figures). Exit codes: 0
done (whatever the scores), 2 bad checkpoint, data or arguments.
"""

from __future__ import annotations

import argparse
import os
import sys


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 32x32, got {text!r}") from None
    return h, w


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    from fantasyworld.data.split import HELD_OUT_FRACTION, SPLITS

    p = sub.add_parser("evaluate", help="score a checkpoint's geometry on held-out clips (see docs/evaluation.md)")
    p.add_argument("--checkpoint", required=True,
                   help="step-N.safetensors or its run directory (newest step); a directory with high/ and low/ "
                        "evaluates the two-expert Wan2.2 variant (latents mode: the low-noise expert)")
    p.add_argument("--data", required=True, help="dataset root in the seed layout (metadata.json, videos, ...)")
    p.add_argument("--split", default="held-out", choices=SPLITS,
                   help="clips to score: held-out (clip-id hash, docs/evaluation.md), train or all")
    p.add_argument("--held-out-fraction", type=float, default=HELD_OUT_FRACTION)
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint dir>/eval)")
    p.add_argument("--max-clips", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="4k+1 frames (default: the run's training config)")
    p.add_argument("--size", type=_size, default=None, help="HxW (default: the run's training config)")
    p.add_argument("--sigma", type=float, default=0.1, help="noise level of the latents mode, in [0, 1)")
    p.add_argument("--camera-conditioning", default="none", choices=["none", "gt"],
                   help="latents mode: feed the clip's cameras (gt) or not (none)")
    p.add_argument("--modes", default="latents,generation", help="comma list of latents, generation")
    p.add_argument("--steps", type=int, default=20, help="generation mode: Euler steps")
    p.add_argument("--cfg", type=float, default=1.0, help="generation mode: guidance scale")
    p.add_argument("--shift", type=float, default=5.0, help="generation mode: schedule shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default=None, help="Wan transformer directory (default: beside the checkpoint, "
                                                    "or the tiny presets' seeded random one)")
    p.add_argument("--vae", default=None, help="VAE directory ('tiny' for the tiny random VAE)")
    p.add_argument("--text-encoder", default=None, help="UMT5 directory ('tiny' for the tiny random one)")
    p.add_argument("--high-lora", default=None, help="Wan2.2: the high-noise expert's reward LoRA (safetensors)")
    p.add_argument("--low-lora", default=None, help="Wan2.2: the low-noise expert's reward LoRA (safetensors)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reestimate-cameras", action="store_true",
                   help="generation mode: structure from motion on the generated videos, scored against the "
                        "requested cameras (RotErr, TransErr, CamMC, SfM failure rate; needs pycolmap)")
    p.add_argument("--no-report", action="store_true", help="write metrics.json only")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results in a non-empty --out (as a whole: no earlier file stays)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """:func:`_run` with SIGTERM / SIGINT raising ``Interrupted`` (exit 143 / 130): the staged
    output folder is removed and an earlier result stays as it was."""
    from fantasyworld.errors import interrupt_on_signals

    with interrupt_on_signals("evaluate"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Parse, evaluate, print the verdict."""
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fantasyworld.errors import CheckpointError, DataError, OutputError, check_output_dir
    from fantasyworld.eval.evaluate import EvalSettings, evaluate

    try:
        settings = EvalSettings(
            split=args.split, held_out_fraction=args.held_out_fraction, max_clips=args.max_clips,
            num_frames=args.frames, height=args.size[0] if args.size else None,
            width=args.size[1] if args.size else None, sigma=args.sigma,
            camera_conditioning=args.camera_conditioning,
            modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()), num_steps=args.steps,
            guidance_scale=args.cfg, shift=args.shift, seed=args.seed, reestimate_cameras=args.reestimate_cameras)
        if settings.reestimate_cameras and "generation" not in settings.modes:
            raise ValueError("--reestimate-cameras scores the generation mode: add generation to --modes")
        ckpt = Path(args.checkpoint)
        out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "eval"
        check_output_dir(out, "--out", overwrite=args.overwrite)
        evaluate(ckpt, args.data, out, settings, backbone=args.backbone, vae=args.vae,
                 text_encoder=args.text_encoder, device=args.device, report=not args.no_report,
                 high_lora=args.high_lora, low_lora=args.low_lora)
    except (CheckpointError, DataError, OutputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
