"""Stage 2 refuses to start without a matching stage-1 checkpoint, naming the key and path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fantasyworld.cli import main
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.errors import CheckpointError
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.training.config import ConfigError, load_config
from fantasyworld.training.parallel import World
from fantasyworld.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = World(0, 1, 0, torch.device("cpu"), False)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stage1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("s1") / "step-5.safetensors"
    torch.manual_seed(11)
    FantasyWorldModel(get_preset("tiny")).save_fantasyworld(path, stage=1, metadata={"step": 5})
    return path


def _trainer(tmp_path: Path, init_from: Path | None, data: Path | None = None) -> Trainer:
    """Weight errors come before the data is opened, so the data root may not exist (its up-front
    check is off; the header checks of init_from come even before it)."""
    overrides = [f"output_dir={tmp_path / 'run'}", f"data.root={data or tmp_path / 'no-data'}", "log.progress=false",
                 "data.validate=false",
                 "log.tensorboard=false", "data.num_frames=5", "data.height=32", "data.width=32"]
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    return Trainer(load_config(CONFIGS / "stage2_tiny.yaml", overrides), CPU)


def _rewrite(src: Path, dst: Path, edit, meta: dict | None = None) -> Path:
    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=meta or {"format": "fantasyworld", "stage": "1", "preset": "tiny"})
    return dst


def test_stage2_without_init_from_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stage 2 starts from a stage-1 checkpoint: set init_from="):
        load_config(CONFIGS / "stage2_tiny.yaml", ["init_from=null"])


def test_missing_stage1_file_names_key_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "stage1" / "step-20000.safetensors"
    with pytest.raises(CheckpointError, match=rf"init_from={missing}: file does not exist"):
        _trainer(tmp_path, missing)
    code = main(["train", "--config", str(CONFIGS / "stage2_tiny.yaml"), f"output_dir={tmp_path / 'cli'}",
                 f"init_from={missing}", f"data.root={tmp_path}", "log.progress=false"])
    assert code == 2
    assert f"init_from={missing}: file does not exist" in capsys.readouterr().err


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, stage1_file: Path) -> None:
    key = "geometry.camera_token"
    bad = _rewrite(stage1_file, tmp_path / "missing.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"init_from=.*1 missing keys: {key}"):
        _trainer(tmp_path, bad)
    bad = _rewrite(stage1_file, tmp_path / "extra.safetensors", lambda t: t.update(bogus=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="1 unexpected keys: bogus"):
        _trainer(tmp_path, bad)
    bad = _rewrite(stage1_file, tmp_path / "shape.safetensors", lambda t: t.update({key: torch.zeros(1, 2, 1, 3)}))
    with pytest.raises(CheckpointError, match=rf"shape mismatches: {key}"):
        _trainer(tmp_path, bad)


def test_wrong_stage_or_preset_is_refused(tmp_path: Path, stage1_file: Path) -> None:
    torch.manual_seed(0)
    model = FantasyWorldModel(get_preset("tiny"))
    stage2 = tmp_path / "stage2.safetensors"
    model.save_fantasyworld(stage2, stage=2)
    with pytest.raises(CheckpointError, match="is a stage-2 checkpoint; stage 2 must start from a stage-1"):
        _trainer(tmp_path, stage2)
    other = _rewrite(stage1_file, tmp_path / "i2v.safetensors", lambda t: None,
                     {"format": "fantasyworld", "stage": "1", "preset": "tiny-i2v"})
    with pytest.raises(CheckpointError, match="checkpoint preset 'tiny-i2v' does not match model.preset 'tiny'"):
        _trainer(tmp_path, other)


def test_matching_stage1_checkpoint_loads_strictly(tmp_path: Path, stage1_file: Path) -> None:
    data = synthesize_dataset(tmp_path / "data", num_clips=1, num_frames=5, height=32, width=32, workers=1)
    trainer = _trainer(tmp_path, stage1_file, data)
    state = load_file(str(stage1_file))
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    # stage-2-only modules start fresh (zero-initialised gammas: identity at init)
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in trainer.model.interactions.named_parameters()
               if "gamma" in n)
