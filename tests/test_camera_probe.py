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
