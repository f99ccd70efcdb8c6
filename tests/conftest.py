"""Shared fixtures: tiny presets, seeded inputs, no network."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# diffusers' library logger binds its stream handler to ``sys.stderr`` the first time it is
# used. Bound inside a test's ``capsys`` capture, the handler keeps that capture's stream after
# the test closed it, and a later diffusers warning prints a "--- Logging error ---" traceback
# into whichever test is running (test_faults.py run on its own failed so). Bound here, it
# writes to the session's capture, which stays open.
from diffusers.utils import logging as _diffusers_logging  # noqa: E402

_diffusers_logging.get_logger("diffusers")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny-model ops are far faster on one thread (OpenMP
    synchronisation dominates, badly so on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def load_script(relative: str) -> ModuleType:
    """Import a repository script (``benchmarks/x.py``, ``scripts/y.py``) as a module under its
    file name: its folder first on ``sys.path`` (its sibling imports) and the module in
    ``sys.modules`` (dataclasses and pickling look it up there)."""
    path = REPO / relative
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def script():
    """:func:`load_script`: ``script("benchmarks/bench_small_steps.py")`` -> the module."""
    return load_script
