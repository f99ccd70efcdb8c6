"""``fantasyworld convert-official``: the released FantasyWorld-Wan2.1-I2V-14B-480P
``model.pth`` -> our checkpoint directory (``config.json`` + ``fantasyworld.safetensors``);
with ``--variant wan2.2`` the two experts of FantasyWorld-Wan2.2-Fun-A14B-Control-Camera
(``--high``/``--low``) -> ``OUT/high`` and ``OUT/low``.

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
    p.add_argument("--variant", choices=("wan2.1", "wan2.2"), default="wan2.1",
                   help="wan2.1: FantasyWorld-Wan2.1-I2V-14B-480P (--model-pth); wan2.2: "
                        "FantasyWorld-Wan2.2-Fun-A14B-Control-Camera (--high and --low)")
    p.add_argument("--model-pth", default=None, help="wan2.1: official FantasyWorld weights (model.pth)")
    p.add_argument("--high", default=None, help="wan2.2: high_noise_model.pth")
    p.add_argument("--low", default=None, help="wan2.2: low_noise_model.pth")
    p.add_argument("--high-lora", default=None,
                   help="wan2.2: the reward LoRA merged into the high-noise base (Wan2.2-Fun-A14B-InP-high-noise-"
                        "HPS2.1.safetensors); used for the backbone check and recorded for inference")
    p.add_argument("--low-lora", default=None, help="wan2.2: the reward LoRA of the low-noise expert")
    p.add_argument("--lora-multiplier", type=float, default=0.55, help="wan2.2: LoRA multiplier (official 0.55)")
    p.add_argument("--wan-dir", required=True,
                   help="wan2.1: the Wan2.1-I2V-14B-480P directory (original or diffusers layout); wan2.2: the "
                        "Wan2.2-Fun-A14B-Control-Camera directory (high_noise_model/, low_noise_model/)")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist or be empty)")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="keep",
                   help="dtype of the written FantasyWorld weights (default: keep the file's, bf16)")
    p.add_argument("--backbone-override", action="store_true",
                   help="if official Wan tensors differ from --wan-dir, write them to OUT/wan_override.safetensors "
                        "instead of refusing")
    p.add_argument("--config", default=None,
                   help="advanced (wan2.1): a FantasyWorldConfig JSON to use instead of the 14B preset (same "
                        "structure)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the conversion; 0 on success, 1 on a conversion error, 2 on bad arguments."""
    import torch

    from fantasyworld.errors import CheckpointError
    from fantasyworld.models.config import FantasyWorldConfig
    from fantasyworld.models.official import convert_official, convert_official_wan22

    wan22 = args.variant == "wan2.2"
    if wan22 and (args.high is None or args.low is None or args.model_pth or args.config):
        print("error: --variant wan2.2 takes --high and --low (not --model-pth or --config)", file=sys.stderr)
        return 2
    if not wan22 and (args.model_pth is None or args.high or args.low or args.high_lora or args.low_lora):
        print("error: --variant wan2.1 takes --model-pth (--high/--low/--*-lora are for --variant wan2.2)",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, _DTYPES[args.dtype]) if _DTYPES[args.dtype] else None
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        if wan22:
            reports = convert_official_wan22(
                {"high": args.high, "low": args.low}, args.wan_dir, args.out,
                loras={"high": args.high_lora, "low": args.low_lora}, lora_multiplier=args.lora_multiplier,
                backbone_override=args.backbone_override, dtype=dtype, overwrite=args.overwrite, log=log)
        else:
            config = FantasyWorldConfig.load(args.config) if args.config else None
            reports = {"": convert_official(args.model_pth, args.wan_dir, args.out, config=config, dtype=dtype,
                                            backbone_override=args.backbone_override, overwrite=args.overwrite,
                                            log=log)}
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for report in reports.values():
        print(report.summary())
    return 0
