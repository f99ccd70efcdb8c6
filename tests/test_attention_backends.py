"""The attention-backend registry (:mod:`fantasyworld.layers.attention`): every attention of the
model goes through it, the default is SDPA unchanged, and the FlashAttention-3 backends' own
arithmetic (layouts, float8 quantisation, descale shapes) is right.

The FA3 kernel needs a Hopper GPU; here a stand-in module with FA3's interface computes the
attention from the dequantised inputs, so everything but the kernel itself is tested on the CPU.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from fantasyworld.errors import ConfigError
from fantasyworld.layers import attention as attn_mod
from fantasyworld.layers.attention import (
    ATTENTION_BACKENDS,
    attention,
    get_attention_backend,
    quantize_heads,
    register_attention_backend,
    set_attention_backend,
    use_attention_backend,
)
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from tests.test_model_core import make_inputs


@pytest.fixture
def registered():
    """Register test backends by name; removed (and ``sdpa`` restored) afterwards."""
    names: list[str] = []

    def add(name: str, fn, **kw):
        register_attention_backend(name, description="test", **kw)(fn)
        names.append(name)

    yield add
    set_attention_backend("sdpa")
    for n in names:
        ATTENTION_BACKENDS.pop(n)


class FakeFA3:
    """FA3's ``_flash_attn_forward`` interface, computed in float64 from the dequantised inputs."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def _flash_attn_forward(self, q, k, v, softmax_scale=None, causal=False, q_descale=None, k_descale=None,
                            v_descale=None):
        assert not causal and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        self.calls.append({"dtype": q.dtype, "q": tuple(q.shape), "descale": None if q_descale is None
                           else tuple(q_descale.shape)})

        def deq(x, s):
            x = x.double()
            return x if s is None else x * s.double()[:, None, :, None]

        q, k, v = deq(q, q_descale), deq(k, k_descale), deq(v, v_descale)  # (B, L, H, d)
        w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) * softmax_scale, dim=-1)
        out = torch.einsum("bhlm,bmhd->blhd", w, v).to(torch.bfloat16)
        return out, None, None, None


@pytest.fixture
def fake_fa3(monkeypatch):
    fake = FakeFA3()
    monkeypatch.setattr(attn_mod, "_fa3_module", fake)
    yield fake
    set_attention_backend("sdpa")


def test_registry_names_default_and_errors() -> None:
    assert {"sdpa", "fa3", "fa3_fp8"} <= set(ATTENTION_BACKENDS)
    assert get_attention_backend() == "sdpa"
    assert ATTENTION_BACKENDS["sdpa"].differentiable and not ATTENTION_BACKENDS["fa3"].differentiable
    assert not ATTENTION_BACKENDS["fa3_fp8"].exact
    with pytest.raises(ConfigError, match="unknown attention backend 'nope'.*sdpa"):
        set_attention_backend("nope")
    if attn_mod._fa3_module is None and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'fa3'.*CUDA"):  # the reason, not an import traceback
            set_attention_backend("fa3")
    assert get_attention_backend() == "sdpa"  # a refused switch changes nothing


def test_sdpa_default_is_plain_sdpa_in_both_layouts() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 7, 7))
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attention(q, k, v), ref)
    got = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout="bshd")
    assert torch.equal(got, ref.transpose(1, 2))


def _model_with_live_interactions(preset: str) -> FantasyWorldModel:
    """A tiny model whose bidirectional cross-attention changes both streams (gates 0.5, not 0)."""
    torch.manual_seed(0)
    model = FantasyWorldModel(get_preset(preset)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma_m1", "gamma_m2")):
                p.fill_(0.5)
    return model


@pytest.mark.parametrize("preset", ["tiny", "tiny-i2v"])
def test_every_model_attention_goes_through_the_active_backend(preset: str, registered) -> None:
    """A float64 reference backend that counts its calls: the whole forward (Wan self- and
    cross-attention, geometry frame/global attention, both directions of the bidirectional
    cross-attention) runs through it, with the same outputs as SDPA to 1e-5 (fp32 model: only
    the softmax's rounding differs)."""
    model = _model_with_live_interactions(preset)
    seen: Counter = Counter()

    def reference(q, k, v):  # (B, L, H, d)
        seen[(q.shape[1], k.shape[1], q.shape[-1])] += 1
        w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) * q.shape[-1] ** -0.5, -1)
        return torch.einsum("bhlm,bmhd->blhd", w, v.double()).to(q.dtype)

    registered("test_reference", reference, differentiable=True)
    latents, timestep, text, kw = make_inputs(model)
    with torch.no_grad():
        ref = model(latents, timestep, text, **kw, stage=2)
        with use_attention_backend("test_reference"):
            got = model(latents, timestep, text, **kw, stage=2)
    assert get_attention_backend() == "sdpa"
    cfg = model.config
    blocks, irg = cfg.num_wan_blocks, cfg.num_irg
    per_block = 3 if cfg.is_i2v else 2  # self, text (and image) attention of every Wan block
    # every Wan block, and per IRG layer: frame + global geometry attention and the two bi-cross ones
    assert sum(seen.values()) >= blocks * per_block + irg * 4
    for key in ("flow", "depth", "pose_enc"):
        err = (got[key] - ref[key]).abs().max().item()
        assert err <= 1e-5 * max(1.0, ref[key].abs().max().item()), (key, err)
        assert not torch.equal(got[key], ref[key]) or key == "pose_enc"  # it really ran another kernel


