"""Low-precision loading keeps every module that a ``_keep_in_fp32_modules`` list names in fp32.

Wan declares its list on ``WanTransformer3DModel`` (timestep embedder, modulation tables,
norms) and the geometry branch declares its timestep MLPs; both sit below the
``FantasyWorldModel`` root that ``FantasyWorldPipeline.from_pretrained`` casts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fantasyworld.inference.memory_tiers import MEMORY_TIERS
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.testing import write_tiny_checkpoint
from fantasyworld.models.wan_loading import cast_keeping_fp32, fp32_parameter_names


@pytest.fixture(scope="module", params=list(MEMORY_TIERS))
def pipe_bf16(request, tmp_path_factory) -> FantasyWorldPipeline:
    # every memory tier loads through the same host-memory cast before placing the modules
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=1)
    return FantasyWorldPipeline.from_pretrained(ckpt, dtype="bfloat16", memory=request.param)


def _declared_fp32(model: nn.Module) -> dict[str, list[str]]:
    """Per declaring module (by path): the parameters whose path below it names a listed module."""
    out: dict[str, list[str]] = {}
    for prefix, module in model.named_modules():
        keep = getattr(module, "_keep_in_fp32_modules", None) or ()
        names = [f"{prefix}.{n}" for n, _ in module.named_parameters() if set(n.split(".")) & set(keep)]
        if names:
            out[prefix] = names
    return out


def test_bf16_pipeline_keeps_wan_and_geometry_fp32_modules(pipe_bf16) -> None:
    model = pipe_bf16.model
    params = dict(model.named_parameters())
    declared = _declared_fp32(model)
    assert set(declared) == {"transformer", "geometry"}
    kept = [n for names in declared.values() for n in names]
    for name in ("transformer.scale_shift_table", "transformer.blocks.0.scale_shift_table",
                 "transformer.condition_embedder.time_embedder.linear_1.weight",
                 "geometry.time_embedding.0.weight", "geometry.time_projection.1.weight"):
        assert name in kept, name
    wrong = [n for n in kept if params[n].dtype != torch.float32]
    assert not wrong, f"declared fp32 but cast: {wrong}"
    cast = [n for n, p in params.items() if n not in kept]
    assert cast and all(params[n].dtype == torch.bfloat16 for n in cast)
    assert params["transformer.blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert params["geometry.frame_blocks.0.attn.qkv.weight"].dtype == torch.bfloat16


def test_bf16_pipeline_generates_finite_outputs(pipe_bf16) -> None:
    result = pipe_bf16("a room", camera="orbit", seed=0, num_frames=5, height=32, width=32, num_steps=2,
                       progress=False, max_points=100)
    assert np.isfinite(result.depth).all() and np.isfinite(result.pose_enc).all()


def test_nested_keep_list_is_honoured_below_the_root() -> None:
    class Inner(nn.Module):
        _keep_in_fp32_modules = ("norm",)

        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.proj = nn.Linear(4, 4)

    root = nn.Sequential(Inner(), nn.LayerNorm(4))  # the root declares nothing
    assert fp32_parameter_names(root) == {"0.norm.weight", "0.norm.bias"}
    cast_keeping_fp32(root, torch.bfloat16)
    assert root[0].norm.weight.dtype == torch.float32
    assert root[0].proj.weight.dtype == torch.bfloat16
    assert root[1].weight.dtype == torch.bfloat16  # "norm" is listed by Inner only
