"""Process group, devices and FSDP2 sharding for training.

One code path from a single CPU process to ``torchrun --nproc_per_node N``:

* :func:`init_world` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``. With one
  process there is no process group and the model stays a plain module. With several it
  starts a process group (``nccl`` on GPUs, ``gloo`` on CPU) and :func:`shard_model`
  applies FSDP2 ``fully_shard``.
* Sharding layout, declared by the model (``FantasyWorldModel._fsdp_units`` ...) and applied
  from outside it by :func:`fantasyworld.models.parallelize.apply_fsdp`, innermost first,
  then the root:

  - each geometry frame block, global block, bidirectional cross-attention and head is its
    own FSDP unit;
  - the :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel` wrapper is the root
    (the Wan model's own ``forward`` never runs, so its root parameters would
    never be unsharded if ``WanTransformer3DModel`` were the root); it holds the latent
    bridge, special tokens, timestep MLPs, pose encoder and camera adapters;
  - the frozen Wan2.1 parameters are ``ignored_params``: replicated on every rank, never
    all-gathered. The FantasyWorld forward runs Wan blocks in halves
    (``wan_backbone.attention_half`` / ``ffn_half`` reach into a block's sub-modules
    without calling the block), so a Wan block cannot be an FSDP unit whose hooks fire;
    frozen weights have no gradients or optimizer states, so replication costs only the
    bf16 weights (2.6 GB for 1.3B, 28 GB for 14B per GPU).
  - the geometry global blocks are also run in halves in stage 2
    (``modulation_terms`` / ``attention_half`` / ``ffn_half``, called by the
    :class:`~fantasyworld.models.irg_layer.IRGLayer`): these methods are registered with
    ``register_fsdp_forward_method`` so that calling them all-gathers the block's
    parameters as ``forward`` would.

* Mixed precision: ``MixedPrecisionPolicy(param_dtype=None, reduce_dtype=float32,
  cast_forward_inputs=False)``: parameters keep their stored dtype (trainable fp32, frozen
  Wan bf16 with fp32-kept modules), bf16 compute comes from ``torch.autocast``, gradients are
  reduced in fp32, and forward inputs are never cast (a cast would turn the fp32 RoPE tables
  into bf16 and break non-reentrant checkpointing).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fantasyworld.models.parallelize import apply_fsdp

__all__ = ["World", "all_reduce_max", "all_reduce_mean", "init_world", "shard_model", "shutdown"]

@dataclass
class World:
    """Where this process runs.

    Attributes:
        rank, world_size, local_rank: torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.
        device: this process's device (``cuda:LOCAL_RANK`` or ``cpu``).
        distributed: a process group exists (``world_size > 1``).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: str = "auto", timeout_s: float = 1800.0) -> World:
    """Start the process group if launched by torchrun with several processes.

    Args:
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda``.
        timeout_s: collective timeout.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    distributed = world_size > 1
    if distributed and not dist.is_initialized():
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return World(rank, world_size, local_rank, dev, distributed)


def shutdown(world: World) -> None:
    """Destroy the process group (if any)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_model(model: nn.Module, world: World) -> nn.Module:
    """Apply FSDP2 to a :class:`FantasyWorldModel` already on ``world.device`` (see module doc).

    A no-op for a single process. Must run after the weights are loaded and before the
    optimizer is built. The units are the model's declaration, applied by
    :func:`fantasyworld.models.parallelize.apply_fsdp` over a 1-D mesh of all ranks.
    """
    if not world.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(world.device.type, (world.world_size,))
    return apply_fsdp(model, mesh)


def all_reduce_max(values: torch.Tensor, world: World) -> torch.Tensor:
    """Elementwise max over ranks (in place on a copy), on the input's device (a device tensor
    is not read back to the host); identity for one process."""
    if not world.distributed:
        return values
    out = values.detach().clone().to(world.device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.to(values.device)


def all_reduce_mean(values: torch.Tensor, world: World) -> torch.Tensor:
    """Elementwise mean over ranks, on the input's device; identity for one process."""
    if not world.distributed:
        return values
    out = values.detach().clone().to(world.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / world.world_size).to(values.device)


def gather_objects(obj: object, world: World) -> list[object]:
    """Every rank's ``obj`` (a list in rank order) on every rank."""
    if not world.distributed:
        return [obj]
    out: list[object] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    """Wait for all ranks (no-op for one process)."""
    if world.distributed:
        dist.barrier()
