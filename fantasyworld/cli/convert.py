"""``fantasyworld convert-official``: the released FantasyWorld-Wan2.1-I2V-14B-480P
``model.pth`` -> our checkpoint directory (``config.json`` + ``fantasyworld.safetensors``).

See :mod:`fantasyworld.models.official` and ``docs/official_weights.md``.
"""

from __future__ import annotations

import argparse
import sys

_DTYPES = {"keep": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``convert-official`` subcommand."""
    p = sub.add_parser(
        "convert-official",
        help="convert the released official FantasyWorld weights (model.pth) into our checkpoint format",
        description="Map every key of the official model.pth onto our model (shapes checked, unmapped keys "
                    "reported by name), check that its Wan block copies equal the Wan base weights, and write "
                    "OUT/config.json + OUT/fantasyworld.safetensors. The file is read without executing pickled "
                    "code; nothing is written on any error.",
    )
    p.add_argument("--model-pth", required=True, help="official FantasyWorld weights (model.pth)")
    p.add_argument("--wan-dir", required=True,
                   help="Wan2.1-I2V-14B-480P directory (original or diffusers layout) the model was built on")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist or be empty)")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="keep",
                   help="dtype of the written FantasyWorld weights (default: keep the file's, bf16)")
    p.add_argument("--backbone-override", action="store_true",
                   help="if official Wan tensors differ from --wan-dir, write them to OUT/wan_override.safetensors "
                        "instead of refusing")
    p.add_argument("--config", default=None,
                   help="advanced: a FantasyWorldConfig JSON to use instead of the 14B preset (same structure)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the conversion; 0 on success, 1 on a conversion error, 2 on bad arguments."""
    import torch

    from fantasyworld.errors import CheckpointError
    from fantasyworld.models.config import FantasyWorldConfig
    from fantasyworld.models.official import convert_official

    dtype = getattr(torch, _DTYPES[args.dtype]) if _DTYPES[args.dtype] else None
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        config = FantasyWorldConfig.load(args.config) if args.config else None
        report = convert_official(args.model_pth, args.wan_dir, args.out, config=config, dtype=dtype,
                                  backbone_override=args.backbone_override, overwrite=args.overwrite, log=log)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
