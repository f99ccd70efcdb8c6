"""``torch.compile`` applied from outside the model, block by block.

Compiling the repeated blocks (not the whole model) keeps compile time bounded: every
instance of a block class shares one compiled graph (parameters are graph inputs), so
the first call pays for one block of each kind. Regions the model drives piecewise (the
Wan attention/FFN halves of the IRG layers) are covered by compiling the sub-modules they
call (``attn1``, ``ffn``).
"""

from __future__ import annotations

import torch

from fantasyworld.models.fantasyworld import FantasyWorldModel


def compile_blocks(model: FantasyWorldModel, mode: str | None = None, fullgraph: bool = False) -> FantasyWorldModel:
    """Compile Wan blocks, geometry blocks, cross-attention layers and camera adapters in place."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    kw = {"mode": mode, "fullgraph": fullgraph, "dynamic": False}
    for blk in model.transformer.blocks:
        blk.compile(**kw)
        blk.attn1.compile(**kw)
        blk.ffn.compile(**kw)
    for blk in list(model.geometry.frame_blocks) + list(model.geometry.global_blocks):
        blk.compile(**kw)
        blk.attn.compile(**kw)
        blk.mlp.compile(**kw)
    for layer in model.interactions:
        layer.compile(**kw)
    for adapter in model.camera_adapters.values():
        adapter.compile(**kw)
    return model
