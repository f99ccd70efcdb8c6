"""Converter round trip on a tiny model written in the official key layout, and the
``convert-official`` command's refusals (corrupted and pickle-bearing files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fantasyworld.cli import main
from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.official import (
    CONFIG_FILE,
    OVERRIDE_FILE,
    WEIGHTS_FILE,
    OfficialCheckpointError,
    apply_backbone_override,
    convert_official,
    ours_to_official,
    read_official_state_dict,
)
from fantasyworld.models.wan_loading import load_wan_transformer, save_wan_transformer


def tiny_official_config() -> FantasyWorldConfig:
    """tiny-i2v with the 14B's structure: adapters on all PCBs and the first IRG layers,
    CamTokenProjector, camera-trunk modulation, official camera time layout."""
    return get_preset("tiny-i2v").replace(
        camera_adapter_blocks=[0, 1, 2, 3], cam_token_projector=True, camera_trunk_modulation=True,
        camera_time_layout="official")


class _Payload:
    """Unpickling this would run code (creates a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class _Custom:
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, dir with model.pth in the official layout + Wan base dir, original official dict)."""
    root = tmp_path_factory.mktemp("official")
    config = tiny_official_config()
    torch.manual_seed(3)
    model = FantasyWorldModel(config)
    with torch.no_grad():
        for p in model.parameters():  # random everywhere (zero-initialised layers would hide mix-ups)
            p.normal_()
    save_wan_transformer(model.transformer, root / "wan", layout="wan")
    official = ours_to_official(model.fantasyworld_state_dict(2), config, wan_state=model.transformer.state_dict())
    official = {k: v.to(torch.bfloat16).contiguous() for k, v in official.items()}  # released file is bf16
    torch.save(official, root / "model.pth")
    return config, root, official


def test_tiny_official_checkpoint_converts_loads_strictly_and_round_trips(tiny, tmp_path) -> None:
    config, root, official = tiny
    assert any(k.startswith("IRGBlock.0.x_dit.self_attn") for k in official)
    assert any(k.startswith("pipe.dit.blocks.1.cross_attn.processor.") for k in official)
    assert any(k.startswith("IRGBlock.1.x_dit.cross_attn.processor.") for k in official)
    out = tmp_path / "ckpt"
    report = convert_official(root / "model.pth", root / "wan", out, config=config)
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "conversion_report.json"])
    assert report.backbone_checked > 0 and report.backbone_overridden == []

    saved = FantasyWorldConfig.load(out / CONFIG_FILE)
    assert saved.official_compat and saved.camera_time_layout == "official"
    assert saved.replace(official_compat=False).to_dict() == json.loads(json.dumps(config.to_dict()))

    # loads strictly into a fresh model (every stage-2 key, nothing else)
    fresh = FantasyWorldModel(saved)
    fresh.load_fantasyworld(out / WEIGHTS_FILE, stage=2)
    state = load_file(str(out / WEIGHTS_FILE))
    assert set(state) == set(fresh.stage_state_keys(2))

    # converting back reproduces the original tensors exactly
    wan = load_wan_transformer(root / "wan")
    back = ours_to_official(state, saved, wan_state=wan.state_dict())
    assert set(back) == set(official)
    for key, orig in official.items():
        got = back[key]
        if ".x_dit." in key and ".processor." not in key:
            got = got.to(orig.dtype)  # the Wan base is fp32; the official copy is its bf16 cast
        assert got.dtype == orig.dtype and torch.equal(got, orig), key

    # the loaded model runs
    fresh.eval()
    with torch.no_grad():
        lat = torch.randn(1, 16, 2, 4, 6)
        out_ = fresh(lat, torch.tensor([500.0]), torch.randn(1, 512, 32), cond_latent=torch.randn(1, 20, 2, 4, 6),
                     image_emb=torch.randn(1, 257, 32), heads=("depth",))
    assert torch.isfinite(out_["flow"]).all() and out_["depth"].shape == (1, 5, 32, 48)


def test_nested_state_dict_and_compat_only_keys(tiny, tmp_path) -> None:
    config, root, official = tiny
    trimmed = {k: v for k, v in official.items() if "CamTokenProjector" not in k}
    torch.save({"state_dict": trimmed, "epoch": 3}, tmp_path / "nested.pth")
    state, notes = read_official_state_dict(tmp_path / "nested.pth")
    assert set(state) == set(trimmed) and "state_dict" in notes[0]
    report = convert_official(tmp_path / "nested.pth", root / "wan", tmp_path / "out", config=config)
    assert report.filled_compat_only and all("cam_token_projector" in k for k in report.filled_compat_only)
    FantasyWorldModel(config).load_fantasyworld(tmp_path / "out" / WEIGHTS_FILE, stage=2)


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape"])
def test_mapping_errors_name_the_keys_and_write_nothing(tiny, tmp_path, case) -> None:
    config, root, official = tiny
    state = dict(official)
    if case == "missing":
        name = "IRGBlock.1.bicross_attention.gamma_m2"
        del state[name]
        expect = "interactions.1.gamma_m2"
    elif case == "unexpected":
        name = expect = "vggt.track_head.weight"
        state[name] = torch.zeros(3)
    else:
        name = expect = "vggt.depth_head.norm.weight"
        state[name] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(OfficialCheckpointError, match=expect.replace(".", r"\.")):
        convert_official(tmp_path / "bad.pth", root / "wan", tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()


def test_modified_backbone_is_refused_unless_overridden(tiny, tmp_path) -> None:
    config, root, official = tiny
    state = dict(official)
    name = "IRGBlock.2.x_dit.ffn.0.weight"
    state[name] = state[name] + 1.0
    torch.save(state, tmp_path / "ft.pth")
    with pytest.raises(OfficialCheckpointError, match=r"IRGBlock\.2\.x_dit\.ffn\.0\.weight"):
        convert_official(tmp_path / "ft.pth", root / "wan", tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()

    report = convert_official(tmp_path / "ft.pth", root / "wan", tmp_path / "out", config=config,
                              backbone_override=True)
    assert report.backbone_overridden == [name]
    assert (tmp_path / "out" / OVERRIDE_FILE).is_file()
    wan = load_wan_transformer(root / "wan")
    changed = apply_backbone_override(tmp_path / "out", wan)
    assert changed == ["blocks.4.ffn.net.0.proj.weight"]  # Wan block PCB(2) + 2
    assert torch.equal(wan.blocks[4].ffn.net[0].proj.weight.to(torch.bfloat16), state[name])


def test_existing_output_is_not_replaced_without_overwrite(tiny, tmp_path) -> None:
    config, root, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OfficialCheckpointError, match="not empty"):
        convert_official(root / "model.pth", root / "wan", out, config=config)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    convert_official(root / "model.pth", root / "wan", out, config=config, overwrite=True)
    assert (out / WEIGHTS_FILE).is_file() and not (out / "keep.txt").exists()


# --------------------------------------------------------------------------- CLI
def _cli(tiny_root: Path, model_pth: Path, out: Path, config_json: Path, *extra: str) -> int:
    return main(["convert-official", "--model-pth", str(model_pth), "--wan-dir", str(tiny_root / "wan"),
                 "--out", str(out), "--config", str(config_json), "--quiet", *extra])


def _bad_files(tmp_path: Path, official: dict) -> dict[str, Path]:
    files = {}
    files["random_bytes"] = tmp_path / "random.pth"
    files["random_bytes"].write_bytes(os.urandom(4096))
    good = tmp_path / "good.pth"
    torch.save(official, good)
    data = good.read_bytes()
    files["truncated"] = tmp_path / "truncated.pth"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["reduce_payload"] = tmp_path / "payload.pth"
    torch.save({**official, "extra": _Payload(str(tmp_path / "PWNED"))}, files["reduce_payload"])
    files["custom_class"] = tmp_path / "custom.pth"
    torch.save({"model": official, "meta": _Custom()}, files["custom_class"])
    files["not_a_dict"] = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], files["not_a_dict"])
    return files


def test_cli_refuses_corrupted_and_pickle_bearing_files_and_writes_nothing(tiny, tmp_path, capsys) -> None:
    config, root, official = tiny
    config_json = tmp_path / "cfg.json"
    config.save(config_json)
    expected = {
        "random_bytes": "not a PyTorch checkpoint",
        "truncated": "corrupted or truncated checkpoint",
        "reduce_payload": "refusing to load: the file contains pickled Python objects",
        "custom_class": "refusing to load: the file contains pickled Python objects",
        "not_a_dict": "expected a state dict",
    }
    for case, path in _bad_files(tmp_path, official).items():
        outs = tmp_path / "outs"
        out = outs / case
        assert _cli(root, path, out, config_json) == 1, case
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected[case] in err, (case, err)
        assert str(path) in err
        assert not outs.exists(), case  # nothing written, not even the parent
    assert not (tmp_path / "PWNED").exists()  # the payload never ran
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cfg.json", "random.pth", "good.pth", "truncated.pth", "payload.pth", "custom.pth", "list.pth"])


def test_cli_converts(tiny, tmp_path, capsys) -> None:
    config, root, _ = tiny
    config_json = tmp_path / "cfg.json"
    config.save(config_json)
    assert _cli(root, root / "model.pth", tmp_path / "ckpt", config_json, "--dtype", "fp32") == 0
    assert "converted" in capsys.readouterr().out
    state = load_file(str(tmp_path / "ckpt" / WEIGHTS_FILE))
    assert all(v.dtype == torch.float32 for v in state.values())
    report = json.loads((tmp_path / "ckpt" / "conversion_report.json").read_text())
    assert report["groups"]["bicross_attention"]["keys"] > 0


def test_backbone_check_reads_the_diffusers_layout_too(tiny, tmp_path) -> None:
    config, root, official = tiny
    wan = load_wan_transformer(root / "wan")
    save_wan_transformer(wan, tmp_path / "wan_diffusers", layout="diffusers")
    report = convert_official(root / "model.pth", tmp_path / "wan_diffusers", tmp_path / "out", config=config)
    assert report.backbone_checked == sum(".x_dit." in k and ".processor." not in k for k in official)
    assert report.backbone_overridden == []
