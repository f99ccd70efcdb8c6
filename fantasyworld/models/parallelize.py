"""Activation checkpointing, ``torch.compile`` and FSDP2, applied from outside the model.

torchtitan's order (``models/flux/parallelize.py``): 1. activation checkpointing, 2. per-block
compile, 3. ``fully_shard`` on each unit, then on the root. The model file imports none of
this; it declares, as class attributes of
:class:`~fantasyworld.models.fantasyworld.FantasyWorldModel`, what is compiled
(``_compile_regions``, per granularity), what is an FSDP unit (``_fsdp_units``), which methods other than
``forward`` the model calls on a unit (``_fsdp_forward_methods``) and what is replicated
instead of sharded (``_fsdp_ignored``). Paths name sub-modules; a trailing ``.*`` means
every element of a ``ModuleList``/``ModuleDict``.

* Compile: repeated layers, not the whole model, keep compile time bounded: every instance
  of a layer class shares one compiled graph (parameters are graph inputs), so the first
  call pays for one layer of each kind. The default granularity compiles each forward
  layer whole (the PCB and IRG layer modules, which reference their parts); ``blocks``
  compiles the blocks and the sub-modules the layers drive piecewise (``ffn``, ``attn``,
  ``mlp``; the Wan self-attention runs through ``wan_backbone.self_attention``, so it stays
  eager in this scheme).
* FSDP2 (see :mod:`fantasyworld.training.parallel` for the process group and the reasons):
  each declared unit is its own FSDP unit, the model wrapper is the root, the frozen Wan
  parameters are ``ignored_params`` (replicated, never all-gathered).
* Mixed precision: ``MixedPrecisionPolicy(param_dtype=None, reduce_dtype=float32,
  cast_forward_inputs=False)``: parameters keep their stored dtype, bf16 compute comes from
  ``torch.autocast``, gradients are reduced in fp32, forward inputs are never cast (a cast
  would turn the fp32 RoPE tables into bf16 and break non-reentrant checkpointing).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fantasyworld.models.checkpointing import COMPILED_CHECKPOINT_ATTR, run_checkpointed

__all__ = ["ACCUMULATED_RECOMPILES_PER_SHAPE", "COMPILE_GRANULARITIES", "RECOMPILES_PER_SHAPE", "apply_fsdp",
           "compile_blocks", "parallelize", "resolve_modules"]


def resolve_modules(model: nn.Module, path: str) -> Iterator[nn.Module]:
    """The sub-modules a declared path names: ``a.b`` is one module, ``a.b.*`` every child of ``a.b``."""
    if path.endswith(".*"):
        yield from model.get_submodule(path[:-2]).children()
    else:
        yield model.get_submodule(path)


#: compile granularities a model declares in ``_compile_regions`` (the first is the default)
COMPILE_GRANULARITIES = ("layers", "blocks")


#: recompile headroom per sample shape: each region's cache holds one entry per (shape, guard variant)
RECOMPILES_PER_SHAPE = 64
ACCUMULATED_RECOMPILES_PER_SHAPE = 256


def _checkpointed_call(block: nn.Module, mode_name: str, *args: Any) -> Any:
    """``block(*args)`` under checkpointing mode ``mode_name``, traced whole by the compiler."""
    return run_checkpointed(mode_name, block._call_impl, *args)


def compile_blocks(model: nn.Module, mode: str | None = None, fullgraph: bool = False,
                   granularity: str = "layers", num_shapes: int = 1, backend: Any = "inductor",
                   heads: bool = False) -> nn.Module:
    """Compile every region of ``model._compile_regions[granularity]`` in place (and, with
    ``heads``, every head the geometry branch built: small presets spend most of their
    kernel launches in the DPT heads).

    ``layers`` (default) compiles each forward layer whole (a Wan block with its camera
    adapter; an IRG layer: Wan attention half, geometry attention half, bidirectional
    cross-attention and both FFN halves in one graph); ``blocks`` compiles the repeated blocks
    and the sub-modules the layers drive piecewise (the earlier scheme, kept for comparison).
    Layers of one kind share one graph (their parameters are graph inputs), so the first call
    compiles one layer of each kind.

    Each whole region (part ``""``) also gets a compiled callable with the activation checkpoint
    *inside* its graph (:data:`~fantasyworld.models.checkpointing.COMPILED_CHECKPOINT_ATTR`): the
    model uses it for the ``selective`` mode, whose policy the compiler must see (a checkpoint
    dispatch mode around a compiled region would make the compiler skip the region).

    Shapes are static (``dynamic=False``): each distinct sample shape (``num_shapes``, the
    number of resolution/frame buckets of a run, 1 without) gets its own specialised graph
    the first time it is seen and is reused afterwards, never recompiled per batch. The
    dynamo recompile limits are raised to ``num_shapes`` times the single-shape headroom
    (:data:`RECOMPILES_PER_SHAPE`, :data:`ACCUMULATED_RECOMPILES_PER_SHAPE`), so no bucket
    falls back to eager. ``backend``: the ``torch.compile`` backend (``inductor``;
    ``aot_eager`` or a counting backend for tests).
    """
    if granularity not in model._compile_regions:
        raise ValueError(f"compile granularity must be one of {tuple(model._compile_regions)}, got {granularity!r}")
    if num_shapes < 1:
        raise ValueError(f"num_shapes must be >= 1, got {num_shapes}")
    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, RECOMPILES_PER_SHAPE * num_shapes)
    if num_shapes > 1:
        cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit,
                                               ACCUMULATED_RECOMPILES_PER_SHAPE * num_shapes)
    kw = {"mode": mode, "fullgraph": fullgraph, "dynamic": False, "backend": backend}
    for path, parts in model._compile_regions[granularity].items():
        for block in resolve_modules(model, path):
            for part in parts:
                (block.get_submodule(part) if part else block).compile(**kw)
            if "" in parts:
                inside = torch.compile(functools.partial(_checkpointed_call, block), **kw)
                setattr(block, COMPILED_CHECKPOINT_ATTR, inside)
    if heads:
        for spec in model.geometry.head_specs:
            model.geometry.get_submodule(spec.module).compile(**kw)
    return model


def apply_fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    """``fully_shard`` each unit of ``model._fsdp_units`` (innermost first), then the root.

    Args:
        model: the model, on its device, weights loaded, before the optimizer is built.
        mesh: a 1-D ``DeviceMesh`` over the data-parallel ranks.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    # FSDP2 warns when a unit returns a view, because an in-place op on it would skip the
    # pre-backward all-gather. Nothing downstream of the heads/blocks modifies outputs in
    # place (the distributed-equivalence test checks the gradients), so the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for path in model._fsdp_units:
        for unit in resolve_modules(model, path):
            fully_shard(unit, mesh=mesh, mp_policy=mp)
            for name in model._fsdp_forward_methods.get(path, ()):
                register_fsdp_forward_method(unit, name)
    ignored = {p for path in model._fsdp_ignored for m in resolve_modules(model, path) for p in m.parameters()}
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=ignored)
    return model


def parallelize(
    model: nn.Module,
    mesh: Any = None,
    *,
    activation_checkpointing: bool | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
) -> nn.Module:
    """Apply 1. activation checkpointing, 2. compile, 3. FSDP (if ``mesh``), in that order.

    Args:
        activation_checkpointing: set ``model.gradient_checkpointing`` (None: leave it).
        compile: compile the declared regions (:func:`compile_blocks`).
        mesh: a 1-D device mesh; None for a single process (no sharding).
    """
    if activation_checkpointing is not None:
        model.gradient_checkpointing = activation_checkpointing
    if compile:
        compile_blocks(model, mode=compile_mode)
    if mesh is not None:
        apply_fsdp(model, mesh)
    return model
