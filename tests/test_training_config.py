"""Run-config validation: every bad setting names the key and says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from fantasyworld.cli import main
from fantasyworld.training.config import ConfigError, apply_overrides, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OK = {"data": {"root": "data/x"}}


def _cfg(**changes: object):
    return config_from_dict(apply_overrides(OK, [f"{k}={v}" for k, v in changes.items()]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage": 3}, "stage must be 1 or 2"),
        ({"stage": 2}, "stage 2 starts from a stage-1 checkpoint: set init_from="),
        ({"steps": 0}, "steps must be >= 1"),
        ({"steps": "abc"}, "steps must be an integer, got 'abc'"),
        ({"optim.lrr": 1e-4}, "unknown config key 'optim.lrr' (did you mean optim.lr?)"),
        ({"optim.lr": 0}, "optim.lr must be > 0"),
        ({"optim.grad_clip": -1}, "optim.grad_clip must be > 0 or null"),
        ({"data.num_frames": 8}, "data.num_frames must be 4k+1"),
        ({"data.height": 40}, "data.height must be a positive multiple of 16"),
        ({"data.cache_dir": "cache"}, "set exactly one of data.root"),
        ({"model.preset": "tiny2"}, "model.preset 'tiny2' is unknown"),
        ({"model.preset": "wan2.1-t2v-1.3b"}, "model.backbone_dir is required for preset 'wan2.1-t2v-1.3b'"),
        ({"model.preset": "wan2.1-t2v-1.3b", "model.backbone_dir": "wan"},
         "data.vae must be a local model directory for preset 'wan2.1-t2v-1.3b' with raw data"),
        ({"global_batch_size": 7, "batch_size": 2}, "global_batch_size 7 is not a multiple of batch_size 2"),
        ({"mixed_precision": "fp16"}, "mixed_precision must be auto, bf16 or fp32"),
        ({"log.progress": "maybe"}, "log.progress must be true or false"),
        ({"loss.camera_loss": "l2"}, "loss.camera_loss must be one of huber, l1, got 'l2'"),
    ],
)
def test_bad_setting_names_key_and_fix(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(**changes)
    assert message in str(err.value)


def test_global_batch_is_checked_against_devices_with_a_hint() -> None:
    cfg = _cfg(batch_size=2, grad_accum=1, global_batch_size=64)
    assert cfg.check_world(32) == 64
    with pytest.raises(ConfigError, match=r"global_batch_size 64 != batch_size 2 x 8 devices x grad_accum 1 = 16: "
                                          r"set grad_accum=4"):
        cfg.check_world(8)


def test_overrides_are_typed_and_yaml_floats_like_1e_5_work() -> None:
    cfg = _cfg(**{"optim.lr": "1e-5", "optim.betas": "[0.9, 0.95]", "optim.grad_clip": "null", "steps": "20"})
    assert cfg.optim.lr == 1e-5 and cfg.optim.betas == (0.9, 0.95) and cfg.optim.grad_clip is None
    assert cfg.steps == 20
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["optim.lr"])


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    if cfg.global_batch_size is not None and cfg.model.preset.startswith("wan"):
        devices = cfg.global_batch_size // (cfg.batch_size * cfg.grad_accum)
        assert cfg.check_world(devices) == cfg.global_batch_size


def test_seed_stage_configs_match_the_seed() -> None:
    s1 = load_config(CONFIGS / "stage1_t2v_1.3b.yaml")
    s2 = load_config(CONFIGS / "stage2_t2v_1.3b.yaml")
    assert (s1.stage, s1.steps, s1.global_batch_size, s1.optim.lr, s1.checkpoint.every) == (1, 20000, 64, 1e-5, 1000)
    assert (s1.data.height, s1.data.width, s1.model.preset) == (336, 592, "wan2.1-t2v-1.3b")
    assert (s2.stage, s2.steps, s2.global_batch_size, s2.optim.lr, s2.data.num_frames) == (2, 10000, 112, 1e-5, 81)
    assert s2.init_from.endswith("fantasy_world_stage1/step-20000.safetensors")
    i2v = load_config(CONFIGS / "stage2_i2v_14b.yaml")
    assert i2v.model.preset == "wan2.1-i2v-14b-480p"


def test_cli_prints_the_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), "optim.lr=-1"])
    assert code == 2
    assert "optim.lr must be > 0" in capsys.readouterr().err
    code = main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), "--print-config", "steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
