"""A non-finite loss skips the step with a warning; K skipped steps in a row stop the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.training import losses as losses_mod
from fantasyworld.training.config import load_config
from fantasyworld.training.parallel import World
from fantasyworld.training.trainer import NonFiniteLossError, Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = World(0, 1, 0, torch.device("cpu"), False)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("nf") / "data", num_clips=2, num_frames=5, height=32,
                              width=32, seed=1, workers=1)


def _poison(monkeypatch: pytest.MonkeyPatch, bad_steps: set[int] | None) -> None:
    """Make ``compute_losses`` return a NaN objective on the given 1-based steps (None: always)."""
    real = losses_mod.compute_losses
    calls = {"n": 0}

    def fake(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        step = calls["n"]  # one batched call (both samples, per_sample=True) per step
        if bad_steps is None or step in bad_steps:
            out["objective"] = out["objective"] * float("nan")
        return out

    monkeypatch.setattr(losses_mod, "compute_losses", fake)  # per_sample_losses calls it per micro-batch


def _config(data: Path, out: Path, steps: int, **extra: object):
    overrides = {"output_dir": out, "data.root": data, "data.num_frames": 5, "data.height": 32, "data.width": 32,
                 "steps": steps, "checkpoint.every": 1, "checkpoint.keep_last": 10, "log.progress": False,
                 "log.tensorboard": False, **extra}
    return load_config(CONFIGS / "stage1_tiny.yaml", [f"{k}={v}" for k, v in overrides.items()])


def test_nonfinite_step_is_skipped_with_warning(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    _poison(monkeypatch, {2})
    result = Trainer(_config(data, tmp_path / "run", steps=3), CPU).train()
    assert result.stopped == "finished" and result.step == 3
    assert [row["skipped"] for row in result.history] == [0.0, 1.0, 0.0]
    assert result.history[1]["objective"] != result.history[1]["objective"]  # NaN logged for the skipped step
    w1, w2, w3 = (load_file(str(tmp_path / "run" / f"step-{s}.safetensors")) for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped step left the weights alone
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # training went on afterwards


def test_k_nonfinite_steps_in_a_row_stop_the_run(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _poison(monkeypatch, None)
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row had a non-finite loss"):
        Trainer(_config(data, tmp_path / "run", steps=10, max_nonfinite_steps=3), CPU).train()
