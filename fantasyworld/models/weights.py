"""FantasyWorld weight files: the one owner of ``step-N.safetensors`` + ``config.json``.

A FantasyWorld checkpoint directory holds ``step-N.safetensors`` files (the trainable
weights of one stage, safetensors metadata ``format``/``stage``/``preset``) and the model
config ``config.json`` beside them, and a training run's resolved config ``train_config.yaml``
(:data:`RUN_CONFIG_NAME`). Training writes them (:mod:`fantasyworld.training.checkpoint`),
inference and evaluation resolve them (:func:`resolve_checkpoint`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from fantasyworld.errors import CheckpointError
from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.official.keys import OVERRIDE_FILE

__all__ = ["DTYPES", "RUN_CONFIG_NAME", "as_dtype", "resolve_checkpoint", "training_clip_shape", "weights_path"]

#: The resolved run config a training run writes into its run directory, beside the weights.
RUN_CONFIG_NAME = "train_config.yaml"

#: dtype names accepted on the command line and in configs.
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")


def weights_path(run_dir: str | Path, step: int) -> Path:
    """``RUN/step-N.safetensors``."""
    return Path(run_dir) / f"step-{step}.safetensors"


def training_clip_shape(run_dir: str | Path) -> tuple[int | None, int | None, int | None]:
    """``(num_frames, height, width)`` of the clips a training run read (``data.num_frames``,
    ``data.height``, ``data.width`` of ``run_dir/train_config.yaml``); ``None`` for each value
    the file does not give, and all three ``None`` when there is no such file (a converted
    official checkpoint).

    Raises:
        CheckpointError: the file exists but is not a YAML mapping.
    """
    path = Path(run_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        return None, None, None
    try:
        run = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not a readable YAML run config ({exc})") from exc
    if not isinstance(run, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping (a training run config), got {type(run).__name__}")
    data = run.get("data") or {}
    return tuple(int(data[k]) if data.get(k) is not None else None  # type: ignore[return-value]
                 for k in ("num_frames", "height", "width"))


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` ... -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_checkpoint(checkpoint: str | Path, preset: str | None = None) -> tuple[Path, FantasyWorldConfig, int]:
    """Find the weights file, the model config and the stage of a checkpoint.

    ``checkpoint`` is a ``.safetensors`` file or a directory; a directory gives its newest
    ``step-N.safetensors`` (else its only ``*.safetensors``). The config is
    ``config.json`` beside the weights, else ``preset``, else the ``preset`` recorded in
    the file's metadata. The stage is the file's ``stage`` metadata (default 2).
    A converted official checkpoint's ``wan_override.safetensors`` (backbone tensors, not
    FantasyWorld weights) is never taken as the weights file.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    if path.is_dir():
        steps = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _STEP_FILE.match(p.name)))
        if steps:
            path = steps[-1][1]
        else:
            files = sorted(p for p in path.glob("*.safetensors") if p.name != OVERRIDE_FILE)
            if len(files) != 1:
                raise CheckpointError(f"{checkpoint}: expected step-N.safetensors files or a single *.safetensors, "
                                      f"found {len(files)} safetensors files")
            path = files[0]
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors checkpoint ({exc})") from exc
    cfg_path = path.parent / "config.json"
    if cfg_path.is_file():
        config = FantasyWorldConfig.load(cfg_path)
    elif preset or meta.get("preset"):
        config = get_preset(preset or meta["preset"])
    else:
        raise CheckpointError(f"{path}: no config.json beside the checkpoint and no preset given (pass preset=...)")
    stage = int(meta.get("stage", 2))
    return path, config, stage
