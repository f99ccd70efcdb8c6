"""Memory tiers of inference: what stays on the GPU, what waits in host memory, per phase.

A generation has phases with different residents: text/image encoding (UMT5, CLIP, the VAE
encoder for I2V), denoising (the transformer and the geometry branch), the heads, and the VAE
decode. A :class:`MemoryTier` says, for a card size, which of these share the card:

* ``offload_encoders``: the text and image encoders live in host memory and visit the GPU
  only for their phase (UMT5-XXL alone is 10.6 GiB in bf16);
* ``cfg_batch``: run the conditional and unconditional passes as one batch-2 forward (faster)
  or one after the other (half the activation memory);
* ``block_swap``: the frozen Wan blocks' weights live in pinned host memory and are copied to
  the GPU one layer ahead of use on a side stream
  (:class:`~fantasyworld.inference.memory.BlockSwap`), so only two blocks are resident at a time;
* ``vae_tiling``: tiled VAE decode;
* ``heads_chunks``: the DPT heads' chunking at inference, ``(latent frames per step of the
  temporal upsamplers, pixel frames per step of the fusion)``; ``None`` keeps the heads' own
  (all latent frames, 16 pixel frames, as the official). Both chunkings are exact (causal
  convolutions with carried caches; a per-frame fusion), so the values do not change; at 14B,
  81x336x592, ``(4, 4)`` lowers the last step's activation peak from 3.59 to 2.34 GiB
  (``benchmarks/activation_peak.py``).

Tiers are a registry (:data:`MEMORY_TIERS`, keyed by the card's GiB), chosen with
``FantasyWorldPipeline.from_pretrained(memory=...)`` or ``fantasyworld generate --memory``.
Float8 weights are a separate choice (:data:`FP8_SCOPES`, ``--fp8``). The figures each tier
reaches are in docs/benchmarks.md; the placement helpers are in
:mod:`fantasyworld.inference.memory`. This module imports nothing heavy (the CLI reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MEMORY_TIER", "FP8_SCOPES", "MEMORY_TIERS", "MemoryTier", "get_memory_tier"]


@dataclass(frozen=True)
class MemoryTier:
    """Placement choices for one card size (see the module docstring)."""

    name: str
    description: str
    offload_encoders: bool = False
    cfg_batch: bool = True
    block_swap: bool = False
    vae_tiling: bool | str = "auto"
    heads_chunks: tuple[int, int] | None = (4, 4)


#: card GiB -> tier
MEMORY_TIERS: dict[str, MemoryTier] = {
    "80": MemoryTier("80", "transformer and VAE resident, encoders in host memory between uses, CFG passes batched",
                     offload_encoders=True),
    "48": MemoryTier("48", "encoders in host memory between uses, CFG passes one after the other",
                     offload_encoders=True, cfg_batch=False, vae_tiling=True),
    "24": MemoryTier("24", "as 48, and the frozen Wan blocks streamed from pinned host memory one layer ahead",
                     offload_encoders=True, cfg_batch=False, block_swap=True, vae_tiling=True),
}


#: the pipeline's default tier
DEFAULT_MEMORY_TIER = "80"


def get_memory_tier(name: str | MemoryTier | None) -> MemoryTier:
    """A tier by name (``None``: :data:`DEFAULT_MEMORY_TIER`); a :class:`MemoryTier` passes through."""
    if isinstance(name, MemoryTier):
        return name
    key = DEFAULT_MEMORY_TIER if name is None else str(name)
    if key not in MEMORY_TIERS:
        raise ValueError(f"memory tier must be one of {tuple(MEMORY_TIERS)}, got {name!r}")
    return MEMORY_TIERS[key]


#: what ``FantasyWorldPipeline.quantize_fp8(scope)`` turns into float8: the model's sub-modules (dotted names) whose
#: linear layers it replaces. ``wan``: the frozen Wan blocks (the measured option, docs/benchmarks.md);
#: ``all``: also the geometry branch's frame / global blocks and the IRG layers' cross-attention.
FP8_SCOPES: dict[str, tuple[str, ...]] = {
    "wan": ("transformer.blocks",),
    "all": ("transformer.blocks", "geometry.frame_blocks", "geometry.global_blocks", "interactions"),
}
