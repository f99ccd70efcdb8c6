"""The curriculum over clip difficulty (``data.curriculum``): measures, the ramp of the pool,
determinism by stream position, hand-back to the usual order, config checks, and the trainer's
streams (cache on the device and loader) drawing the easiest clips first."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fantasyworld.data.cache import CachedClipDataset, build_cache
from fantasyworld.data.curriculum import DIFFICULTY_MEASURES, CurriculumOrder, clip_poses
from fantasyworld.data.loader import RawClipDataset
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.errors import ConfigError
from fantasyworld.geometry.cameras import look_at_w2c
from fantasyworld.models.encoders import save_tiny_encoders
from fantasyworld.training.config import config_from_dict
from fantasyworld.training.data import PositionDataset
from fantasyworld.training.parallel import World
from fantasyworld.training.trainer import Trainer

CPU = World(0, 1, 0, torch.device("cpu"), False)
T, S = 5, 32


def _turn(degrees: float, frames: int = 5) -> np.ndarray:
    """A camera at the origin turning by ``degrees`` about the vertical over ``frames`` frames."""
    angles = np.deg2rad(np.linspace(0.0, degrees, frames))
    return np.stack([look_at_w2c(np.zeros(3), np.array([math.sin(a), 0.0, math.cos(a)])) for a in angles])


def test_rotation_and_translation_difficulty() -> None:
    assert DIFFICULTY_MEASURES["rotation"](_turn(30.0)) == pytest.approx(30.0, abs=1e-9)
    assert DIFFICULTY_MEASURES["rotation"](_turn(0.0)) == pytest.approx(0.0, abs=1e-9)
    eyes = [np.array([0.0, 0.0, z]) for z in (0.0, 0.5, 2.0)]  # a dolly of 2 units, no rotation
    dolly = np.stack([look_at_w2c(e, e + np.array([0.0, 0.0, 1.0])) for e in eyes])
    assert DIFFICULTY_MEASURES["translation"](dolly) == pytest.approx(2.0, abs=1e-9)
    assert DIFFICULTY_MEASURES["rotation"](dolly) == pytest.approx(0.0, abs=1e-6)


def test_the_pool_grows_from_the_easiest_clips_to_all_of_them() -> None:
    difficulty = np.arange(20, dtype=float)[::-1]  # item 19 is the easiest
    order = CurriculumOrder(difficulty, start_fraction=0.25, ramp_steps=10, global_batch=4, seed=0)
    assert [order.pool_size(s) for s in (0, 5, 10, 50)] == [5, 13, 20, 20]
    first = {order.index(p) for p in range(4 * 2)}  # steps 0 and 1: pools of 5 and 7
    assert first <= set(range(13, 20))
    assert {order.index(p) for p in range(4)} <= set(range(15, 20))  # step 0: the 5 easiest
    assert order.active(39) and not order.active(40)
    # a position alone fixes its sample
    again = CurriculumOrder(difficulty, 0.25, 10, 4, seed=0)
    assert [order.index(p) for p in range(40)] == [again.index(p) for p in range(40)]
    other = CurriculumOrder(difficulty, 0.25, 10, 4, seed=1)
    assert [order.index(p) for p in range(40)] != [other.index(p) for p in range(40)]


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"i": i}


def test_after_the_ramp_the_stream_is_the_usual_one() -> None:
    n, g = 12, 3
    plain = PositionDataset(_Items(n), seed=5)
    order = CurriculumOrder(np.arange(n, dtype=float), 0.25, ramp_steps=4, global_batch=g, seed=5)
    cur = PositionDataset(_Items(n), seed=5, curriculum=order)
    assert all(cur.locate(p)[1] < 3 for p in range(g))  # step 0: the 3 easiest (items 0-2)
    assert [cur.locate(p) for p in range(4 * g, 60)] == [plain.locate(p) for p in range(4 * g, 60)]
    with pytest.raises(ValueError, match="curriculum and buckets"):
        PositionDataset(_Items(n), seed=5, order=object(), curriculum=order)  # type: ignore[arg-type]


def test_curriculum_settings_are_checked() -> None:
    base = {"stage": 1, "output_dir": "o", "steps": 2, "model": {"preset": "tiny"},
            "data": {"cache_dir": "c", "num_frames": T, "height": S, "width": S}}

    def config(**cur: object) -> object:
        return config_from_dict({**base, "data": {**base["data"], "curriculum": cur}})

    config(measure="rotation", ramp_steps=5)
    with pytest.raises(ConfigError, match="data.curriculum.measure"):
        config(measure="spin", ramp_steps=5)
    with pytest.raises(ConfigError, match="ramp_steps"):
        config(measure="rotation")
    with pytest.raises(ConfigError, match="start_fraction"):
        config(measure="rotation", ramp_steps=5, start_fraction=0.0)
    with pytest.raises(ConfigError, match="data.buckets"):
        config_from_dict({**base, "data": {**base["data"], "curriculum": {"measure": "rotation", "ramp_steps": 5},
                                           "buckets": {"sizes": [[T, S, S]]}}})


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("curriculum")
    data = synthesize_dataset(base / "data", num_clips=6, num_frames=T, height=S, width=S, seed=2, workers=1)
    enc = save_tiny_encoders(base / "enc")
    cache = build_cache(data, base / "cache", enc["vae"], enc["text_encoder"], num_frames=T)
    return Path(data), Path(cache)


def test_poses_are_read_alone_and_agree_with_the_items(worlds: tuple[Path, Path]) -> None:
    data, cache = worlds
    cached, raw = CachedClipDataset(cache), RawClipDataset(data, num_frames=T)
    for i in range(len(cached)):
        np.testing.assert_allclose(clip_poses(cached, i), cached[i]["w2c"].numpy(), atol=1e-6)
    for i in range(len(raw)):
        np.testing.assert_allclose(clip_poses(raw, i), raw[i]["w2c"].numpy(), atol=1e-6)


@pytest.mark.parametrize("on_device", [True, False])
def test_the_trainer_draws_the_easiest_clips_first(worlds: tuple[Path, Path], tmp_path: Path,
                                                   on_device: bool) -> None:
    _, cache = worlds
    cfg = config_from_dict({
        "stage": 1, "output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 2, "seed": 3, "device": "cpu",
        "mixed_precision": "fp32", "model": {"preset": "tiny"},
        "data": {"cache_dir": str(cache), "num_frames": T, "height": S, "width": S, "cache_on_device": on_device,
                 "curriculum": {"measure": "rotation", "start_fraction": 0.34, "ramp_steps": 100}},
        "optim": {"lr": 1e-3}, "checkpoint": {"every": 100, "keep_last": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False}})
    trainer = Trainer(cfg, CPU)
    dataset = CachedClipDataset(cache)
    difficulty = np.array([DIFFICULTY_MEASURES["rotation"](clip_poses(dataset, i)) for i in range(len(dataset))])
    easiest = {dataset.entries[i]["clip_id"] for i in np.argsort(difficulty, kind="stable")[:3]}  # ceil(6 * 0.34)
    it = iter(trainer.loader)
    seen = {clip for _ in range(4) for clip in next(it)["clip_id"]}
    assert seen <= easiest, (seen, easiest, difficulty)
