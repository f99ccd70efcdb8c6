"""The IRG layers are modules that own nothing, and parallelism is the model's declaration applied from outside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fantasyworld.inference.testing import tiny_model
from fantasyworld.models import parallelize as par
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.irg_layer import IRGLayer


@pytest.fixture(scope="module", params=["tiny", "tiny-i2v"])
def model(request) -> FantasyWorldModel:
    return tiny_model(request.param)


def test_irg_layers_reference_their_parts_and_add_no_weights(model) -> None:
    cfg = model.config
    assert len(model.irg_layers) == cfg.num_irg
    assert not any(k.startswith(("irg_layers", "pcb_layers")) for k in model.state_dict())
    assert not any(n.startswith(("irg_layers", "pcb_layers")) for n, _ in model.named_parameters())
    for i, layer in enumerate(model.irg_layers):
        assert isinstance(layer, IRGLayer) and not list(layer.parameters()) and not list(layer.children())
        assert layer.wan_block is model.transformer.blocks[cfg.num_pcb + i]
        assert layer.global_block is model.geometry.global_blocks[i]
        assert layer.interaction is model.interactions[i]
        key = str(cfg.num_pcb + i)
        assert layer.camera_adapter is (model.camera_adapters[key] if key in model.camera_adapters else None)


def test_checkpoint_heads_is_set_on_the_heads_once(model) -> None:
    heads = (model.geometry.depth_head, model.geometry.point_head)
    model.checkpoint_heads = True
    assert model.checkpoint_heads and all(h.checkpoint_fusion for h in heads)
    model.checkpoint_heads = False
    assert not model.checkpoint_heads and not any(h.checkpoint_fusion for h in heads)


def test_declared_paths_resolve_and_units_cover_every_head_and_block(model) -> None:
    regions = [path for table in model._compile_regions.values() for path in table]
    for table in (regions, model._fsdp_units, model._fsdp_forward_methods, model._fsdp_ignored):
        for path in table:
            assert list(par.resolve_modules(model, path)), path
    for path, methods in model._fsdp_forward_methods.items():
        assert path in model._fsdp_units
        for unit in par.resolve_modules(model, path):
            assert all(callable(getattr(unit, m)) for m in methods)
    in_units = {id(p) for path in model._fsdp_units for m in par.resolve_modules(model, path) for p in m.parameters()}
    geo = model.geometry
    for module in [*geo.frame_blocks, *geo.global_blocks, *model.interactions, geo.depth_head, geo.point_head,
                   geo.camera_head]:
        assert all(id(p) in in_units for p in module.parameters())
    ignored = {id(p) for path in model._fsdp_ignored for m in par.resolve_modules(model, path) for p in m.parameters()}
    assert ignored == {id(p) for p in model.transformer.parameters()}
    assert not ignored & in_units


def test_compile_blocks_compiles_exactly_the_declared_regions(model, monkeypatch) -> None:
    compiled: list[int] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append(id(self)))
    par.compile_blocks(model, granularity="blocks")
    expected = []
    for blk in model.transformer.blocks:
        expected += [blk, blk.ffn]  # attn1 runs through wan_backbone.self_attention
    for blk in [*model.geometry.frame_blocks, *model.geometry.global_blocks]:
        expected += [blk, blk.attn, blk.mlp]
    expected += [*model.interactions, *model.camera_adapters.values()]
    assert sorted(compiled) == sorted(id(m) for m in expected)
    # default: each forward layer whole (every Wan block is in exactly one PCB or IRG layer)
    compiled.clear()
    par.compile_blocks(model)
    layers = [*model.pcb_layers, *model.irg_layers, *model.geometry.frame_blocks, *model.geometry.global_blocks]
    assert sorted(compiled) == sorted(id(m) for m in layers)
    covered = [layer.wan_block for layer in [*model.pcb_layers, *model.irg_layers]]
    assert [id(b) for b in covered] == [id(b) for b in model.transformer.blocks]
    # heads=True (the trainer's model.compile): the layers and every built head
    compiled.clear()
    par.compile_blocks(model, heads=True)
    heads = [model.geometry.depth_head, model.geometry.point_head, model.geometry.camera_head]
    assert sorted(compiled) == sorted(id(m) for m in [*layers, *heads])
    with pytest.raises(ValueError, match="granularity"):
        par.compile_blocks(model, granularity="model")


def test_parallelize_applies_checkpointing_then_compile_in_order(model, monkeypatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(par, "compile_blocks", lambda m, mode=None: order.append(f"compile:{m.gradient_checkpointing}"))
    monkeypatch.setattr(par, "apply_fsdp", lambda m, mesh: order.append(f"fsdp:{mesh}"))
    before = model.gradient_checkpointing
    try:
        par.parallelize(model, "mesh", activation_checkpointing=True, compile=True)
    finally:
        model.gradient_checkpointing = before
    assert order == ["compile:True", "fsdp:mesh"]


def test_irg_layer_matches_the_layer_written_out(model) -> None:
    # stage-2 forward with the layer module equals the same steps written out by hand
    from fantasyworld.layers.bicross_attention import bicross_rotary
    from fantasyworld.models import wan_backbone as wanb

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3 * 2 * 3, cfg.wan_dim, generator=g)
    grid = (3, 2, 3)
    p = model.geometry.patch_start_idx + 6
    geo = torch.randn(1, 3 * p, cfg.geo_dim, generator=g)
    latents = torch.randn(1, model.transformer.config.in_channels, 3, 4, 6, generator=g)
    text = torch.randn(1, 512 if cfg.is_i2v else 8, model.transformer.config.text_dim, generator=g)
    image = torch.randn(1, 257, model.transformer.config.image_dim, generator=g) if cfg.is_i2v else None
    inputs = wanb.embed_inputs(model.transformer, latents, torch.tensor([500.0]), text, image)
    temb6 = model.geometry.time_modulation(torch.tensor([500.0]))
    _, rope_global = model.geometry.rotary(grid, x.device)
    rope_v, rope_g = bicross_rotary(grid, cfg.bicross_dim // cfg.bicross_heads, model.geometry.patch_start_idx,
                                    x.device)
    layer = model.irg_layers[0]
    with torch.no_grad():
        got_x, got_g = layer(x, geo, inputs, temb6, rope_global, rope_v, rope_g, None)
        blk, glob = model.transformer.blocks[cfg.num_pcb], model.geometry.global_blocks[0]
        mod = glob.modulation_terms(temb6, 1)
        xx = wanb.attention_half(blk, x, inputs)
        gg = glob.attention_half(geo, mod, rope_global)
        xx, gg = model.interactions[0](xx, gg, rope_v, rope_g)
        xx, gg = wanb.ffn_half(blk, xx, inputs), glob.ffn_half(gg, mod)
    assert torch.equal(got_x, xx) and torch.equal(got_g, gg)
