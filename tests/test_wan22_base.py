"""Wan2.2-Fun base of one expert: strict loading from the release layout, and the LoRA merge
against the hand-computed ``W + m * (alpha / r) * up @ down`` for both key formats."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fantasyworld.errors import CheckpointError
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.lora import read_lora
from fantasyworld.models.wan22 import load_wan22_base, save_wan22_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(config, root with low_noise_model/, the fp32 model whose base was written)."""
    root = tmp_path_factory.mktemp("wan22")
    config = get_preset("tiny-wan2.2-low")
    torch.manual_seed(1)
    model = FantasyWorldModel(config)
    save_wan22_base(model.transformer, model.control_adapter, root, "low")
    return config, root, model


def test_release_layout_loads_strictly_and_equals_the_written_base(base) -> None:
    config, root, model = base
    loaded = load_wan22_base(root, config)
    for k, v in model.transformer.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[k], v), k
    for k, v in model.control_adapter.state_dict().items():
        assert torch.equal(loaded.control_adapter.state_dict()[k], v), k
    # the wrong expert folder is named
    with pytest.raises(CheckpointError, match="high_noise_model"):
        load_wan22_base(root, get_preset("tiny-wan2.2-high"))


def test_missing_adapter_key_and_extra_key_are_named(base, tmp_path) -> None:
    config, root, model = base
    from safetensors.torch import load_file

    src = root / "low_noise_model"
    state = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    dst = tmp_path / "low_noise_model"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    broken = {k: v for k, v in state.items() if k != "control_adapter.residual_blocks.0.conv2.bias"}
    broken["img_emb.proj.1.weight"] = torch.zeros(4, 4)
    save_file(broken, str(dst / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="img_emb.proj.1.weight"):
        load_wan22_base(tmp_path, config)
    del broken["img_emb.proj.1.weight"]
    save_file(broken, str(dst / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"residual_blocks\.0\.conv2\.bias.*control adapter"):
        load_wan22_base(tmp_path, config)


def _lora_pair(out_f: int, in_f: int, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(out_f, rank, generator=gen), torch.randn(rank, in_f, generator=gen)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_lora_merge_equals_the_hand_computed_update(base, tmp_path, fmt) -> None:
    config, root, model = base
    gen = torch.Generator().manual_seed(7)
    d, ffn = config.wan_dim, config.wan["ffn_dim"]
    # targets (original Wan names): a PCB block, an IRG block, the time projection, the head
    targets = {"blocks.0.self_attn.q": (d, d, 4, 8.0), "blocks.3.ffn.0": (ffn, d, 2, None),
               "time_projection.1": (6 * d, d, 3, 1.5), "head.head": (64, d, 2, 2.0)}
    pairs = {name: _lora_pair(o, i, r, gen) for name, (o, i, r, _) in targets.items()}
    lora = {}
    for name, (up, down) in pairs.items():
        alpha = targets[name][3]
        if fmt == "kohya":
            stem = "lora_unet__" + name.replace(".", "_")
            lora[f"{stem}.lora_up.weight"], lora[f"{stem}.lora_down.weight"] = up, down
            if alpha is not None:
                lora[f"{stem}.alpha"] = torch.tensor(alpha)
        else:
            lora[f"{name}.lora_B.weight"], lora[f"{name}.lora_A.weight"] = up, down
            if alpha is not None:
                lora[f"{name}.alpha"] = torch.tensor(alpha)
    path = tmp_path / f"{fmt}.safetensors"
    save_file(lora, str(path))
    m = 0.55
    loaded = load_wan22_base(root, config, lora=path, lora_multiplier=m)
    assert loaded.lora_merged == sorted(f"{n}.weight" for n in targets)
    ours = {"blocks.0.self_attn.q": "blocks.0.attn1.to_q.weight", "blocks.3.ffn.0": "blocks.3.ffn.net.0.proj.weight",
            "time_projection.1": "condition_embedder.time_proj.weight", "head.head": "proj_out.weight"}
    before, after = model.transformer.state_dict(), loaded.transformer.state_dict()
    for name, (up, down) in pairs.items():
        o, i, r, alpha = targets[name]
        scale = m * (alpha / r if alpha is not None else 1.0)  # no alpha: scale m, not m / r
        want = before[ours[name]].double() + scale * (up.double() @ down.double())
        # fp32 merge of fp32 weights: rounding of W + delta (|W + delta| <~ 30) and of the
        # rank-r product, well under 1e-5 absolute
        torch.testing.assert_close(after[ours[name]].double(), want, rtol=0, atol=1e-5)
    # nothing else changed
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(ours.values())
    # a fresh model on the merged base: IRG layer 1 (Wan block 3) sees the merged FFN
    fw = FantasyWorldModel(config, loaded.transformer, control_adapter=loaded.control_adapter)
    assert fw.irg_layers[1].wan_block is fw.transformer.blocks[3]
    assert torch.equal(fw.irg_layers[1].wan_block.ffn.net[0].proj.weight, after[ours["blocks.3.ffn.0"]])


def test_lora_keys_that_name_no_weight_are_refused(base, tmp_path) -> None:
    config, root, model = base
    path = tmp_path / "bad.safetensors"
    save_file({"lora_unet__blocks_0_self_attn_zz.lora_up.weight": torch.zeros(64, 2),
               "lora_unet__blocks_0_self_attn_zz.lora_down.weight": torch.zeros(2, 64),
               "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 64)}, str(path))
    with pytest.raises(CheckpointError, match=r"bad.safetensors: 3 LoRA keys.*diffusion_model\.blocks"):
        read_lora(path, {"blocks.0.self_attn.q.weight"})
    with pytest.raises(CheckpointError, match="does not exist"):
        read_lora(tmp_path / "none.safetensors", set())
