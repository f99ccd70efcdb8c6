"""The package's import graph is layered: no module imports a room above its own floor.

Floors, lowest first (docs/architecture.md): errors -> geometry -> layers | heads -> models
-> data -> training | inference -> eval -> demo | viewer -> cli (-> ``__main__``). A room may import its own room and
any lower floor. ``training`` and ``inference`` are peers: neither imports the other.
``heads`` may use ``layers`` (shared blocks), not the other way round. Every import counts,
including those inside functions, ``import fantasyworld.x`` forms and relative imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fantasyworld"

#: room -> floor; a room may import rooms of a strictly lower floor (plus ALLOWED_SAME_FLOOR).
FLOORS: dict[str, int] = {
    "errors": 0,
    "geometry": 1,
    "layers": 2, "heads": 2,
    "models": 3,
    "data": 4,
    "training": 5, "inference": 5,
    "eval": 6,
    "demo": 7, "viewer": 7,
    "cli": 8,
    "__main__": 9,
    "assets": 0,
}
ALLOWED_SAME_FLOOR = {("heads", "layers")}


def _room(module: str) -> str:
    """``fantasyworld.models.fantasyworld`` -> ``models``; the package root -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Every ``fantasyworld...`` module named by an import anywhere in ``source`` (any depth)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(target)
    return [m for m in found if m == "fantasyworld" or m.startswith("fantasyworld.")]


def layering_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """``"a -> b"`` for each import of ``module`` that goes up a floor or sideways to a peer."""
    bad = []
    src = _room(module)
    for target in imported_modules(source, module, is_package):
        dst = _room(target)
        if dst == src or dst == "__init__" or (src, dst) in ALLOWED_SAME_FLOOR:
            continue
        if FLOORS[dst] >= FLOORS[src]:
            bad.append(f"{module} -> {target}")
    return bad


def _package_modules() -> list[tuple[str, Path, bool]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        out.append((module, path, is_package))
    return out


def test_every_room_has_a_floor() -> None:
    rooms = {_room(m) for m, _, _ in _package_modules()} - {"__init__"}
    assert rooms <= set(FLOORS), f"rooms without a floor in this test: {sorted(rooms - set(FLOORS))}"


def test_no_upward_or_peer_imports() -> None:
    bad = []
    for module, path, is_package in _package_modules():
        bad += layering_violations(path.read_text(), module, is_package)
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # upward, inside a function (hidden edges count)
        ("fantasyworld.geometry.camera_io", "def f():\n    from fantasyworld.data import loader\n",
         ["fantasyworld.geometry.camera_io -> fantasyworld.data"]),
        # peer to peer
        ("fantasyworld.inference.sampler", "import fantasyworld.training.trainer as t\n",
         ["fantasyworld.inference.sampler -> fantasyworld.training.trainer"]),
        # relative import resolves to its room
        ("fantasyworld.eval.metrics", "from ..demo import run_demo\n",
         ["fantasyworld.eval.metrics -> fantasyworld.demo"]),
        # layers may not use heads (heads may use layers)
        ("fantasyworld.layers.irg", "from fantasyworld.heads.dpt_head import DPTHead\n",
         ["fantasyworld.layers.irg -> fantasyworld.heads.dpt_head"]),
        # allowed: downward, same room, same-floor exception
        ("fantasyworld.training.trainer", "from fantasyworld.models import config\nfrom . import losses\n", []),
        ("fantasyworld.heads.camera_head", "from fantasyworld.layers.geo_block import GeoBlock\n", []),
    ],
)
def test_checker_flags_upward_peer_and_hidden_edges(module: str, source: str, expected: list[str]) -> None:
    assert layering_violations(source, module) == expected