def test_quantize_heads_scales_and_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 3, 16, generator=g) * torch.tensor([0.01, 1.0, 30.0])[None, None, :, None]
    x8, scale = quantize_heads(x)
    assert x8.dtype == torch.float8_e4m3fn and scale.shape == (2, 3) and scale.dtype == torch.float32
    amax = x.abs().amax(dim=(1, 3))
    assert torch.allclose(scale * 448.0, amax)
    back = x8.float() * scale[:, None, :, None]
    # e4m3 keeps 3 mantissa bits: rounding is within 2^-4 of each value (normal range), and the
    # values below the subnormal threshold are within half a subnormal step of the head's scale
    tol = 2.0**-4 * x.abs() + 2.0**-10 * scale[:, None, :, None]
    assert ((back - x).abs() <= tol).all()


def test_fa3_backends_layouts_and_descales(fake_fa3: FakeFA3) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 32, generator=g, dtype=torch.bfloat16) for n in (6, 9, 9))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    with use_attention_backend("fa3"):
        got = attention(q, k, v)
    assert got.shape == ref.shape and got.dtype == torch.bfloat16
    assert fake_fa3.calls[-1] == {"dtype": torch.bfloat16, "q": (2, 6, 4, 32), "descale": None}
    assert (got.float() - ref).abs().max() <= 2e-2  # bf16 inputs and output
    with use_attention_backend("fa3_fp8"):
        got8 = attention(q, k, v)
    assert fake_fa3.calls[-1] == {"dtype": torch.float8_e4m3fn, "q": (2, 6, 4, 32), "descale": (2, 4)}
    rel = ((got8.float() - ref).norm() / ref.norm()).item()
    assert 1e-3 < rel < 0.08, rel  # float8 inputs: a few percent, never exact


def test_fa3_is_inference_only(fake_fa3: FakeFA3) -> None:
    q = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    with use_attention_backend("fa3"):
        with pytest.raises(RuntimeError, match="inference-only"):
            attention(q, q, q)
        with torch.no_grad():
            assert attention(q, q, q).shape == q.shape


def test_model_forward_with_fp8_attention(fake_fa3: FakeFA3) -> None:
    """The whole tiny model with every attention in float8 (stand-in kernel): geometry and flow
    within a few percent of SDPA's, every call with one descale per sample and head."""
    model = _model_with_live_interactions("tiny")
    latents, timestep, text, kw = make_inputs(model)
    with torch.no_grad():
        ref = model(latents, timestep, text, **kw, stage=2)
        with use_attention_backend("fa3_fp8"):
            got = model(latents, timestep, text, **kw, stage=2)
    assert fake_fa3.calls and all(c["dtype"] == torch.float8_e4m3fn for c in fake_fa3.calls)
    assert all(c["descale"] == (c["q"][0], c["q"][2]) for c in fake_fa3.calls)
    for key in ("flow", "depth"):
        rel = ((got[key] - ref[key]).norm() / ref[key].norm()).item()
        assert rel < 0.1, (key, rel)


def test_compiled_layers_follow_the_active_backend(registered) -> None:
    """``torch.compile`` guards on the active backend: a layer compiled under ``sdpa`` runs the
    backend switched to afterwards, and ``sdpa`` again once it is restored (bench_generate and
    ``generate --compile`` rely on this)."""
    from fantasyworld.layers.geo_block import GeoAttention

    calls: list[int] = []

    def counting(q, k, v):
        calls.append(1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    registered("test_counting", counting, differentiable=True)
    torch.manual_seed(0)
    layer = GeoAttention(32, 4).eval()
    layer.compile(backend="eager", dynamic=False)
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        plain = layer(x)
        assert not calls
        with use_attention_backend("test_counting"):
            switched = layer(x)
            layer(x)
        assert len(calls) >= 1
        seen = len(calls)
        again = layer(x)
        layer(x)
    assert len(calls) == seen  # back on sdpa
    assert torch.equal(plain, again) and torch.allclose(plain, switched, atol=1e-6)
