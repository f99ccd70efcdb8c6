"""A head is one registry entry: a dummy head registered here is built, sharded, trained on
loader batches (its loss term in the objective and the metrics), saved and loaded with the
stage weights, run by the sampler and written by the generation result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.heads import registry
from fantasyworld.heads.registry import ALL_HEADS, HeadInputs, HeadSpec, HeadTargets
from fantasyworld.inference.pipeline import FantasyWorldPipeline
from fantasyworld.inference.testing import tiny_model, write_tiny_checkpoint
from fantasyworld.models import parallelize as par
from fantasyworld.models.inventory import inventory
from fantasyworld.training import logging as train_logging
from fantasyworld.training.config import config_from_dict
from fantasyworld.training.losses import compute_losses, loss_keys
from fantasyworld.training.trainer import Trainer

T, H, W = 5, 32, 32
WEIGHT = 0.5


class DisparityHead(nn.Module):
    """Per-pixel inverse depth from the finest DPT input: a linear map of each patch token to
    its 16 x 16 pixels, latent frame 0 -> pixel frame 0, latent frame k >= 1 -> 4 pixel frames."""

    def __init__(self, dim_in: int, patch_start_idx: int) -> None:
        super().__init__()
        self.patch_start_idx = patch_start_idx
        self.proj = nn.Linear(dim_in, 16 * 16)

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        b, f = tokens.shape[:2]
        h, w = grid_hw
        x = self.proj(tokens[:, :, self.patch_start_idx:])  # (B, F, h*w, 256)
        x = x.reshape(b, f, h, w, 16, 16).permute(0, 1, 2, 4, 3, 5).reshape(b, f, 16 * h, 16 * w)
        repeats = torch.tensor([1] + [4] * (f - 1), device=x.device)
        return nn.functional.softplus(x.repeat_interleave(repeats, dim=1))  # (B, T, H, W)


def _run(head: nn.Module, x: HeadInputs) -> dict[str, torch.Tensor]:
    return {"disparity": head(x.intermediates[0], x.grid_hw)}


def _loss(out: dict, gt: HeadTargets) -> dict[str, torch.Tensor]:
    """Mean L1 between predicted and ground-truth inverse depth (unit scene scale), valid pixels."""
    inv = torch.where(gt.valid, 1.0 / gt.depth.clamp_min(1e-6), torch.zeros_like(gt.depth))
    err = (out["disparity"].float() - inv).abs() * gt.valid
    return {"loss_disparity": err.sum() / gt.valid.sum().clamp_min(1)}


SPEC = HeadSpec(
    name="disparity", module="disparity_head", build=lambda config, dim_in, start: DisparityHead(dim_in, start),
    run=_run, outputs=("disparity",), loss=_loss, loss_keys=("loss_disparity",), weight=WEIGHT, short="disp",
    result_keys=("disparity",), archive="disparity.npz",
)


@pytest.fixture
def dummy_head(monkeypatch) -> HeadSpec:
    monkeypatch.setitem(registry.HEADS, SPEC.name, SPEC)
    return SPEC


def test_registered_head_is_built_sharded_and_run(dummy_head) -> None:
    model = tiny_model(activate=False)
    assert model.geometry.head_names == ("depth", "points", "camera", "disparity")
    assert "geometry.disparity_head" in model._fsdp_units
    assert list(par.resolve_modules(model, "geometry.disparity_head")) == [model.geometry.disparity_head]
    assert "geometry.disparity_head.proj.weight" in model.stage_state_keys(1)
    counted = {row.name: row for row in inventory(model)}  # verify-config counts it, in both stages
    dim_in = 2 * model.config.geo_dim  # the heads read concatenated frame/global tokens
    assert counted["disparity head"].params == dim_in * 256 + 256
    assert counted["disparity head"].trains_stage1 and counted["disparity head"].trains_stage2
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 16, 2, H // 8, W // 8, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        every = model(latents, torch.tensor([500.0]), text, stage=1, heads=ALL_HEADS)
        only = model(latents, torch.tensor([500.0]), text, stage=1, heads=("disparity",))
    assert every["disparity"].shape == (1, T, H, W) and (every["disparity"] > 0).all()
    assert set(only) == {"flow", "disparity"}
    torch.testing.assert_close(only["disparity"], every["disparity"], rtol=0, atol=0)  # same tokens, same head
    with pytest.raises(ValueError, match="unknown head"):
        model(latents, torch.tensor([500.0]), text, stage=1, heads=("normals",))


def test_registered_head_loss_enters_the_objective_with_its_weight(dummy_head) -> None:
    g = torch.Generator().manual_seed(1)
    outputs = {"depth": 1 + torch.rand(1, T, H, W, generator=g), "depth_conf": 1 + torch.rand(1, T, H, W, generator=g),
               "disparity": torch.rand(1, T, H, W, generator=g)}
    batch = {"depth": 1 + torch.rand(1, T, H, W, generator=g), "points": torch.randn(1, T, H, W, 3, generator=g),
             "valid": torch.rand(1, T, H, W, generator=g) > 0.2, "w2c": torch.eye(4).repeat(1, T, 1, 1),
             "intrinsics": torch.tensor([[30.0, 0, 16], [0, 30, 16], [0, 0, 1]]).repeat(1, T, 1, 1)}
    with_head = compute_losses(outputs, batch, stage=1)
    without = compute_losses({k: v for k, v in outputs.items() if k != "disparity"}, batch, stage=1)
    assert "loss_disparity" in with_head and "loss_disparity" not in without
    assert with_head["loss_disparity"] > 0
    # objective = depth + 0.5 * disparity; fp32 sums of two scalars: 1e-6 relative
    torch.testing.assert_close(with_head["objective"], without["objective"] + WEIGHT * with_head["loss_disparity"],
                               rtol=1e-6, atol=0)
    assert loss_keys(1)[-1] == "loss_disparity" and loss_keys(2)[-2:] == ("loss_disparity", "loss_diff")
    assert train_logging._short_names()["loss_disparity"] == "disp"


def test_registered_head_trains_on_loader_batches_and_is_saved(dummy_head, tmp_path, one_thread) -> None:
    data = synthesize_dataset(tmp_path / "data", num_clips=1, num_frames=T, height=H, width=W, seed=5, workers=1)
    cfg = config_from_dict({
        "stage": 1, "output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 1, "seed": 0, "device": "cpu",
        "mixed_precision": "fp32", "model": {"preset": "tiny"},
        "data": {"root": str(data), "num_frames": T, "height": H, "width": W, "random_crop": False},
        "optim": {"lr": 1e-3}, "checkpoint": {"every": 2, "keep_last": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False}})
    trainer = Trainer(cfg)
    init = trainer.model.geometry.disparity_head.proj.weight.detach().clone()
    result = trainer.train()
    for row in result.history:
        assert np.isfinite(row["loss_disparity"]) and row["loss_disparity"] > 0
        # the logged objective is the weighted sum of the logged terms (batch 1, lambda_geo 1);
        # the terms are fp32 scalars rounded to Python floats: 1e-5 relative
        terms = row["loss_depth"] + row["loss_pmap"] + 3.0 * row["loss_camera"] + WEIGHT * row["loss_disparity"]
        assert row["objective"] == pytest.approx(terms, rel=1e-5)
    saved = load_file(str(result.last_checkpoint))
    assert not torch.equal(saved["geometry.disparity_head.proj.weight"], init)  # it was trained
    fresh = tiny_model(activate=False)
    fresh.load_fantasyworld(result.last_checkpoint, stage=1)  # strict: the head's keys are expected
    torch.testing.assert_close(fresh.geometry.disparity_head.proj.weight, saved["geometry.disparity_head.proj.weight"],
                               rtol=0, atol=0)


def test_registered_head_flows_through_sampler_and_export(dummy_head, tmp_path) -> None:
    pipe = FantasyWorldPipeline.from_pretrained(write_tiny_checkpoint(tmp_path / "ckpt", seed=1))
    res = pipe("a room", camera="orbit", seed=0, num_frames=T, height=H, width=W, num_steps=2, progress=False,
               max_points=100)
    assert res.heads["disparity"].shape == (T, H, W) and res.heads["disparity"].dtype == np.float32
    paths = res.save(tmp_path / "out", colmap=False, report=False, glb=False)
    np.testing.assert_array_equal(np.load(paths["disparity.npz"])["disparity"], res.heads["disparity"])
    meta = json.loads(paths["generation.json"].read_text())
    assert meta["shapes"]["disparity"] == [T, H, W] and "disparity.npz" in meta["files"]
    assert "depth.npz" in meta["files"] and "points.npz" in meta["files"]  # the built-in heads are unchanged


def test_register_head_rejects_a_taken_name_or_key() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register_head(registry.HEADS["depth"])
    clash = HeadSpec(name="depth2", module="depth2_head", build=SPEC.build, run=_run, outputs=("depth",),
                     loss=_loss, loss_keys=("loss_depth2",))
    with pytest.raises(ValueError, match="belong to another head"):
        registry.register_head(clash)
    assert "depth2" not in registry.HEADS
