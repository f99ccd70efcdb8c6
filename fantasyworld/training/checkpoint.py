"""Training checkpoints: exported weights plus a resumable state, written atomically.

A run directory holds, for each saved step ``N``:

* ``step-N.safetensors``: the trainable FantasyWorld weights of the stage (the format of
  :meth:`FantasyWorldModel.save_fantasyworld`: fp32, metadata ``format=fantasyworld``,
  ``stage``, ``preset``, ``step``). This is what stage 2 (``init_from``) and inference load;
  ``config.json`` beside it carries the architecture.
* ``step-N.state.pt``: everything else needed to continue exactly: optimizer state (full,
  keyed by parameter name, so it does not depend on the number of ranks), LR-schedule
  state, ``step``, data position (``samples_seen``), the RNG states of every rank, the
  non-finite streak.

Each file is written to a temporary name in the same directory and renamed into place
(``os.replace`` is atomic), weights first and state last, so a step is *complete* exactly
when its state file exists. ``--resume`` takes the newest complete step; old steps are
pruned (state first) once a newer one is complete.

Under FSDP2 every rank takes part in gathering (parameters one by one, the optimizer via
``torch.distributed.checkpoint.state_dict``) and rank 0 writes. Loading happens on every
rank from the same files: weights into the unsharded model before ``fully_shard``, the
optimizer state after it.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fantasyworld import errors
from fantasyworld.errors import CheckpointError, ConfigError
from fantasyworld.models.weights import weights_path
from fantasyworld.training.parallel import World, barrier, gather_objects

__all__ = [
    "check_init_from",
    "load_init_from",
    "STATE_VERSION",
    "check_output_dir",
    "complete_steps",
    "gather_trainable_state",
    "checkpoint_problem",
    "latest_complete_step",
    "latest_resumable_step",
    "load_optimizer_state",
    "prune_checkpoints",
    "read_state",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
    "state_path",
    "weights_metadata",
    "weights_path",
]

STATE_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)\.state\.pt$")


def state_path(run_dir: str | Path, step: int) -> Path:
    """``RUN/step-N.state.pt``."""
    return Path(run_dir) / f"step-{step}.state.pt"


def check_output_dir(run_dir: str | Path) -> None:
    """Raise :class:`ConfigError` unless ``run_dir`` is (or can be made) a writable directory:
    ``output_dir`` (or a parent of it) being a file, or a read-only folder, is named before
    anything is built or written."""
    try:
        errors.check_output_dir(run_dir, "output_dir")
    except errors.OutputError as exc:
        raise ConfigError(f"{exc} (choose another output_dir)") from None


def complete_steps(run_dir: str | Path) -> list[int]:
    """Steps whose weights and state both exist, ascending."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = []
    for entry in run_dir.iterdir():
        m = _STEP_RE.match(entry.name)
        if m and weights_path(run_dir, int(m.group(1))).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_complete_step(run_dir: str | Path) -> int | None:
    """The newest complete step, or ``None``."""
    steps = complete_steps(run_dir)
    return steps[-1] if steps else None


