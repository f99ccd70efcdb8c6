"""End to end through the CLI: synth -> stage 1 (raw clips) -> cache -> stage 2 from the
stage-1 checkpoint; the stage-1 geometry losses fall; every exported file loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.models.config import FantasyWorldConfig
from fantasyworld.models.encoders import save_tiny_encoders
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.training.logging import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS1 = 30

pytestmark = pytest.mark.usefixtures("one_thread")


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_synth_stage1_stage2_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, s1, s2, cache = tmp_path / "data", tmp_path / "s1", tmp_path / "s2", tmp_path / "cache"
    size = ["data.num_frames=5", "data.height=32", "data.width=32"]
    assert main(["data", "synth", "--out", str(data), "--clips", "6", "--frames", "5", "--size", "32x32",
                 "--workers", "1", "--quiet"]) == 0

    # stage 1 on raw clips (tiny VAE / text encoder on the fly)
    assert main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"output_dir={s1}", f"data.root={data}",
                 *size, f"steps={STEPS1}", "checkpoint.every=10", "log.progress=false"]) == 0
    rows = read_metrics(s1)
    assert [r["step"] for r in rows] == list(range(1, STEPS1 + 1))
    assert "loss_diff" not in rows[0]  # stage 1 does not compute L_diff
    first, last = rows[:6], rows[-6:]
    for key in ("loss_depth", "loss_pmap", "loss_camera", "objective"):
        assert _mean(last, key) < _mean(first, key), (key, _mean(first, key), _mean(last, key))
    assert sorted(p.name for p in s1.glob("step-*")) == [
        "step-20.safetensors", "step-20.state.pt", "step-30.safetensors", "step-30.state.pt"]
    assert any((s1 / "tb").iterdir())  # TensorBoard events

    # the same output_dir without --resume is refused (no silent overwrite)
    assert main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"output_dir={s1}", f"data.root={data}",
                 *size, "log.progress=false"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err

    # stage 2 from the stage-1 checkpoint, on a latent cache built with the same tiny encoders
    enc = save_tiny_encoders(tmp_path / "encoders")
    assert main(["data", "cache", "--data", str(data), "--out", str(cache), "--vae", str(enc["vae"]),
                 "--text-encoder", str(enc["text_encoder"]), "--frames", "5", "--size", "32x32", "--quiet"]) == 0
    assert main(["train", "--config", str(CONFIGS / "stage2_tiny.yaml"), f"output_dir={s2}",
                 f"init_from={s1 / f'step-{STEPS1}.safetensors'}", "data.root=null", f"data.cache_dir={cache}",
                 *size, "steps=3", "log.progress=false"]) == 0
    rows2 = read_metrics(s2)
    assert len(rows2) == 3 and all(r["loss_diff"] is not None and r["loss_diff"] > 0 for r in rows2)

    # the exported weights load strictly for inference with the run's config.json
    config = FantasyWorldConfig.load(s2 / "config.json")
    model = FantasyWorldModel(config)
    model.load_fantasyworld(s2 / "step-3.safetensors", stage=2)
    stage1 = FantasyWorldModel(config)
    stage1.load_fantasyworld(s1 / f"step-{STEPS1}.safetensors", stage=1)
    moved = [k for k, v in stage1.fantasyworld_state_dict(1).items()
             if not torch.equal(v, model.state_dict()[k])]
    assert moved  # stage 2 trained on from the stage-1 weights
