"""Official FantasyWorld-Wan2.1-I2V-14B-480P key mapping against the complete manifest
(meta tensors, no memory) and the official inference quirks."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fantasyworld.geometry.plucker import plucker_rays
from fantasyworld.inference.official_cameras import (
    official_camera_inputs,
    official_plucker,
    official_scene_scale,
    official_translation_scale,
)
from fantasyworld.models.config import get_preset
from fantasyworld.models.official.keys import (
    ADAPTER_IRG,
    ADAPTER_PCB,
    BICROSS,
    GLOBAL_BLOCKS,
    MANIFEST_NAME,
    OFFICIAL_PRESET,
    WAN_DIT,
    WAN_IRG_COPY,
    WAN_OTHER,
    OfficialKeyMap,
    load_manifest,
    manifest_meta_state,
    map_official_keys,
    our_reference_shapes,
)

MANIFEST_PATH = Path(__file__).resolve().parent / "data" / MANIFEST_NAME


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    return load_manifest(MANIFEST_PATH)


@pytest.fixture(scope="module")
def setup_14b():
    config = get_preset(OFFICIAL_PRESET)
    return config, OfficialKeyMap(config), our_reference_shapes(config)


def test_complete_manifest_maps_onto_the_14b_preset(manifest, setup_14b) -> None:
    config, keymap, reference = setup_14b
    state = manifest_meta_state(manifest)
    assert len(state) == 3961 and all(t.is_meta for t in state.values())
    res = map_official_keys({k: v.shape for k, v in state.items()}, config, keymap, reference)
    # every official key has a place, with the same shape
    assert res.unmapped == [] and res.shape_errors == []
    # every one of our checkpoint keys is provided by an official key; nothing left over
    ckpt, wan, _ = reference
    assert res.missing == [] and sorted(res.fantasyworld.values()) == sorted(ckpt)
    # every one of our Wan parameters is provided by an official Wan key (pipe.dit base or IRG copy)
    assert res.wan_not_in_official == []
    assert sorted(t.ours for t in res.wan.values()) == sorted(wan)
    # bookkeeping: every manifest key is in exactly one bucket
    assert len(res.fantasyworld) + len(res.wan) + len(res.wan_other) == len(manifest)


def test_manifest_groups_agree_with_the_mapping(manifest, setup_14b) -> None:
    config, keymap, reference = setup_14b
    res = map_official_keys({r["key"]: r["shape"] for r in manifest}, config, keymap, reference)
    base = {r["key"] for r in manifest if r["group"] == "wan_base"}
    ours_wan_base = {k for k, t in res.wan.items() if t.group == WAN_DIT} | set(res.wan_other)
    assert ours_wan_base == base
    g = res.groups
    assert g[WAN_DIT].params + g[WAN_OTHER].params == sum(
        math.prod(r["shape"]) for r in manifest if r["group"] == "wan_base")
    # README figures (millions)
    assert round(g[WAN_IRG_COPY].params / 1e6) == 9692
    assert round(g[BICROSS].params / 1e6, 1) == 510.0
    assert round(g[GLOBAL_BLOCKS].params / 1e6, 1) == 302.5
    assert round(g[ADAPTER_PCB].params / 1e6, 1) == 231.6 and round(g[ADAPTER_IRG].params / 1e6, 1) == 130.3
    new = sum(c.params for name, c in g.items() if name not in (WAN_DIT, WAN_IRG_COPY, WAN_OTHER))
    assert round(new / 1e9, 2) == 2.15
    assert round((g[WAN_DIT].params + g[WAN_IRG_COPY].params) / 1e9, 1) == 16.4
    # adapters exactly on Wan blocks 0..24
    blocks = Counter(int(k.split(".")[1]) for k in res.fantasyworld.values() if k.startswith("camera_adapters."))
    assert sorted(blocks) == list(range(25)) and set(blocks.values()) == {10}


def test_manifest_irg_copies_point_at_the_right_wan_blocks(manifest, setup_14b) -> None:
    _, keymap, _ = setup_14b
    for row in manifest:
        src = row.get("deepcopied_from")
        if src:
            target = keymap.to_ours(row["key"])
            assert target is not None and target.ours is not None
            assert keymap.to_official(target.ours) == row["key"]
            # the copy of Wan block 16+i is our Wan block 16+i / our adapter of block 16+i
            assert f".{src.split('.')[3]}." in f".{target.ours}."


def test_key_map_is_a_bijection_on_our_14b_keys(setup_14b) -> None:
    _, keymap, (ckpt, wan, _) = setup_14b
    for key in list(ckpt) + list(wan):
        target = keymap.to_ours(keymap.to_official(key))
        assert target is not None and target.ours == key, key


def test_unknown_and_out_of_range_keys_are_unmapped(setup_14b) -> None:
    config, keymap, reference = setup_14b
    shapes = {
        "vggt.aggregator.global_blocks.0.norm1.weight": (1024,),  # replaced by IRGBlock.0.x_agg in the official
        "pipe.dit.blocks.20.self_attn.q.weight": (5120, 5120),  # official replaced PCB+ blocks by Identity
        "IRGBlock.24.x_agg.norm1.weight": (1024,),
        "vggt.track_head.x": (3,),
        "IRGBlock.0.bicross_attention.gamma_m1": (1024,),  # wrong shape
    }
    res = map_official_keys(shapes, config, keymap, reference)
    assert len(res.unmapped) == 4 and len(res.shape_errors) == 1
    assert "IRGBlock.0.bicross_attention.gamma_m1" in res.shape_errors[0]
    assert not res.ok


# --------------------------------------------------------------------------- quirks
def _reference_scale(depth: np.ndarray, K: np.ndarray) -> float:
    """The official formula step by step in torch (float64)."""
    d = torch.as_tensor(depth, dtype=torch.float64)
    h, w = d.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    u, v = torch.as_tensor(u, dtype=torch.float64), torch.as_tensor(v, dtype=torch.float64)
    pts = torch.stack([(u - K[0, 2]) * d / K[0, 0], (v - K[1, 2]) * d / K[1, 1], d], -1)
    mask = d > 1e-8
    dist = pts.norm(dim=-1)
    thr = torch.quantile(dist[mask], 0.95)
    keep = mask & (dist <= thr)
    return float(((dist * keep).sum() / (keep.sum() + 1e-3)).clamp(1e-6, 1e6))


def test_official_scene_scale_matches_the_official_formula() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 5.0, size=(24, 40))
    depth[0, :5] = np.inf
    depth[3, 3] = 0.0
    depth[5, 7] = 500.0  # outlier beyond the 95th percentile
    K = np.array([[30.0, 0, 19.5], [0, 30.0, 11.5], [0, 0, 1]])
    clean = np.where(np.isfinite(depth), depth, 0.0)
    assert official_scene_scale(depth, K) == pytest.approx(_reference_scale(clean, K), rel=1e-6)  # official: float32
    assert official_translation_scale(K, depth=depth) == official_scene_scale(depth, K)
    assert official_translation_scale(K, scale=2.5) == 2.5
    est = official_translation_scale(K, image=np.zeros((24, 40, 3), np.uint8), depth_estimator=lambda img: clean)
    assert est == official_scene_scale(clean, K)
    with pytest.raises(ValueError):
        official_translation_scale(K)
    with pytest.raises(ValueError):
        official_translation_scale(K, scale=1.0, depth=depth)


def test_official_plucker_reproduces_the_double_scaled_intrinsics() -> None:
    h, w, f, scale = 16, 32, 20.0, 4.0
    c2w = np.tile(np.eye(4), (5, 1, 1))
    c2w[:, 0, 3] = np.arange(5) * 2.0  # moving right
    c2w[:, :3, :3] = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # frame-0 rotation must cancel
    w2c = np.linalg.inv(c2w)
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    rays = official_plucker(w2c, K, h, w, scale=scale)
    assert rays.shape == (1, 5, 6, h, w)
    # frame 0: identity pose; official directions use fx*W, cx = (W/2)*W (double scaling)
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d = torch.stack([(u - w / 2 * w) / (f * w), (v - h / 2 * h) / (f * h), torch.ones_like(u)], 0)
    d = d / d.norm(dim=0, keepdim=True)
    torch.testing.assert_close(rays[0, 0, 3:], d, atol=1e-6, rtol=1e-5)
    assert rays[0, 0, :3].abs().max() < 1e-6  # origin at zero
    # camera centres of later frames: translation relative to frame 0, divided by scale
    rel, k_off = official_camera_inputs(w2c, K, h, w, scale)
    centre = torch.linalg.inv(rel[3].double())[:3, 3]
    expected = torch.tensor([0.0, 0.0, 6.0 / scale], dtype=torch.float64)  # world +x is camera-0 +z
    torch.testing.assert_close(centre, expected, atol=1e-6, rtol=0)
    assert k_off[0, 0, 2] == w / 2 and k_off[0, 1, 2] == h / 2
    # the fix (no legacy flag) gives different rays: the switch matters
    fixed = plucker_rays(rel[None], k_off[None], h, w)
    assert (fixed - rays).abs().max() > 0.1
