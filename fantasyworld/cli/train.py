"""``fantasyworld train --config CONFIG.yaml [--resume] [key=value ...]``: stage 1 or stage 2.

Single process: ``fantasyworld train --config configs/stage1_tiny.yaml``. Several GPUs:
``torchrun --nproc_per_node 8 -m fantasyworld train --config configs/stage1_t2v_1.3b.yaml``
(FSDP2, see :mod:`fantasyworld.training.parallel`). Overrides use dotted keys with YAML
values: ``optim.lr=3e-4 steps=200 data.root=data/synth``; they may also follow ``--resume``.
Before training, every file of a raw dataset is checked (``--skip-validation`` skips it).
Exit codes: 0 finished; 143 / 130 stopped by SIGTERM / SIGINT after writing a checkpoint
(``--resume`` continues); 1 non-finite losses; 2 bad config, checkpoint, data or output_dir.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train stage 1 or stage 2 from a YAML run config (see docs/training.md)")
    p.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    p.add_argument("--resume", nargs="*", default=None, metavar="key=value",
                   help="continue from the newest complete checkpoint in output_dir (fresh start if none); "
                        "overrides may follow it")
    p.add_argument("--skip-validation", action="store_true",
                   help="do not check the dataset's files before training (data.validate=false): for a dataset "
                        "already checked with `fantasyworld data validate`")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for a tiny preset on the CPU, where more threads collapse on a "
                        "busy machine, docs/benchmarks.md; torch's choice otherwise)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from fantasyworld.errors import CheckpointError, DataError
    from fantasyworld.training.config import ConfigError, config_to_dict, load_config

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides += [*args.resume, "resume=true"]
    if args.skip_validation:
        overrides.append("data.validate=false")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0

    import torch

    from fantasyworld.eval.validation import Validator
    from fantasyworld.training.parallel import init_world, shutdown
    from fantasyworld.training.trainer import NonFiniteLossError, Trainer, signal_exit_code

    world = init_world(config.device)
    threads_before = _set_threads(args.threads, config.model.preset, world.device.type)
    try:
        result = Trainer(config, world, validator=Validator).train()
    except (ConfigError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown(world)
        torch.set_num_threads(threads_before)  # an in-process caller (a test) keeps its own
    if world.is_main:
        print(f"{result.stopped} at step {result.step}; last checkpoint: {result.last_checkpoint}")
    return signal_exit_code(result.stopped)


def _set_threads(threads: int | None, preset: str, device_type: str) -> int:
    """``--threads``, else one thread for a tiny preset on the CPU (unless ``OMP_NUM_THREADS``
    says otherwise): its ops are too small to share out, and two threads ran 6-12x slower
    than one on a busy 2-core machine (docs/benchmarks.md, "Demo threads under load").
    Returns the thread count before."""
    import os

    import torch

    from fantasyworld.training.config import TINY_PRESETS

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    elif device_type == "cpu" and preset in TINY_PRESETS and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return before
