"""``base:`` in a run config: a stage-2 file states only what differs from its stage-1 file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fantasyworld.training.config import ConfigError, config_to_dict, load_config, read_config_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_nested_sections_merge_and_values_replace(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("stage: 1\nsteps: 7\ndata:\n  root: d\noptim:\n  lr: 0.5\n  warmup_steps: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nsteps: 9\noptim:\n  warmup_steps: 1\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nlog:\n  every: 4\n")
    assert read_config_file(tmp_path / "c.yaml") == {
        "stage": 1, "steps": 9, "data": {"root": "d"}, "optim": {"lr": 0.5, "warmup_steps": 1}, "log": {"every": 4}}
    cfg = load_config(tmp_path / "c.yaml", ["steps=11"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.log.every) == (11, 0.5, 1, 4)


def test_bad_bases_are_named(tmp_path: Path) -> None:
    (tmp_path / "loop1.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop1.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop1.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\nsteps: 3\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "num.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base must be a file name"):
        load_config(tmp_path / "num.yaml")


@pytest.mark.parametrize(("stage1", "stage2", "extra"), [
    ("stage1_tiny.yaml", "stage2_tiny.yaml", set()),
    ("stage1_t2v_1.3b.yaml", "stage2_t2v_1.3b.yaml", {"grad_accum", "global_batch_size", "optim.warmup_steps"}),
    ("stage1_i2v_14b.yaml", "stage2_i2v_14b.yaml", {"grad_accum", "global_batch_size", "optim.warmup_steps"}),
])
def test_stage2_configs_state_only_what_differs(stage1: str, stage2: str, extra: set[str]) -> None:
    raw = yaml.safe_load((CONFIGS / stage2).read_text())
    assert raw["base"] == stage1
    stated = set(_flat({k: v for k, v in raw.items() if k != "base"}))
    assert stated == {"stage", "output_dir", "init_from", "steps"} | extra
    a = _flat(config_to_dict(load_config(CONFIGS / stage1)))
    b = _flat(config_to_dict(load_config(CONFIGS / stage2)))
    assert {k for k in a if a[k] != b[k]} == stated
