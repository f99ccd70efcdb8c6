"""Memory tiers: the registry, what each tier changes in a call, and the placement helpers.

On the CPU the tiers move nothing (host and device are the same memory), so these tests check
the choices a tier makes (CFG batching, VAE tiling, the settings record) and that they leave
the outputs as they are; the GPU placements (encoder offload, block swap) are measured by
``benchmarks/bench_generate.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fantasyworld.inference.memory import PhaseMeter, to_device_except
from fantasyworld.inference.memory_tiers import (
    DEFAULT_MEMORY_TIER,
    FP8_SCOPES,
    MEMORY_TIERS,
    MemoryTier,
    get_memory_tier,
)
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.testing import write_tiny_checkpoint


def test_tier_registry_lookup_and_errors() -> None:
    assert get_memory_tier(None) is MEMORY_TIERS[DEFAULT_MEMORY_TIER]
    assert get_memory_tier(48) is MEMORY_TIERS["48"]
    custom = MemoryTier("custom", "test", cfg_batch=False)
    assert get_memory_tier(custom) is custom
    with pytest.raises(ValueError, match="memory tier must be one of"):
        get_memory_tier("16")
    # smaller cards never keep more resident than larger ones
    order = [MEMORY_TIERS[k] for k in sorted(MEMORY_TIERS, key=int, reverse=True)]
    for big, small in zip(order, order[1:]):
        assert small.offload_encoders >= big.offload_encoders
        assert small.block_swap >= big.block_swap
        assert small.cfg_batch <= big.cfg_batch


def test_phase_meter_accumulates_seconds_per_phase() -> None:
    meter = PhaseMeter(torch.device("cpu"))
    for _ in range(2):
        with meter.phase("a"):
            torch.ones(10).sum()
    with meter.phase("b"):
        pass
    assert set(meter.seconds) == {"a", "b"} and all(v >= 0 for v in meter.seconds.values())
    assert meter.peak_gib == {}  # no CUDA: no memory figures


def test_to_device_except_leaves_the_skipped_modules_in_place() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    model.register_buffer("table", torch.zeros(3))
    to_device_except(model, [model[1]], torch.device("meta"))
    assert model[0].weight.is_meta and model.table.is_meta
    assert not any(p.is_meta for p in model[1].parameters())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=2)


def _call(pipe: FantasyWorldPipeline, **kw):
    return pipe("a room", camera="orbit", seed=0, num_frames=5, height=32, width=32, num_steps=3,
                progress=False, max_points=100, **kw)


def test_tiers_choose_cfg_batching_and_keep_the_outputs(checkpoint) -> None:
    results = {k: _call(FantasyWorldPipeline.from_pretrained(checkpoint, memory=k)) for k in MEMORY_TIERS}
    for name, res in results.items():
        assert res.settings["memory_tier"] == name
        assert res.settings["cfg_batch"] == MEMORY_TIERS[name].cfg_batch
    ref = results[DEFAULT_MEMORY_TIER]
    for res in results.values():
        # batched vs split CFG only reorders float32 sums (measured max ~1e-6 on these latents)
        np.testing.assert_allclose(res.latents, ref.latents, rtol=0, atol=1e-4)
        np.testing.assert_allclose(res.depth, ref.depth, rtol=1e-4, atol=1e-4)
    # an explicit option overrides the tier
    res = _call(FantasyWorldPipeline.from_pretrained(checkpoint, memory="48"), cfg_batch=True)
    assert res.settings["cfg_batch"] is True


def test_repeated_blocks_finds_the_encoder_layers() -> None:
    from fantasyworld.inference.memory import HostOffload, repeated_blocks
    from fantasyworld.models import encoders

    te, _ = encoders.tiny_text_encoder(0)
    assert repeated_blocks(te) == list(te.encoder.block)
    clip, _ = encoders.tiny_image_encoder(0)
    assert repeated_blocks(clip) == list(clip.get_submodule("encoder.layers"))
    # on the CPU a visit moves nothing and nests
    visit = HostOffload(te, torch.device("cpu"))
    with visit, visit:
        assert not visit.active


def test_host_offload_moves_every_encoder_tensor_to_host_memory_at_once(monkeypatch) -> None:
    """An offloaded encoder keeps nothing where it was built, its repeated blocks included, before
    its first visit (on a GPU: no block left on the card until the first text phase)."""
    from fantasyworld.inference import memory
    from fantasyworld.models import encoders

    copies: set[int] = set()

    def host_copy(t: torch.Tensor) -> torch.Tensor:  # stands in for the pinned host copy
        out = t.data.clone()
        copies.add(out.data_ptr())
        return out

    monkeypatch.setattr(memory, "_pinned_host", host_copy)
    te, _ = encoders.tiny_text_encoder(0)
    before = {name: p.detach().clone() for name, p in te.named_parameters()}
    memory.HostOffload(te, torch.device("cuda"))  # constructing moves; a visit is never entered here
    params = dict(te.named_parameters())
    in_blocks = [n for n in params if n.startswith("encoder.block.")]
    assert in_blocks and len(in_blocks) < len(params)  # both kinds are checked
    for name, p in params.items():
        assert p.data_ptr() in copies, f"{name} was left where it was built"
        assert torch.equal(p, before[name]), name  # the same values


def test_a_large_token_embedding_is_looked_up_on_the_host_during_a_visit(monkeypatch) -> None:
    """UMT5-XXL's 1.96 GiB token table never visits the GPU: the visit copies every other tensor
    outside the blocks, the lookup runs on the host table and the encoder's output is unchanged."""
    from types import SimpleNamespace

    from fantasyworld.inference import memory
    from fantasyworld.models import encoders

    moved: list[torch.Tensor] = []
    monkeypatch.setattr(memory, "_pinned_host", lambda t: t.data.clone())
    te, _ = encoders.tiny_text_encoder(0)
    ids = torch.randint(0, te.config.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = te(input_ids=ids, attention_mask=mask).last_hidden_state
    visit = memory.HostOffload(te, torch.device("cuda"), host_embedding_bytes=0)
    table = te.shared.weight
    assert set(visit.host_embeddings) == {te.shared, te.encoder.embed_tokens}  # tied: both users of the table
    assert all(t is not table for t, _ in visit._rest) and len(visit._rest) > 0
    # the relative-position tables live in the blocks and are streamed with them, not looked up here
    assert not any("relative_attention_bias" in n for n, m in te.named_modules() if m in visit.host_embeddings)
    default = memory.HostOffload(encoders.tiny_text_encoder(0)[0], torch.device("cuda"))
    assert default.host_embeddings == []  # the tiny table (< 64 MiB) visits as before

    # enter and leave the visit with the CPU standing in for the GPU
    visit.device = torch.device("cpu")
    monkeypatch.setattr(memory, "BlockSwap", lambda *a: SimpleNamespace(detach=lambda: None))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    real_lookup = memory._host_embedding_forward

    def lookup(emb, device, x):
        moved.append(x)
        return real_lookup(emb, device, x)

    monkeypatch.setattr(memory, "_host_embedding_forward", lookup)
    with visit, torch.no_grad():
        out = te(input_ids=ids, attention_mask=mask).last_hidden_state
    assert moved and torch.equal(moved[0], ids)  # the lookup went through the host table
    assert torch.equal(out, plain)
    assert "forward" not in te.shared.__dict__ and "forward" not in te.encoder.embed_tokens.__dict__  # restored


def test_the_tiers_heads_chunking_is_set_on_every_dpt_head_and_keeps_the_geometry(checkpoint) -> None:
    own = MemoryTier("own", "the heads' own chunking", heads_chunks=None)
    fine = MemoryTier("fine", "one latent frame, two pixel frames a step", heads_chunks=(1, 2))
    pipes = {t.name: FantasyWorldPipeline.from_pretrained(checkpoint, memory=t) for t in (own, fine)}
    heads = [m for m in pipes["fine"].model.modules() if hasattr(m, "inference_chunks")]
    assert len(heads) == 2 and all(h.inference_chunks == (1, 2) for h in heads)
    # only the no-gradient chunking is set: a model that also trains keeps its own
    assert all((h.temporal_chunk_size, h.frames_chunk_size) == (None, 16) for h in heads)
    assert all(h.inference_chunks is None for h in pipes["own"].model.modules() if hasattr(h, "inference_chunks"))
    kw = {"num_frames": 9}
    res = {name: pipe("a room", camera="orbit", seed=0, height=32, width=32, num_steps=2, progress=False,
                      max_points=100, **kw) for name, pipe in pipes.items()}
    assert res["fine"].settings["heads_chunks"] == [1, 2] and res["own"].settings["heads_chunks"] is None
    np.testing.assert_array_equal(res["fine"].latents, res["own"].latents)  # the heads do not feed back
    # exact chunkings: float32 sums over different convolution lengths and batch sizes only
    for key in ("depth", "world_points"):
        np.testing.assert_allclose(getattr(res["fine"], key), getattr(res["own"], key), rtol=1e-5, atol=1e-5)
    assert MEMORY_TIERS[DEFAULT_MEMORY_TIER].heads_chunks == (4, 4)


@pytest.mark.parametrize("scope", list(FP8_SCOPES))
def test_fp8_scopes_quantise_exactly_their_linears_and_keep_the_samples_close(checkpoint, scope) -> None:
    ref = _call(FantasyWorldPipeline.from_pretrained(checkpoint))
    pipe = FantasyWorldPipeline.from_pretrained(checkpoint)
    names = pipe.quantize_fp8(scope)
    assert {n.split(".")[0] for n in names} == {p.split(".")[0] for p in FP8_SCOPES[scope]}
    for prefix in FP8_SCOPES[scope]:  # every tiny width is a multiple of 16: nothing is left out
        assert not any(isinstance(m, nn.Linear) for m in pipe.model.get_submodule(prefix).modules())
    geometry_linears = [m for m in pipe.model.geometry.global_blocks.modules() if isinstance(m, nn.Linear)]
    assert bool(geometry_linears) == (scope == "wan")
    res = _call(pipe)
    rel = np.linalg.norm(res.latents - ref.latents) / np.linalg.norm(ref.latents)
    # e4m3 keeps 3 mantissa bits (a rounding of at most 2^-4 = 6.25% per value); measured 2.3% (wan)
    # and 2.6% (all) after 3 steps; above 1e-4, so the float8 layers really ran
    assert 1e-4 < rel < 0.0625
    with pytest.raises(ValueError, match="fp8 scope must be one of wan, all, got 'heads'"):
        pipe.quantize_fp8("heads")
