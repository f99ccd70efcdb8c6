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


def _same_model_pipelines():
    """A two-expert pipeline whose experts are the same weights, and the one-model pipeline of them."""
    import copy

    from fantasyworld.inference.pipeline import FantasyWorldPipeline
    from fantasyworld.models import encoders

    torch.manual_seed(30)
    low = FantasyWorldModel(get_preset("tiny-wan2.2-low")).eval()
    high = copy.deepcopy(low)
    high.config.expert = "high"  # the same weights under the high-noise name
    vae = encoders.tiny_vae(0)
    te, tok = encoders.tiny_text_encoder(0)
    return TwoExpertPipeline(high, low, vae, te, tok), FantasyWorldPipeline(low, vae, te, tok)


@pytest.mark.parametrize("geometry", ["last-step", "final"])
def test_two_experts_of_one_model_give_the_one_model_pipeline_output(geometry) -> None:
    """Both pipelines run one call (``_generate``): with both experts equal to one model, the
    expert switch changes nothing, so every output is bit-identical to the one-model pipeline's."""
    two, one = _same_model_pipelines()
    image = np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    kw = dict(image=image, camera="orbit", num_frames=5, height=32, width=48, num_steps=4, guidance_scale=4.0,
              seed=5, schedule="official", geometry=geometry, negative_prompt="", progress=False, max_points=500)
    a, b = two("a street", **kw), one("a street", **kw)
    assert (a.settings["steps_high"], a.settings["steps_low"]) == (2, 2)  # both experts ran
    for name in ("video", "latents", "depth", "depth_conf", "world_points", "pose_enc", "w2c", "intrinsics"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.cloud.xyz, b.cloud.xyz)
    assert a.settings["geometry_timestep"] == b.settings["geometry_timestep"]
    # and the outputs are not trivially equal: another seed moves them
    c = one("a street", **{**kw, "seed": 6})
    assert not np.array_equal(c.latents, b.latents)
