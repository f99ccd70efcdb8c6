"""Process group, devices and FSDP2 sharding for training.

One code path from a single CPU process to ``torchrun --nproc_per_node N``:

* :func:`init_world` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``. With one
  process there is no process group and the model stays a plain module. With several it
  starts a process group (``nccl`` on GPUs, ``gloo`` on CPU) and :func:`shard_model`
  applies FSDP2 ``fully_shard``.
* Sharding layout (applied from outside the model, innermost first, then the root):

  - each geometry frame block, global block, bidirectional cross-attention and head is its
    own FSDP unit;
  - the :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel` wrapper is the root
    (STACK.md: the Wan model's own ``forward`` never runs, so its root parameters would
    never be unsharded if ``WanTransformer3DModel`` were the root); it holds the latent
    bridge, special tokens, timestep MLPs, pose encoder and camera adapters;
  - the frozen Wan2.1 parameters are ``ignored_params``: replicated on every rank, never
    all-gathered. The FantasyWorld forward runs Wan blocks in halves
    (``wan_backbone.attention_half`` / ``ffn_half`` reach into a block's sub-modules
    without calling the block), so a Wan block cannot be an FSDP unit whose hooks fire;
    frozen weights have no gradients or optimizer states, so replication costs only the
    bf16 weights (2.6 GB for 1.3B, 28 GB for 14B per GPU).
  - the geometry global blocks are also run in halves in stage 2
    (``modulation_terms`` / ``attention_half`` / ``ffn_half``): these methods are
    registered with ``register_fsdp_forward_method`` so that calling them all-gathers the
    block's parameters as ``forward`` would.

* Mixed precision: ``MixedPrecisionPolicy(param_dtype=None, reduce_dtype=float32,
  cast_forward_inputs=False)``: parameters keep their stored dtype (trainable fp32, frozen
  Wan bf16 with fp32-kept modules), bf16 compute comes from ``torch.autocast``, gradients are
  reduced in fp32, and forward inputs are never cast (a cast would turn the fp32 RoPE tables
  into bf16 and break non-reentrant checkpointing; STACK.md).
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["World", "all_reduce_max", "all_reduce_mean", "init_world", "shard_model", "shutdown"]

#: Geometry-block methods that the FantasyWorld forward calls instead of ``forward``.
GLOBAL_BLOCK_METHODS = ("modulation_terms", "attention_half", "ffn_half")


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
    optimizer is built.
    """
    if not world.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    # FSDP2 warns when a unit returns a view, because an in-place op on it would skip the
    # pre-backward all-gather. Nothing downstream of the heads/blocks modifies outputs in
    # place (the distributed-equivalence test checks the gradients), so the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32, cast_forward_inputs=False)
    geo = model.geometry
    for block in geo.frame_blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    for block in geo.global_blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
        for name in GLOBAL_BLOCK_METHODS:
            register_fsdp_forward_method(block, name)
    for inter in model.interactions:
        fully_shard(inter, mesh=mesh, mp_policy=mp)
    for head in (geo.depth_head, geo.point_head, geo.camera_head):
        fully_shard(head, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=set(model.transformer.parameters()))
    return model


def all_reduce_max(values: torch.Tensor, world: World) -> torch.Tensor:
    """Elementwise max over ranks (in place on a copy); identity for one process."""
    if not world.distributed:
        return values
    out = values.detach().clone().to(world.device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.cpu()


def all_reduce_mean(values: torch.Tensor, world: World) -> torch.Tensor:
    """Elementwise mean over ranks; identity for one process."""
    if not world.distributed:
        return values
    out = values.detach().clone().to(world.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / world.world_size).cpu()


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
