"""benchmarks/camera_probe.py: ``--model`` changes the named fields of the tiny preset, and the
model it builds has them; a field that is not the config's, or a value its checks reject, is refused by name."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def probe(script):
    return script("benchmarks/camera_probe.py")


def test_model_changes_apply_to_the_tiny_preset_and_unknown_fields_are_refused(probe) -> None:
    from fantasyworld.models.config import get_preset
    from fantasyworld.models.fantasyworld import FantasyWorldModel
    from fantasyworld.models.geometry_branch import NUM_CAMERA_TOKENS

    base = get_preset("tiny")
    assert probe.model_config("") == base
    changed = probe.model_config("num_register_tokens=0,geo_layerscale_init=0.1")
    assert changed.num_register_tokens == 0 and changed.geo_layerscale_init == pytest.approx(0.1)
    assert changed.geo_dim == base.geo_dim  # nothing else moves
    model = FantasyWorldModel(changed)
    assert model.geometry.patch_start_idx == NUM_CAMERA_TOKENS  # no register tokens before the patches
    with pytest.raises(SystemExit, match="nope"):
        probe.model_config("nope=1")
    with pytest.raises(SystemExit, match="geo_dim"):
        probe.model_config("geo_dim")
    with pytest.raises(SystemExit, match="geo_heads 3"):  # a value the config's own checks reject
        probe.model_config("geo_heads=3")


def test_token_log_depth_is_each_cell_mean_grouped_as_the_vae_groups_frames(probe) -> None:
    """``--depth-input patches`` reads this: a wrong cell, frame or median would feed the
    control another depth than the token oracle's."""
    import torch

    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 9, 32, 32, generator=gen) + 0.5
    valid = torch.ones(2, 9, 32, 32, dtype=torch.bool)
    valid[1, 5, :16, :16] = False  # an invalid quarter of one cell's frame: averaged over the rest
    valid[1, 5, 0, 0] = True
    grouped = probe.token_log_depth(depth, valid, 16)
    assert grouped.shape == (2 * 3, 4, 4)  # (B * latent frames, tokens, 4 pixel frames)
    log_d = torch.log(depth)
    med = torch.stack([log_d[0].median(), log_d[1][valid[1]].median()])
    # latent frame 0 holds pixel frame 0 four times; latent frame 2, token 3 (row 1, col 1) pixel frame 8
    assert torch.allclose(grouped[0, 0], (log_d[0, 0, :16, :16] - med[0]).mean().expand(4), atol=1e-6)
    assert grouped[1 * 3 + 2, 3, 3] == pytest.approx(float((log_d[1, 8, 16:, 16:] - med[1]).mean()), abs=1e-6)
    # latent frame 2 of clip 1 holds pixel frames 5-8: frame 5's top-left cell has one valid pixel
    assert grouped[1 * 3 + 2, 0, 0] == pytest.approx(float(log_d[1, 5, 0, 0] - med[1]), abs=1e-5)
