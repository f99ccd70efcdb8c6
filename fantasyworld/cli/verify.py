"""``fantasyworld verify-config``: parameter inventory and freezing check for a preset."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify-config",
        help="build a preset on the meta device and list parameter counts and freezing per stage",
    )
    p.add_argument("--preset", default="tiny", help="model preset (tiny, small, wan2.1-t2v-1.3b, wan2.1-i2v-14b-480p, "
                                                    "wan2.2-fun-a14b-control-camera-high, ...-low)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None, help="check only this stage")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from fantasyworld.models.config import get_preset
    from fantasyworld.models.fantasyworld import FantasyWorldModel
    from fantasyworld.models.inventory import format_table, inventory, wan_trainable_violations

    try:
        config = get_preset(args.preset)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    with torch.device("meta"):
        model = FantasyWorldModel(config, device="meta")
    rows = inventory(model)
    print(format_table(rows, f"{config.name}: PCB {config.num_pcb} / IRG {config.num_irg}, "
                             f"geometry {config.geo_dim}/{config.geo_heads}"))
    failed = False
    for stage in (args.stage,) if args.stage else (1, 2):
        model.set_stage(stage)
        bad = wan_trainable_violations(model)
        if bad:
            failed = True
            print(f"FAIL stage {stage}: {len(bad)} Wan parameters are trainable: {bad[:8]}", file=sys.stderr)
        else:
            n = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"OK stage {stage}: no Wan parameter trainable; {n:,} trainable parameters")
    return 1 if failed else 0