def checkpoint_problem(run_dir: str | Path, step: int) -> str | None:
    """Why step ``step`` of ``run_dir`` cannot be resumed (``"<file>: <what>"``), or ``None``.

    Cheap: the weights' safetensors header must cover the file (a truncated file fails) and
    the state must open as a torch zip archive (memory-mapped, nothing is read in full)."""
    wpath, spath = weights_path(run_dir, step), state_path(run_dir, step)
    try:
        with safe_open(str(wpath), framework="pt") as f:
            f.keys()
    except Exception as exc:
        return f"{wpath}: unreadable weights ({type(exc).__name__}: {exc})"
    try:
        state = torch.load(str(spath), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        return f"{spath}: unreadable training state ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return f"{spath}: not a training state of version {STATE_VERSION}"
    return None


def latest_resumable_step(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> int | None:
    """The newest complete step whose weights and state both load (:func:`checkpoint_problem`),
    or ``None``. Each newer step it walks back over is passed to ``warn`` with the reason, so a
    damaged newest checkpoint (a kill mid-write on a filesystem without atomic renames, a
    truncated copy) falls back to the previous one instead of ending the run."""
    for step in reversed(complete_steps(run_dir)):
        problem = checkpoint_problem(run_dir, step)
        if problem is None:
            return step
        if warn is not None:
            warn(f"skipping checkpoint step-{step}: {problem}")
    return None


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, rename onto ``path``, then fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename into it survives a power loss (no-op where
    directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete ``.*.tmp-PID`` files left by a killed writer."""
    for entry in Path(run_dir).glob(".step-*.tmp-*"):
        entry.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ RNG
def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, CUDA), as tensors/ints only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------ gather
def gather_trainable_state(model: nn.Module, keys: list[str], world: World) -> dict[str, torch.Tensor]:
    """Full (unsharded) fp32 CPU copies of ``keys`` of ``model.state_dict()`` on rank 0.

    Sharded (DTensor) entries are all-gathered one at a time, so every rank must call this
    with the same keys; other ranks get an empty dict.
    """
    from torch.distributed.tensor import DTensor

    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        value = state[key]
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if world.is_main:
            out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name (rank 0; may be empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=world.distributed)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    if "param_groups" in state:
        state = {**state, "param_groups": [_plain_group(g) for g in state["param_groups"]]}
    return state


def _plain(value: Any) -> Any:
    """``value`` with one-element tensors (a CUDA-graphed run's device learning rates) as
    floats, inside lists too."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _plain_group(group: dict[str, Any]) -> dict[str, Any]:
    """A parameter group as an eager AdamW holds it: one-element tensors as floats (:func:`_plain`),
    ``capturable`` off. A checkpoint then resumes the same with or without ``model.cuda_graphs``,
    which sets both again."""
    out = {k: _plain(v) for k, v in group.items()}
    if "capturable" in out:
        out["capturable"] = False
    return out


def _plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """The LR scheduler's state with one-element tensors (the last learning rates of a graphed
    run) as floats."""
    return {k: _plain(v) for k, v in state.items()}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state into a (possibly sharded) optimizer.

    A group hyperparameter the optimizer holds as a one-element tensor (torchao's 8-bit AdamW
    keeps ``lr`` as one, and refuses a float) is saved as a float (:func:`_plain_group`); it is
    given back as a tensor of the dtype and device it had before the load.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    tensors = [{k: (v.dtype, v.device) for k, v in group.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
               for group in optimizer.param_groups]
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
    for group, kinds in zip(optimizer.param_groups, tensors):
        for key, (dtype, device) in kinds.items():
            if not isinstance(group.get(key), torch.Tensor):
                group[key] = torch.tensor(float(group[key]), dtype=dtype, device=device)


# ------------------------------------------------------------------------------------ save/load
def weights_metadata(stage: int, preset: str, step: int, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """safetensors metadata of an exported step (the keys of ``save_fantasyworld`` plus ``step``)."""
    meta = {"format": "fantasyworld", "stage": str(stage), "preset": preset, "step": str(step)}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    world: World,
    weight_keys: list[str],
    stage: int,
    preset: str,
    samples_seen: int,
    keep_last: int,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``step-N.safetensors`` and ``step-N.state.pt`` (collective: call on every rank).

    Returns the weights path. Older complete steps beyond ``keep_last`` are deleted.
    """
    run_dir = Path(run_dir)
    tensors = gather_trainable_state(model, weight_keys, world)
    optim_state = _optimizer_state(model, optimizer, world)
    rngs = gather_objects(rng_state(world.device), world)
    wpath = weights_path(run_dir, step)
    if world.is_main:
        meta = weights_metadata(stage, preset, step)
        _atomic_write(wpath, lambda p: save_file(tensors, str(p), metadata=meta))
        state = {
            "version": STATE_VERSION,
            "step": step,
            "stage": stage,
            "preset": preset,
            "samples_seen": samples_seen,
            "world_size": world.world_size,
            "optimizer": optim_state,
            "lr_scheduler": _plain_scheduler_state(scheduler.state_dict()),
            "rng": rngs,
            **(extra_state or {}),
        }
        _atomic_write(state_path(run_dir, step), lambda p: torch.save(state, str(p)))
        prune_checkpoints(run_dir, keep_last)
    barrier(world)
    return wpath


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[int]:
    """Delete complete steps older than the newest ``keep_last`` (state file first); returns them."""
    steps = complete_steps(run_dir)
    old = steps[:-keep_last] if keep_last > 0 else steps
    for step in old:
        state_path(run_dir, step).unlink(missing_ok=True)
        weights_path(run_dir, step).unlink(missing_ok=True)
    return old


def read_state(run_dir: str | Path, step: int) -> dict[str, Any]:
    """Load ``step-N.state.pt`` (tensors and plain containers only: ``weights_only``)."""
    path = state_path(run_dir, step)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from exc
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: state version {state.get('version')} != {STATE_VERSION}")
    return state


def read_weights_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of an exported weights file (raises :class:`CheckpointError`)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors checkpoint ({exc})") from exc


def check_init_from(init_from: str | Path, stage: int, preset: str) -> None:
    """Refuse an ``init_from`` that is absent or not a stage-1 FantasyWorld checkpoint of
    ``preset``, from its header alone; :class:`CheckpointError` names ``init_from=PATH``."""
    path = Path(init_from)
    where = f"init_from={init_from}"
    if not path.is_file():
        raise CheckpointError(
            f"{where}: file does not exist. Stage 2 starts from the step-N.safetensors written by a stage-1 run "
            f"(e.g. outputs/fantasy_world_stage1/step-20000.safetensors); set init_from to that file")
    meta = read_weights_metadata(path)
    want_stage = 1
    if meta.get("format") != "fantasyworld":
        raise CheckpointError(f"{where}: not a FantasyWorld checkpoint (metadata format={meta.get('format')!r})")
    if meta.get("stage") != str(want_stage):
        hint = " (to continue a stage-2 run, resume it instead)" if meta.get("stage") == "2" else ""
        raise CheckpointError(f"{where}: is a stage-{meta.get('stage')} checkpoint; stage {stage} must "
                              f"start from a stage-{want_stage} checkpoint{hint}")
    if meta.get("preset") not in (None, preset):
        raise CheckpointError(f"{where}: checkpoint preset {meta.get('preset')!r} does not match "
                              f"model.preset {preset!r}")


def load_init_from(model: nn.Module, init_from: str | Path, info: Callable[[str], None] | None = None) -> None:
    """Load the stage-1 weights ``init_from`` into ``model`` strictly (header checked by
    :func:`check_init_from`); a mismatch is a :class:`CheckpointError` naming ``init_from=PATH``."""
    path = Path(init_from)
    want_stage = 1
    try:
        model.load_fantasyworld(path, want_stage)
    except CheckpointError as exc:
        raise CheckpointError(f"init_from={init_from}: stage-{want_stage} weights do not match model "
                              f"{model.config.name}: {exc}") from exc
    if info is not None:
        info(f"loaded stage-{want_stage} weights from {path} (strict)")
