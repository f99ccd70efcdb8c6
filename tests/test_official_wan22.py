"""FantasyWorld-Wan2.2-Fun-A14B-Control-Camera: both official key manifests against our two
expert presets (meta tensors, no memory), name by name and shape by shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from fantasyworld.models.config import get_preset
from fantasyworld.models.official.keys import (
    OFFICIAL_WAN22_PRESETS,
    WAN22_MANIFEST_NAMES,
    WAN_CONTROL,
    WAN_DIT,
    WAN_IRG_COPY,
    WAN_OTHER,
    OfficialKeyMap,
    load_manifest,
    map_official_keys,
    our_reference_shapes,
)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def setups() -> dict:
    out = {}
    for expert, preset in OFFICIAL_WAN22_PRESETS.items():
        config = get_preset(preset)
        out[expert] = (config, OfficialKeyMap(config), our_reference_shapes(config),
                       load_manifest(DATA / WAN22_MANIFEST_NAMES[expert]))
    return out


@pytest.mark.parametrize("expert,n_keys,n_other", [("high", 3094, 242 + 194), ("low", 2658, 0)])
def test_manifest_maps_onto_the_expert_preset_with_nothing_left_over(setups, expert, n_keys, n_other) -> None:
    config, keymap, reference, manifest = setups[expert]
    assert config.expert == expert and config.has_control_adapter and not config.uses_clip
    shapes = {r["key"]: r["shape"] for r in manifest}
    assert len(shapes) == n_keys
    res = map_official_keys(shapes, config, keymap, reference)
    ckpt, wan, compat = reference
    # every official key has a place with the same shape ...
    assert res.unmapped == [] and res.shape_errors == []
    # ... and every key of ours (checkpoint and Wan base) is given by exactly one official key
    assert res.missing == [] and res.wan_not_in_official == []
    assert sorted(res.fantasyworld.values()) == sorted(ckpt)
    assert sorted(t.ours for t in res.wan.values()) == sorted(wan)
    assert len(res.wan_other) == n_other
    assert len(res.fantasyworld) + len(res.wan) + len(res.wan_other) == n_keys
    # shape by shape (the mapping compared them; restate the check on the final pairs)
    for off, ours in res.fantasyworld.items():
        assert tuple(shapes[off]) == ckpt[ours], off
    for off, target in res.wan.items():
        assert tuple(shapes[off]) == wan[target.ours], off


def test_groups_match_the_manifest_figures(setups) -> None:
    for expert in ("high", "low"):
        config, keymap, reference, manifest = setups[expert]
        res = map_official_keys({r["key"]: r["shape"] for r in manifest}, config, keymap, reference)
        g = res.groups
        # control adapter: 6 keys, 503,331,840 parameters, in the Wan base
        assert (g[WAN_CONTROL].keys, g[WAN_CONTROL].params) == (6, 503_331_840)
        assert sorted(t.ours for k, t in res.wan.items() if t.group == WAN_CONTROL) == sorted(
            k for k in reference[1] if k.startswith("control_adapter."))
        # pipe.dit without the adapter: 447 keys, 5,855,437,888; the 24 IRG copies 648 / 8,433,463,296
        assert (g[WAN_DIT].keys, g[WAN_DIT].params) == (447, 5_855_437_888)
        assert (g[WAN_IRG_COPY].keys, g[WAN_IRG_COPY].params) == (648, 8_433_463_296)
        # one expert's DiT = the diffusers A14B transformer (14,288,901,184) + the adapter
        assert g[WAN_DIT].params + g[WAN_IRG_COPY].params + g[WAN_CONTROL].params == 14_792_233_024
        new = sum(c.params for n, c in g.items() if n not in (WAN_DIT, WAN_IRG_COPY, WAN_OTHER, WAN_CONTROL))
        assert new == 1_751_335_576  # FantasyWorld-new parameters (manifest summary)
        base = {r["key"] for r in manifest if r["group"] == "wan_base"}
        assert {k for k, t in res.wan.items() if t.group in (WAN_DIT, WAN_CONTROL)} | set(res.wan_other) == base


def test_key_map_is_a_bijection_on_our_keys_and_refuses_wan21_only_keys(setups) -> None:
    config, keymap, (ckpt, wan, _), _ = setups["low"]
    for key in list(ckpt) + list(wan):
        target = keymap.to_ours(keymap.to_official(key))
        assert target is not None and target.ours == key, key
    shapes = {  # keys of the Wan2.1 release that this variant lacks
        "pipe.dit.blocks.0.cross_attn.processor.k_proj.group1.weight": (2048, 2048),
        "camera_condition.pose_encoder.fc.0.weight": (2560, 5120),
        "pipe.dit.img_emb.proj.1.weight": (1280, 1280),
        "pipe.dit.blocks.0.cross_attn.k_img.weight": (5120, 5120),
    }
    res = map_official_keys(shapes, config, keymap, None)
    assert sorted(u.split(" ")[0] for u in res.unmapped) == sorted(shapes)
    # and a Wan2.1 preset has no place for the control adapter
    w21 = get_preset("wan2.1-i2v-14b-480p")
    res = map_official_keys({"pipe.dit.control_adapter.conv.bias": (5120,)}, w21)
    assert [u.split(" ")[0] for u in res.unmapped] == ["pipe.dit.control_adapter.conv.bias"]


def test_control_input_packs_four_pixel_frames_per_latent_frame() -> None:
    import torch

    from fantasyworld.layers.control_adapter import ControlAdapter, pack_plucker_frames

    rays = torch.randn(2, 13, 6, 32, 48)
    packed = pack_plucker_frames(rays)
    assert packed.shape == (2, 24, 4, 32, 48)
    for j in range(4):  # channel 4c + s of latent frame j = Plucker channel c of pixel frame max(0, 4j + s - 3)
        for c in range(6):
            for s in range(4):
                assert torch.equal(packed[:, 4 * c + s, j], rays[:, max(0, 4 * j + s - 3), c])
    adapter = ControlAdapter(24, 64)
    out = adapter(packed)
    assert out.shape == (2, 64, 4, 2, 3)  # the DiT's token grid (H/16, W/16)
    # one residual block: the output is conv(unshuffle(x)) + conv2(relu(conv1(.)))
    x = adapter.conv(adapter.unshuffle(packed[:, :, 1]))
    block = adapter.residual_blocks[0]
    torch.testing.assert_close(out[:, :, 1], x + block.conv2(torch.relu(block.conv1(x))), rtol=0, atol=0)


def test_official_rays_at_the_wan22_resolution() -> None:
    """The doubled intrinsics of the official Plucker rays (shared with Wan2.1) at 480x832 with the
    official JSON's default focal length 500: frame 0 has a nearly constant direction
    (-0.600, -0.346, 0.722)."""
    import numpy as np

    from fantasyworld.inference.official_cameras import official_plucker

    h, w, f = 480, 832, 500.0
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    rays = official_plucker(np.tile(np.eye(4), (5, 1, 1)), K, h, w)
    d = rays[0, 0, 3:].reshape(3, -1)
    mean = d.mean(dim=1)
    assert np.allclose(mean.numpy(), [-0.600, -0.346, 0.722], atol=1e-3)
    assert float((d - mean[:, None]).abs().max()) < 2e-3  # spread ~1e-3 over the image
