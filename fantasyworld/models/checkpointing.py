"""Activation checkpointing modes of the training forward: a registry of how a layer keeps its activations.

:class:`~fantasyworld.models.fantasyworld.FantasyWorldModel` runs its repeated regions (each
preconditioning layer, each IRG layer, each geometry frame/global block, the latent bridge and
the pose encoder) through :func:`checkpoint_region` with the model's ``checkpointing`` mode:

========== ==========================================================================================
mode       what backward finds saved for a region
========== ==========================================================================================
none       everything autograd saves (fastest, most memory)
layer      only the region's inputs; the whole region is recomputed in backward (about one extra
           forward of every checkpointed region: the least memory)
selective  the outputs of matrix products and attention (``aten.mm``, ``addmm``, ``bmm``,
           ``_scaled_mm``, ``convolution`` and every ``_scaled_dot_product_*`` kernel); the
           elementwise and normalisation ops around them (modulation, LayerNorm/RMSNorm, RoPE,
           GELU, casts, residual adds) are recomputed. Backward recomputes no GEMM and no
           attention, so the recompute costs memory traffic, not FLOPs
========== ==========================================================================================

All three give the same gradients (recomputation replays the same kernels on the same inputs;
tested on the CPU). ``selective`` is torch's selective activation checkpointing
(``create_selective_checkpoint_contexts`` with :func:`selective_policy`); under ``torch.compile``
its policy must be seen by the compiler, so a compiled region runs its checkpoint *inside* the
compiled graph (:func:`fantasyworld.models.parallelize.compile_blocks` builds that callable,
:data:`COMPILED_CHECKPOINT_ATTR`); a dispatch mode around a compiled region would make the
compiler skip it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

__all__ = [
    "CHECKPOINT_MODES",
    "COMPILED_CHECKPOINT_ATTR",
    "SAVED_OPS",
    "CheckpointMode",
    "checkpoint_mode",
    "checkpoint_region",
    "selective_policy",
]


def _saved_ops() -> frozenset[Any]:
    """The aten ops whose outputs selective checkpointing keeps (those present in this build)."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm", "convolution",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_flash_attention_forward", "_efficient_attention_forward")
    ops = set()
    for name in names:
        packet = getattr(aten, name, None)
        if packet is not None:
            ops.add(packet.default)
    return frozenset(ops)


#: aten ops whose outputs ``selective`` saves (matmuls, convolutions, attention kernels)
SAVED_OPS: frozenset[Any] = _saved_ops()


def selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Keep GEMM, convolution and attention outputs; recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


@dataclass(frozen=True)
class CheckpointMode:
    """One activation-checkpointing mode.

    Attributes:
        name: the value of ``model.checkpointing``.
        description: one line for docs and error messages.
        recompute: the region runs under ``torch.utils.checkpoint`` (False: plain call).
        context_fn: ``checkpoint(..., context_fn=...)`` (None: recompute the whole region).
        inside_compile: a compiled region runs this checkpoint inside its graph.
    """

    name: str
    description: str
    recompute: bool
    context_fn: Callable[[], Any] | None = None
    inside_compile: bool = False


#: ``model.checkpointing`` value -> mode
CHECKPOINT_MODES: dict[str, CheckpointMode] = {
    "none": CheckpointMode("none", "no recomputation: every activation is kept", recompute=False),
    "layer": CheckpointMode("layer", "each layer recomputed whole in backward (only its inputs kept)",
                            recompute=True),
    "selective": CheckpointMode(
        "selective", "matmul, convolution and attention outputs kept; elementwise and norm ops recomputed",
        recompute=True, context_fn=functools.partial(create_selective_checkpoint_contexts, selective_policy),
        inside_compile=True),
}

#: attribute of a compiled region holding ``f(mode_name, *args)``: the region's call with the
#: checkpoint inside the compiled graph (set by ``parallelize.compile_blocks``)
COMPILED_CHECKPOINT_ATTR = "_fw_compiled_checkpoint"


def checkpoint_mode(name: str) -> CheckpointMode:
    """The registered mode ``name`` (an unknown name is a ``ValueError`` listing the modes)."""
    if name not in CHECKPOINT_MODES:
        raise ValueError(f"checkpointing must be one of {', '.join(CHECKPOINT_MODES)}, got {name!r}")
    return CHECKPOINT_MODES[name]


def run_checkpointed(mode_name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` under the checkpoint of ``mode_name`` (no test of grad mode or compile)."""
    mode = CHECKPOINT_MODES[mode_name]
    if not mode.recompute:
        return fn(*args)
    if mode.context_fn is None:
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=mode.context_fn)


def checkpoint_region(mode_name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one region of the forward under the checkpointing mode ``mode_name``.

    Without gradients (inference, stage-1 no-grad PCBs) or in mode ``none`` this is ``fn(*args)``.
    A compiled region (``fn`` carries :data:`COMPILED_CHECKPOINT_ATTR`) whose mode wants the
    checkpoint inside the graph calls that compiled callable instead.
    """
    mode = checkpoint_mode(mode_name)
    if not mode.recompute or not torch.is_grad_enabled():
        return fn(*args)
    inner = getattr(fn, COMPILED_CHECKPOINT_ATTR, None)
    if mode.inside_compile and inner is not None:
        return inner(mode_name, *args)
    return run_checkpointed(mode_name, fn, *args)
