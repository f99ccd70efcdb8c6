"""The optimizers a run can use (``optim.optimizer``): a registry of builders.

=============  ======================================================  ==========================
name           states (per trainable parameter)                        needs
=============  ======================================================  ==========================
adamw          two fp32 moments: 8 bytes (torch ``AdamW``, fused on     torch
               CUDA and CPU)
adamw8bit      two 8-bit block-quantised moments (block 256, dynamic    ``pip install -e ".[lowmem]"``
               quantisation map; tensors under 4096 elements keep fp32  (torchao)
               moments): about 2 bytes (torchao ``AdamW8bit``)
adamw8bit-bnb  the same idea from bitsandbytes (``AdamW8bit``, block-   ``pip install -e ".[lowmem]"``
               wise 8-bit moments, tensors under 4096 elements fp32):   (bitsandbytes)
               about 2 bytes; one fused kernel per parameter, nothing
               compiled
=============  ======================================================  ==========================

At the 1.3B preset (1,086M / 1,288M trainable parameters in stage 1 / 2) the fp32 moments take
8.7 / 10.3 GB and the 8-bit ones 2.2 / 2.6 GB. The 8-bit update differs from fp32 AdamW by
the quantisation of the moments (tested against ``adamw`` after one step, docs/training.md).

What ``adamw8bit`` costs in time (one H200, 1.3B, docs/benchmarks.md): torchao updates one
parameter at a time through a compiled function, so its first step compiles one graph per
parameter shape (about 3 minutes in a fresh process; seconds once the compile cache holds them)
and every later step takes about 0.5 s longer than the fused fp32 step. ``adamw8bit-bnb`` runs
one precompiled kernel per parameter instead (no first-step compile); its GPU step time is not
measured yet, so the memory tiers keep ``adamw8bit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fantasyworld.errors import ConfigError

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "clip_grad_norm"]

ParamGroups = list[dict[str, Any]]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer choice.

    Attributes:
        name: the value of ``optim.optimizer``.
        description: one line for docs and messages.
        build: ``(param_groups, lr, betas, eps, device) -> torch.optim.Optimizer``.
        state_bytes_per_param: bytes of optimizer state per trainable parameter (for the tier table).
        start_note: what a fresh run should be told before its first step ("": nothing).
    """

    name: str
    description: str
    build: Callable[[ParamGroups, float, tuple[float, float], float, torch.device], torch.optim.Optimizer]
    state_bytes_per_param: float
    start_note: str = ""


def _adamw(groups: ParamGroups, lr: float, betas: tuple[float, float], eps: float,
           device: torch.device) -> torch.optim.Optimizer:
    # fused (one kernel; on the CPU too): a non-finite step is skipped on the device (``found_inf``)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type in ("cuda", "cpu") or None)


def _optional_class(choice: str, module: str, name: str, package: str) -> type:
    """``module.name`` of an optional package, or a :class:`ConfigError` naming the extra that has it."""
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        raise ConfigError(
            f"optim.optimizer={choice} needs {package} (8-bit optimizer states): pip install -e \".[lowmem]\" "
            f"(or pip install {package}), or set optim.optimizer=adamw ({exc})") from None


def _adamw8bit(groups: ParamGroups, lr: float, betas: tuple[float, float], eps: float,
               device: torch.device) -> torch.optim.Optimizer:
    return _optional_class("adamw8bit", "torchao.optim", "AdamW8bit", "torchao")(groups, lr=lr, betas=betas, eps=eps)


def _adamw8bit_bnb(groups: ParamGroups, lr: float, betas: tuple[float, float], eps: float,
                   device: torch.device) -> torch.optim.Optimizer:
    adamw8bit = _optional_class("adamw8bit-bnb", "bitsandbytes.optim", "AdamW8bit", "bitsandbytes")
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for group in groups for p in group["params"]):
        raise ConfigError("optim.optimizer=adamw8bit-bnb cannot update FSDP2-sharded parameters (bitsandbytes' "
                          "kernels take plain tensors); with several processes use optim.optimizer=adamw8bit")
    # the same size rule as torchao's: tensors under 4096 elements keep fp32 moments
    return adamw8bit(groups, lr=lr, betas=betas, eps=eps, min_8bit_size=4096)


#: ``optim.optimizer`` value -> builder
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("adamw", "torch AdamW, fp32 moments", _adamw, 8.0),
    "adamw8bit": OptimizerSpec(
        "adamw8bit", "torchao AdamW8bit, 8-bit block-quantised moments", _adamw8bit, 2.0,
        start_note="the first step compiles one update per parameter shape (minutes at the 1.3B preset in a "
                   "fresh process; later steps do not)"),
    "adamw8bit-bnb": OptimizerSpec("adamw8bit-bnb", "bitsandbytes AdamW8bit, 8-bit block-wise moments",
                                   _adamw8bit_bnb, 2.0),
}


def build_optimizer(name: str, groups: ParamGroups, lr: float, betas: tuple[float, float], eps: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``name`` of :data:`OPTIMIZERS` over ``groups`` (each with its ``weight_decay``)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name].build(groups, lr, betas, eps, device)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float | None, device: torch.device) -> torch.Tensor:
    """Global L2 norm of the gradients of ``params`` (before clipping; a device scalar, fp32,
    the full norm of sharded gradients too), clipping them in place to ``max_norm`` (None: no
    clipping). No host read, so it can be captured in a CUDA graph."""
    import math

    from torch.distributed.tensor import DTensor

    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return torch.zeros((), device=device)
    norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm=math.inf if max_norm is None else max_norm,
                                          foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.detach().float()
