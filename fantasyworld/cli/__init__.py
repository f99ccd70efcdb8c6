"""Command-line entry point: ``fantasyworld <command> ...``.

Each command lives in its own module under :mod:`fantasyworld.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking
the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define subcommands, in the order they appear in --help.
_COMMAND_MODULES = (
    "demo",
    "verify",
    "data",
    "train",
    "generate",
    "evaluate",
    "view",
    "export",
    "convert",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fantasyworld",
        description="Train and run FantasyWorld (frozen Wan2.1 + geometry branch).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fantasyworld.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fantasyworld.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # fantasyworld.errors.Interrupted carries its signal's exit code
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
