"""The Wan2.2 variant end to end on tiny experts: first + last image, a camera path through
both control adapters, geometry from the low expert, and every export of the single-model path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.inference.two_expert import expert_steps
from fantasyworld.inference.two_expert_pipeline import TwoExpertPipeline
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan22ckpt")
    for seed, expert in enumerate(("high", "low")):
        torch.manual_seed(20 + seed)
        config = get_preset(f"tiny-wan2.2-{expert}")
        model = FantasyWorldModel(config)
        (root / expert).mkdir()
        config.save(root / expert / "config.json")
        model.save_fantasyworld(root / expert / "fantasyworld.safetensors", stage=2)
    return root


def test_two_expert_generation_and_exports(ckpt, tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("first.png", "last.png"):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    assert main(["generate", "--checkpoint", str(ckpt), "--image", str(tmp_path / "first.png"),
                 "--last-image", str(tmp_path / "last.png"), "--camera", "orbit", "--frames", "5",
                 "--size", "32x48", "--steps", "4", "--schedule", "official", "--geometry", "last-step",
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    names = {p.name for p in out.iterdir()}
    # the single-model path's exports: video, latents, depth, points, cameras, cloud, GLB, COLMAP, report
    assert {"video.mp4", "latents.npy", "depth.npz", "depth.mp4", "points.npz", "points.ply", "scene.glb",
            "colmap", "generation.json", "report.html"} <= names
    settings = json.loads((out / "generation.json").read_text())["settings"]
    plan = expert_steps(4, schedule="official")
    assert plan == ["high", "high", "low", "low"]  # bf16 t: 1000, 936, 832, 624
    assert (settings["steps_high"], settings["steps_low"]) == (2, 2)
    assert settings["experts"] == ["tiny-wan2.2-high", "tiny-wan2.2-low"] and settings["height"] == 32

    pipe = TwoExpertPipeline.from_pretrained(ckpt)
    first = np.asarray(Image.open(tmp_path / "first.png"))
    res = pipe("a street", image=first, last_image=tmp_path / "last.png", camera="dolly-in", num_frames=5,
               height=32, width=48, num_steps=4, schedule="official", geometry="last-step", progress=False)
    assert res.settings["steps_high"] == plan.count("high") and res.settings["steps_low"] == plan.count("low")
    assert res.settings["negative_prompt"] == "" and res.settings["last_image"].endswith("last.png")
    assert res.video.shape == (5, 32, 48, 3) and res.depth.shape == (5, 32, 48)
    assert res.w2c.shape == (5, 4, 4) and res.world_points.shape == (5, 32, 48, 3)
    # the last image changes the conditioning (and so the video)
    res2 = pipe("a street", image=first, camera="dolly-in", num_frames=5, height=32, width=48, num_steps=4,
                schedule="official", geometry="last-step", progress=False)
    assert not np.array_equal(res.latents, res2.latents)


def test_one_expert_alone_is_refused_by_the_single_model_pipeline(ckpt, tmp_path) -> None:
    from fantasyworld.errors import CheckpointError
    from fantasyworld.inference.pipeline import FantasyWorldPipeline

    with pytest.raises(CheckpointError, match="one expert of a two-expert model"):
        FantasyWorldPipeline.from_pretrained(ckpt / "low")
    with pytest.raises(CheckpointError, match="not a two-expert checkpoint"):
        TwoExpertPipeline.from_pretrained(ckpt / "low")
