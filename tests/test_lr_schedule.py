"""Learning-rate schedules: warmup, constant and cosine multipliers, config validation."""

from __future__ import annotations

import math

import pytest

from fantasyworld.training.config import ConfigError, config_from_dict
from fantasyworld.training.lr_schedule import lr_multiplier


def test_constant_is_warmup_then_one():
    fn = lr_multiplier("constant", warmup_steps=4, total_steps=10)
    assert [fn(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_multiplier("constant", 0, 10)(0) == 1.0


def test_cosine_runs_from_peak_to_floor_over_the_run():
    fn = lr_multiplier("cosine", warmup_steps=2, total_steps=12, min_ratio=0.1)
    assert fn(0) == 0.5 and fn(1) == 1.0  # warmup
    assert fn(2) == pytest.approx(1.0)  # peak right after warmup
    assert fn(11) == pytest.approx(0.1)  # floor at the last step
    # halfway through the decay (step 2 + 9/2): the mean of peak and floor
    assert lr_multiplier("cosine", 0, 11, 0.0)(5) == pytest.approx(0.5)
    values = [fn(s) for s in range(2, 12)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
    assert fn(50) == pytest.approx(0.1)  # past the end: stays at the floor
    assert lr_multiplier("cosine", 0, 3, 0.0)(1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_unknown_schedule_is_a_config_error():
    base = {"stage": 1, "output_dir": "out", "model": {"preset": "tiny"}, "data": {"root": "data"}}
    with pytest.raises(ConfigError, match="optim.schedule"):
        config_from_dict({**base, "optim": {"schedule": "linear"}})
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        config_from_dict({**base, "optim": {"schedule": "cosine", "min_lr_ratio": 2.0}})
    assert config_from_dict({**base, "optim": {"schedule": "cosine"}}).optim.schedule == "cosine"
