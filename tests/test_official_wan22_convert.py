"""``convert-official --variant wan2.2``: tiny experts in the official key layout convert,
load strictly and convert back bit-exact; refusals write nothing."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fantasyworld.cli import main
from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.official import CONFIG_FILE, WEIGHTS_FILE, ours_to_official
from fantasyworld.models.wan22 import load_wan22_base, save_wan22_base

EXPERTS = ("high", "low")


def tiny_official_config(expert: str) -> FantasyWorldConfig:
    """The tiny Wan2.2 expert with the 14B's structure (CamTokenProjector, trunk modulation)."""
    return get_preset(f"tiny-wan2.2-{expert}").replace(
        cam_token_projector=True, camera_trunk_modulation=True, camera_time_layout="official")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """root with the Wan2.2-Fun base of both experts, high_noise_model.pth (with the reward
    LoRA merged into its Wan tensors, pipe.dit included) and low_noise_model.pth (IRG copies only)."""
    root = tmp_path_factory.mktemp("official22")
    official, configs = {}, {}
    for seed, expert in enumerate(EXPERTS):
        config = tiny_official_config(expert)
        configs[expert] = config
        torch.manual_seed(10 + seed)
        model = FantasyWorldModel(config)
        with torch.no_grad():
            for p in model.parameters():  # random everywhere (zero-initialised layers would hide mix-ups)
                p.normal_()
        save_wan22_base(model.transformer, model.control_adapter, root / "Wan2.2-Fun", expert)
        lora = None
        if expert == "high":
            gen = torch.Generator().manual_seed(5)
            d = config.wan_dim
            lora = root / "high_lora.safetensors"
            save_file({"lora_unet__blocks_3_self_attn_q.lora_up.weight": torch.randn(d, 2, generator=gen),
                       "lora_unet__blocks_3_self_attn_q.lora_down.weight": torch.randn(2, d, generator=gen),
                       "lora_unet__blocks_3_self_attn_q.alpha": torch.tensor(4.0),
                       "lora_unet__blocks_0_cross_attn_k.lora_up.weight": torch.randn(d, 2, generator=gen),
                       "lora_unet__blocks_0_cross_attn_k.lora_down.weight": torch.randn(2, d, generator=gen)},
                      str(lora))
        base = load_wan22_base(root / "Wan2.2-Fun", config, lora=lora)  # the base as the official merges it
        wan_state = {f"transformer.{k}": v for k, v in base.transformer.state_dict().items()}
        wan_state.update({f"control_adapter.{k}": v for k, v in base.control_adapter.state_dict().items()})
        state = ours_to_official(model.fantasyworld_state_dict(2), config, wan_state=wan_state,
                                 wan_blocks="all" if expert == "high" else "irg")
        official[expert] = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
        torch.save(official[expert], root / f"{expert}_noise_model.pth")
    return root, configs, official


def _convert(root, out, *extra: str) -> int:
    return main(["convert-official", "--variant", "wan2.2", "--high", str(root / "high_noise_model.pth"),
                 "--low", str(root / "low_noise_model.pth"), "--wan-dir", str(root / "Wan2.2-Fun"),
                 "--out", str(out), "--quiet", *extra])


def test_both_experts_convert_load_strictly_and_round_trip(tiny, tmp_path, monkeypatch) -> None:
    from fantasyworld.models.official import convert_wan22 as conv

    root, configs, official = tiny
    assert "pipe.dit.control_adapter.conv.weight" in official["high"]
    assert any(k.startswith("IRGBlock.0.x_dit.") for k in official["low"])
    out = tmp_path / "ckpt"
    # the CLI converts with the 14B presets; point it at the tiny ones (same structure)
    real = conv.get_preset
    monkeypatch.setattr(conv, "get_preset", lambda name: configs["high" if name.endswith("high") else "low"]
                        if name.startswith("wan2.2") else real(name))
    assert _convert(root, out, "--high-lora", str(root / "high_lora.safetensors")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["high", "low"]
    for expert in EXPERTS:
        saved = FantasyWorldConfig.load(out / expert / CONFIG_FILE)
        assert saved.official_compat and saved.expert == expert and saved.has_control_adapter
        report = json.loads((out / expert / "conversion_report.json").read_text())
        # every Wan tensor of the file equals the (LoRA-merged) base: nothing overridden
        assert report["wan_tensors_overridden"] == [] and report["wan_tensors_checked_equal_to_base"] > 0
        model = FantasyWorldModel(saved)
        model.load_fantasyworld(out / expert / WEIGHTS_FILE, stage=2)  # strict
        back = ours_to_official(model.fantasyworld_state_dict(2), saved)
        want = {k: v for k, v in official[expert].items() if not k.startswith("pipe.dit.")
                and ".x_dit." not in k}
        assert sorted(back) == sorted(want)
        written = load_file(str(out / expert / WEIGHTS_FILE))
        assert {v.dtype for v in written.values()} == {torch.bfloat16}  # the file's dtype is kept
        for k, v in want.items():  # the fp32 model holds the bf16 values exactly
            assert torch.equal(back[k].to(torch.bfloat16), v), k
    assert FantasyWorldConfig.load(out / "high" / CONFIG_FILE).extra["base_lora"] == {
        "file": "high_lora.safetensors", "multiplier": 0.55}
    assert "base_lora" not in FantasyWorldConfig.load(out / "low" / CONFIG_FILE).extra


def test_refusals_write_nothing(tiny, tmp_path, monkeypatch, capsys) -> None:
    from fantasyworld.models.official import convert_wan22 as conv

    root, configs, official = tiny
    real = conv.get_preset
    monkeypatch.setattr(conv, "get_preset", lambda name: configs["high" if name.endswith("high") else "low"]
                        if name.startswith("wan2.2") else real(name))
    out = tmp_path / "ckpt"
    # without the LoRA, the high file's merged Wan tensors differ from the base: refused, by name
    assert _convert(root, out) == 1
    err = capsys.readouterr().err
    assert "differ from the base" in err and "IRGBlock.1.x_dit.self_attn.q.weight" in err
    assert "pipe.dit.blocks.0.cross_attn.k.weight" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    # a low file with a key the model lacks: named; high converted fine but nothing is written
    bad = dict(official["low"])
    bad["pipe.dit.img_emb.proj.1.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for f in ("high_noise_model.pth", "high_lora.safetensors"):
        (bad_dir / f).symlink_to(root / f)
    (bad_dir / "Wan2.2-Fun").symlink_to(root / "Wan2.2-Fun")
    torch.save(bad, bad_dir / "low_noise_model.pth")
    assert _convert(bad_dir, out, "--high-lora", str(root / "high_lora.safetensors")) == 1
    assert "pipe.dit.img_emb.proj.1.weight" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    # a pickle that would run code is refused without running it
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(str(marker))}, bad_dir / "low_noise_model.pth")
    assert _convert(bad_dir, out, "--high-lora", str(root / "high_lora.safetensors")) == 1
    assert "pickled Python objects" in capsys.readouterr().err and not marker.exists() and not out.exists()
    # wrong arguments for the variant
    assert main(["convert-official", "--variant", "wan2.2", "--high", "x", "--wan-dir", "w", "--out", "o"]) == 2
