"""``fantasyworld evaluate`` on a tiny two-expert (Wan2.2 variant) directory: the latents mode
reads the low-noise expert only, generation runs both experts, a high-noise sigma and a lone
expert folder are refused with named errors."""

from __future__ import annotations

import json

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.errors import UnsupportedModeError
from fantasyworld.eval.evaluate import DEPTH_KEYS, EvalSettings, evaluate
from fantasyworld.inference.two_expert import expert_steps
from fantasyworld.inference.two_expert_pipeline import TwoExpertPipeline
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval22")
    data = synthesize_dataset(root / "data", num_clips=2, num_frames=5, height=32, width=32, seed=4, workers=1)
    ckpt = root / "ckpt"
    for seed, expert in enumerate(("high", "low")):
        torch.manual_seed(40 + seed)
        config = get_preset(f"tiny-wan2.2-{expert}")
        (ckpt / expert).mkdir(parents=True)
        config.save(ckpt / expert / "config.json")
        FantasyWorldModel(config).save_fantasyworld(ckpt / expert / "fantasyworld.safetensors", stage=2)
    return data, ckpt, root


def _counted_pipe(ckpt):
    """The two-expert pipeline with a count of each expert's forwards (``heads`` asked or not)."""
    pipe = TwoExpertPipeline.from_pretrained(ckpt)
    calls: list[tuple[str, bool]] = []
    for name, model in (("high", pipe.high_model), ("low", pipe.model)):
        model.register_forward_pre_hook(  # no heads keyword: the forward's default, every head
            lambda m, a, kw, name=name: calls.append((name, "heads" not in kw or bool(kw["heads"]))),
            with_kwargs=True)
    return pipe, calls


def test_latents_mode_reads_the_low_expert_and_generation_runs_both(setup) -> None:
    data, ckpt, root = setup
    pipe, calls = _counted_pipe(ckpt)
    settings = EvalSettings(split="all", num_frames=5, height=32, width=32, num_steps=3, modes=("latents",))
    m = evaluate(ckpt, data, root / "lat", settings, pipe=pipe, report=False, log=None)
    assert m["experts"] == ["tiny-wan2.2-high", "tiny-wan2.2-low"] and m["preset"] == "tiny-wan2.2-low"
    assert calls == [("low", True)] * 2  # one forward with the heads per clip, by the low-noise expert
    assert set(m["summary"]["latents"]["model"]) >= set(DEPTH_KEYS)

    calls.clear()
    settings = EvalSettings(split="all", num_frames=5, height=32, width=32, num_steps=3, modes=("generation",))
    m = evaluate(ckpt, data, root / "gen", settings, pipe=pipe, report=False, log=None)
    plan = expert_steps(3, 5.0, schedule="project")
    assert "high" in plan and "low" in plan  # the boundary splits these 3 steps
    # per clip: the planned expert at each step (no CFG), then the low expert's geometry forward
    assert calls == ([(e, False) for e in plan] + [("low", True)]) * 2
    assert m["summary"]["generation"]["num_clips"] == 2


def test_high_noise_sigma_and_a_lone_expert_are_refused(setup, capsys) -> None:
    data, ckpt, root = setup
    with pytest.raises(UnsupportedModeError, match="high-noise step of this two-expert model"):
        evaluate(ckpt, data, root / "refused", EvalSettings(sigma=0.95, modes=("latents",)), report=False, log=None)
    assert not (root / "refused").exists()  # refused before anything was loaded or written
    # sigma 0.9 is timestep 900, not above the boundary: the low expert serves it
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all", "--frames", "5",
                 "--size", "32x32", "--modes", "latents", "--sigma", "0.9", "--no-report",
                 "--out", str(root / "cli")]) == 0
    assert json.loads((root / "cli" / "metrics.json").read_text())["experts"][1] == "tiny-wan2.2-low"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--modes", "latents", "--sigma",
                 "0.95", "--out", str(root / "cli_high")]) == 2
    assert "high-noise step" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ckpt / "low"), "--data", str(data), "--frames", "5",
                 "--size", "32x32", "--out", str(root / "lone")]) == 2
    assert "one expert of a two-expert model" in capsys.readouterr().err
