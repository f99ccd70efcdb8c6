"""Placement helpers of the memory tiers (:mod:`fantasyworld.inference.memory_tiers`).

:class:`HostOffload` keeps an encoder in pinned host memory and streams it to the GPU for its
phase; :class:`BlockSwap` streams frozen blocks' weights from pinned host memory one layer
ahead of use (the Wan blocks under the block-swap tiers, an encoder's layers during its phase);
:class:`PhaseMeter` records the seconds and the peak GPU memory of each phase of a call.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlockSwap", "HostOffload", "PhaseMeter", "repeated_blocks", "set_head_chunks", "to_device_except"]


def _pinned_host(t: torch.Tensor) -> torch.Tensor:
    """``t``'s data in pinned host memory (itself when it already is; a copy otherwise)."""
    return t.data if (t.device.type == "cpu" and t.data.is_pinned()) else t.data.to("cpu").pin_memory()


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The longest ``ModuleList`` of a module (the encoder layers of UMT5 / CLIP), or ``[]``."""
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


#: token-embedding tables at least this large stay in host memory during an encoder's visit
#: and are looked up there (UMT5-XXL's is 256384 x 4096, 1.96 GiB in bf16)
HOST_EMBEDDING_BYTES = 64 * 2**20


def _host_embedding_forward(emb: nn.Embedding, device: torch.device, ids: torch.Tensor) -> torch.Tensor:
    """``emb(ids)`` from its host table: the ids go to the host, only the rows come back
    (``(*ids.shape, dim)`` on ``device``; for two 512-token prompts 8 MiB instead of the table)."""
    rows = F.embedding(ids.to("cpu"), emb.weight, emb.padding_idx, emb.max_norm, emb.norm_type,
                       emb.scale_grad_by_freq, emb.sparse)
    return rows.to(device)


class HostOffload:
    """An encoder that lives in pinned host memory and visits the GPU for its phase.

    ``with offload: ...`` copies the module's tensors outside its repeated blocks to the GPU
    (for UMT5-XXL: the final norm, CLIP's embeddings and projections) and streams the blocks
    one ahead of use through a :class:`BlockSwap`, so the phase holds about two blocks instead
    of the whole encoder (UMT5-XXL: 10.6 GiB in bf16). Token-embedding tables of at least
    ``host_embedding_bytes`` (UMT5-XXL's 1.96 GiB) never visit: their lookups run on the host
    and only the looked-up rows are copied (the same values, bit for bit). Leaving drops the
    GPU copies (the host copy is the master: the weights are frozen). Visits nest: an inner
    ``with`` is a no-op. On the CPU, or with ``enabled=False``, nothing moves.

    Construction moves **every** tensor of the module, its repeated blocks included, to pinned
    host memory: an encoder that was built or loaded on the GPU holds nothing there between
    visits, not even before its first one (the blocks used to stay on the GPU until the first
    visit's block swap pinned them, which added UMT5-XXL's 8.5 GiB of blocks and CLIP's to the
    camera and text phases of a process's first call).
    """

    def __init__(self, module: nn.Module | None, device: torch.device, enabled: bool = True,
                 host_embedding_bytes: int = HOST_EMBEDDING_BYTES) -> None:
        self.module = module
        self.device = torch.device(device)
        self.active = module is not None and enabled and self.device.type == "cuda"
        self._depth = 0
        if not self.active:
            return
        self.blocks = repeated_blocks(module)
        block_ids = {id(t) for b in self.blocks for t in [*b.parameters(), *b.buffers()]}
        in_blocks = {id(m) for b in self.blocks for m in b.modules()}
        #: embedding modules looked up on the host during a visit (tied tables: every module using one)
        self.host_embeddings = [
            m for m in module.modules()
            if isinstance(m, nn.Embedding) and id(m) not in in_blocks
            and m.weight.numel() * m.weight.element_size() >= host_embedding_bytes
        ]
        kept_on_host = block_ids | {id(m.weight) for m in self.host_embeddings}
        self._rest = []
        for t in [*module.parameters(), *module.buffers()]:
            host = _pinned_host(t)  # every tensor, the blocks too: nothing stays on the GPU until a visit
            t.data = host
            if id(t) not in kept_on_host:
                self._rest.append((t, host))
        self._swap: BlockSwap | None = None
        self._pinned_blocks = False

    def __enter__(self) -> HostOffload:
        self._depth += 1
        if not self.active or self._depth > 1:
            return self
        for t, host in self._rest:
            t.data = host.to(self.device, non_blocking=True)
        for emb in self.host_embeddings:
            emb.forward = functools.partial(_host_embedding_forward, emb, self.device)
        if self.blocks:
            self._swap = BlockSwap(self.blocks, self.blocks, self.device)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if not self.active or self._depth > 0:
            return
        torch.cuda.current_stream(self.device).synchronize()
        for t, host in self._rest:
            t.data = host
        for emb in self.host_embeddings:
            del emb.forward  # back to nn.Embedding.forward
        if self._swap is not None:
            self._swap.detach()
            self._swap = None
        torch.cuda.empty_cache()


def set_head_chunks(model: nn.Module, chunks: tuple[int, int] | None) -> int:
    """Set every DPT head's chunking without gradients (``MemoryTier.heads_chunks``, the heads'
    ``inference_chunks``): ``chunks = (temporal_chunk_size, frames_chunk_size)``, ``None``: the
    heads' own. A model that also trains keeps its training chunking (gradients recorded).
    Returns the number of heads set."""
    heads = [m for m in model.modules() if hasattr(m, "inference_chunks")]
    for head in heads:
        head.inference_chunks = None if chunks is None else tuple(chunks)
    return len(heads)


def to_device_except(model: nn.Module, skip: Iterable[nn.Module], device: torch.device) -> None:
    """Move every parameter and buffer of ``model`` to ``device`` except those of the ``skip``
    sub-modules (and their descendants), which stay where they are."""
    skipped = {id(m) for s in skip for m in s.modules()}
    for module in model.modules():
        if id(module) not in skipped:
            module._apply(lambda t: t.to(device), recurse=False)  # this module's own tensors only


class PhaseMeter:
    """Seconds and peak GPU memory (GiB, ``torch.cuda.max_memory_allocated``) per named phase.

    ``with meter.phase("denoise"): ...`` resets the peak counter at entry and records both at
    exit (after a device synchronize, so asynchronous kernels count in their phase). On the
    CPU only the seconds are recorded.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                self.peak_gib[name] = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class BlockSwap:
    """Keep frozen blocks' weights in pinned host memory and give each to the GPU for its layer.

    For a sequence of layer modules run in order, each using one frozen block (the PCB and IRG
    layers of :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel`, which reference
    their Wan block), a forward pre-hook makes the layer's block resident (waiting for its
    copy) and starts copying the **next** layer's block on a side stream; a forward hook drops
    the block's GPU tensors afterwards (the host copy is the master: the weights are frozen,
    so nothing is copied back). At most two blocks are on the GPU at a time. Parameters and
    buffers are swapped by replacing ``.data``, so module structure and names are untouched.

    Only for inference under ``torch.no_grad()`` (backward would need the weights again).

    Args:
        layers: the layer modules in execution order.
        blocks: the frozen block each layer uses (same length as ``layers``).
        device: the CUDA device the layers run on.
    """

    def __init__(self, layers: list[nn.Module], blocks: list[nn.Module], device: torch.device) -> None:
        if len(layers) != len(blocks):
            raise ValueError(f"BlockSwap: {len(layers)} layers but {len(blocks)} blocks")
        self.device = torch.device(device)
        self.blocks = blocks
        self.stream = torch.cuda.Stream(self.device)
        self._host: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self._ready: dict[int, torch.cuda.Event] = {}
        for block in blocks:
            pairs = []
            for t in [*block.parameters(), *block.buffers()]:
                host = _pinned_host(t)
                t.data = host
                pairs.append((t, host))
            self._host.append(pairs)
        torch.cuda.empty_cache()
        self._handles = []
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: self._before(i)))
            self._handles.append(layer.register_forward_hook(lambda m, a, o, i=i: self._after(i)))

    def _prefetch(self, i: int) -> None:
        if i >= len(self.blocks) or i in self._ready:
            return
        with torch.cuda.stream(self.stream):
            for t, host in self._host[i]:
                t.data = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self._ready[i] = event

    def _before(self, i: int) -> None:
        self._prefetch(i)
        torch.cuda.current_stream(self.device).wait_event(self._ready.pop(i))
        for t, _ in self._host[i]:
            t.data.record_stream(torch.cuda.current_stream(self.device))
        self._prefetch((i + 1) % len(self.blocks))  # the next layer, or layer 0 of the next forward

    def _after(self, i: int) -> None:
        for t, host in self._host[i]:
            t.data = host

    def detach(self) -> None:
        """Drop the hooks; every block stays in (pinned) host memory."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        torch.cuda.current_stream(self.device).synchronize()
        for pairs in self._host:
            for t, host in pairs:
                t.data = host
        self._ready.clear()

    def remove(self) -> None:
        """Drop the hooks and put every block back on the GPU."""
        self.detach()
        for pairs in self._host:
            for t, host in pairs:
                t.data = host.to(self.device)
