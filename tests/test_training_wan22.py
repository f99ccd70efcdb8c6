"""Training one expert of the Wan2.2 variant: its noise levels stay on its side of the
timestep boundary, and the camera reaches the frozen control adapter in stage 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.models.config import get_preset
from fantasyworld.models.flow_matching import expert_sigma_range, sample_training_sigmas, sigma_to_timestep
from fantasyworld.models.inputs import position_noise
from fantasyworld.training import trainer as trainer_mod

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_expert_noise_levels_stay_on_their_side_of_the_boundary() -> None:
    gen = torch.Generator().manual_seed(0)
    high = sample_training_sigmas(20000, gen, 5.0, sigma_range=expert_sigma_range("high", 900.0))
    low = sample_training_sigmas(20000, gen, 5.0, sigma_range=expert_sigma_range("low", 900.0))
    assert bool((sigma_to_timestep(high) > 900).all()) and float(high.max()) <= 1.0
    assert bool((sigma_to_timestep(low) <= 900).all()) and float(low.min()) >= 0.0
    # the conditioned shifted distribution: P(sigma > 0.9) = 1 - u_b with u_b = 0.9 / (5 - 4 * 0.9) = 9/14,
    # so the low expert's median u is 9/28 -> sigma = 5u / (1 + 4u) = 45/64 = 0.703 (2e4 draws: +-0.01)
    assert abs(float(low.median()) - 45 / 64) < 0.01
    # a single model is unrestricted; per-position noise honours the range too
    assert expert_sigma_range("", 900.0) is None
    _, sig = position_noise(list(range(200)), (1, 1, 1, 1), seed=3, shift=5.0,
                            sigma_range=expert_sigma_range("high", 900.0))
    assert bool((sig * 1000 > 900).all())
    _, sig_all = position_noise(list(range(200)), (1, 1, 1, 1), seed=3, shift=5.0)
    assert bool((sig_all * 1000 <= 900).any())


@pytest.mark.parametrize("expert", ["high", "low"])
def test_a_training_step_of_one_expert_samples_only_its_side(expert, tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), "--clips", "4", "--frames", "5", "--size", "32x32",
                 "--workers", "1", "--quiet"]) == 0
    seen: list[dict] = []
    real = trainer_mod.Trainer.prepare

    def prepare(self, batch):
        inputs = real(self, batch)
        seen.append({"t": inputs["timestep"].clone(), "plucker": inputs.get("plucker") is not None})
        return inputs

    monkeypatch.setattr(trainer_mod.Trainer, "prepare", prepare)
    preset = get_preset(f"tiny-wan2.2-{expert}")
    assert main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"output_dir={tmp_path / 'run'}",
                 f"data.root={data}", f"model.preset={preset.name}", "data.num_frames=5", "data.height=32",
                 "data.width=32", "batch_size=4", "global_batch_size=4", "steps=2", "checkpoint.every=100",
                 "log.progress=false", "log.tensorboard=false"]) == 0
    t = torch.cat([s["t"] for s in seen])
    assert t.numel() == 8
    if expert == "high":
        assert bool((t > 900).all())
    else:
        assert bool((t <= 900).all())
    assert all(s["plucker"] for s in seen)  # stage 1 feeds the camera to the control adapter
