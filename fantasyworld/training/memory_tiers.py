"""Memory tiers of training: which memory/speed trade-offs a run takes, per card size.

A run's memory is its static part (the frozen Wan weights; the trainable weights, their
gradients and the optimizer states) plus the activations that backward needs. The knobs:

* ``model.checkpointing`` (:mod:`fantasyworld.models.checkpointing`): ``layer`` recomputes every
  layer in backward, ``selective`` keeps matmul/attention outputs, ``none`` keeps everything;
* ``model.checkpoint_heads``: the DPT heads' full-resolution stage recomputed one frame chunk at
  a time;
* ``model.activation_offload`` (:data:`~fantasyworld.models.fantasyworld.ACTIVATION_OFFLOAD`):
  the saved activations of the heads (``heads``) or of everything (``all``) wait in pinned host
  memory between forward and backward (``torch.autograd.graph.save_on_cpu``);
* ``optim.optimizer`` (:mod:`fantasyworld.training.optimizers`): fp32 or 8-bit AdamW moments;
* ``model.fp8_frozen``: the frozen Wan blocks' linear layers stored as float8 e4m3 with
  row-wise scales (:mod:`fantasyworld.layers.fp8_linear`; half the bytes of bf16, FP8 GEMMs on
  CUDA; backward to the activations through the dequantised weights);
* the frame count (``data.num_frames``), which sets every activation's size.

A tier (:data:`TRAIN_MEMORY_TIERS`, ``memory_tier: 80|48|24``) is a bundle of these. Any of the
keys set explicitly in the config wins over the tier; unset keys (``null``) take the tier's
value, or the defaults of :data:`NO_TIER` without a tier. :func:`resolve_memory` does that
once, and the trainer applies the result. The measured peaks are in docs/benchmarks.md.

Static memory at the 1.3B preset (1,086M / 1,288M trainable parameters in stage 1 / 2,
1.42B frozen Wan parameters): fp32 weights + gradients 8.7 / 10.3 GB, AdamW moments 8.7 / 10.3
GB (8-bit: 2.2 / 2.6 GB), frozen Wan 2.8 GB in bf16 (1.4 GB in FP8 for the block linears).
This module imports nothing heavy (the config reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["NO_TIER", "TRAIN_MEMORY_TIERS", "MemorySettings", "TrainMemoryTier", "resolve_memory",
           "validate_memory"]


@dataclass(frozen=True)
class MemorySettings:
    """The resolved memory knobs of a run (see the module docstring for each)."""

    checkpointing: str = "none"
    checkpoint_heads: bool = False
    activation_offload: str = "none"
    optimizer: str = "adamw"
    fp8_frozen: bool = False


@dataclass(frozen=True)
class TrainMemoryTier:
    """One tier: its settings and what it is for.

    Attributes:
        name: the value of ``memory_tier`` (the card's GB).
        description: one line for docs and ``--print-config``.
        settings: the knobs (:class:`MemorySettings`).
        frames_1p3b: the largest frame count meant to fit at the 1.3B preset and 336x592 under
            the tier's cap (81: the full clip); ``configs/stage{1,2}_t2v_1.3b_<tier>gb.yaml``
            use it.
    """

    name: str
    description: str
    settings: MemorySettings
    frames_1p3b: int = 81


#: without ``memory_tier``: what an unset key means (the behaviour before tiers existed)
NO_TIER = MemorySettings()

#: ``memory_tier`` value -> tier
TRAIN_MEMORY_TIERS: dict[str, TrainMemoryTier] = {
    "80": TrainMemoryTier(
        "80", "layer checkpointing, chunked head recompute, fp32 AdamW (the seed recipe's settings)",
        MemorySettings(checkpointing="layer", checkpoint_heads=True)),
    "48": TrainMemoryTier(
        "48", "as 80 with 8-bit AdamW moments (6.5 / 7.7 GB less in stage 1 / 2 at 1.3B)",
        MemorySettings(checkpointing="layer", checkpoint_heads=True, optimizer="adamw8bit")),
    "24": TrainMemoryTier(
        "24", "as 48, plus FP8 frozen Wan linears and the heads' activations in pinned host memory; "
              "fewer frames at 1.3B",
        MemorySettings(checkpointing="layer", checkpoint_heads=True, optimizer="adamw8bit",
                       activation_offload="heads", fp8_frozen=True),
        frames_1p3b=49),
}


def _tier(name: str | None) -> TrainMemoryTier | None:
    return None if name is None else TRAIN_MEMORY_TIERS[str(name)]


def resolve_memory(config: Any) -> MemorySettings:
    """The :class:`MemorySettings` of a :class:`~fantasyworld.training.config.TrainConfig`:
    explicit keys first, then the tier's values, then :data:`NO_TIER`
    (``model.gradient_checkpointing: true`` without ``model.checkpointing`` means ``layer``)."""
    tier = _tier(config.memory_tier)
    base = tier.settings if tier is not None else NO_TIER
    m = config.model
    checkpointing = m.checkpointing
    if checkpointing is None:
        checkpointing = "layer" if m.gradient_checkpointing and base.checkpointing == "none" else base.checkpointing
    return replace(
        base,
        checkpointing=checkpointing,
        checkpoint_heads=base.checkpoint_heads if m.checkpoint_heads is None else m.checkpoint_heads,
        activation_offload=base.activation_offload if m.activation_offload is None else m.activation_offload,
        optimizer=base.optimizer if config.optim.optimizer is None else config.optim.optimizer,
        fp8_frozen=base.fp8_frozen if m.fp8_frozen is None else m.fp8_frozen,
    )


def validate_memory(config: Any, fail: Callable[[str], None]) -> None:
    """Check the memory keys of a run config; ``fail(message)`` names the key and the fix."""
    from fantasyworld.models.checkpointing import CHECKPOINT_MODES
    from fantasyworld.models.fantasyworld import ACTIVATION_OFFLOAD
    from fantasyworld.training.config_io import unknown_choice
    from fantasyworld.training.optimizers import OPTIMIZERS

    if config.memory_tier is not None and str(config.memory_tier) not in TRAIN_MEMORY_TIERS:
        fail(unknown_choice("memory_tier", str(config.memory_tier), tuple(TRAIN_MEMORY_TIERS)))
    m = config.model
    if m.checkpointing is not None and m.checkpointing not in CHECKPOINT_MODES:
        fail(unknown_choice("model.checkpointing", m.checkpointing, tuple(CHECKPOINT_MODES)))
    if m.checkpointing == "none" and m.gradient_checkpointing:
        fail("model.gradient_checkpointing is true but model.checkpointing is none: drop one of them "
             "(model.checkpointing: layer or selective replaces gradient_checkpointing)")
    if m.activation_offload is not None and m.activation_offload not in ACTIVATION_OFFLOAD:
        fail(unknown_choice("model.activation_offload", m.activation_offload, tuple(ACTIVATION_OFFLOAD)))
    if config.optim.optimizer is not None and config.optim.optimizer not in OPTIMIZERS:
        fail(unknown_choice("optim.optimizer", config.optim.optimizer, tuple(OPTIMIZERS)))
