"""The command line starts light: building the parser (``--help``) imports neither torch nor diffusers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fantasyworld.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys, contextlib, io\n"
    "from fantasyworld.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
    "    try:\n"
    "        main({argv!r})\n"
    "    except SystemExit:\n"
    "        pass\n"
    "assert 'usage: fantasyworld' in out.getvalue(), out.getvalue()\n"
    "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
)


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["train", "--help"], ["verify-config", "--help"],
                                  ["view", "--help"], ["export", "--help"], ["data", "annotate", "--help"],
                                  ["evaluate", "--help"]])
def test_help_imports_no_torch(argv: list[str]) -> None:
    env_path = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": ""}, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{argv}: heavy modules imported: {proc.stdout.strip()}"


def test_parser_lists_every_command() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == {"demo", "verify-config", "data", "train", "generate", "evaluate", "convert-official",
                            "view", "export"}
