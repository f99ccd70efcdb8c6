"""Training steps that never wait for the device: no host read-back inside a step, log rows
every ``log.every`` steps, skipped steps handled on the device, the cache held on the device,
a wall-clock deadline."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fantasyworld.data.cache import CachedClipDataset, build_cache
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.models.encoders import save_tiny_encoders
from fantasyworld.training import losses as losses_mod
from fantasyworld.training.config import config_from_dict
from fantasyworld.training.data import build_stream_loader
from fantasyworld.training.device_cache import DeviceCacheStream
from fantasyworld.training.logging import read_metrics
from fantasyworld.training.parallel import World
from fantasyworld.training.trainer import Trainer

CPU = World(0, 1, 0, torch.device("cpu"), False)
T, S = 5, 32
#: ops that read a device value back to the host (a synchronisation on a GPU)
HOST_READS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.masked_select", "aten.is_nonzero",
              "aten.equal", "aten.allclose", "aten._assert_async"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("throughput")
    data = synthesize_dataset(base / "data", num_clips=3, num_frames=T, height=S, width=S, seed=4, workers=1)
    enc = save_tiny_encoders(base / "enc")
    return build_cache(data, base / "cache", enc["vae"], enc["text_encoder"], num_frames=T,
                       geometry_dtype="float16")


def _config(cache: Path, out: Path, **extra: object):
    data = {"stage": 1, "output_dir": str(out), "steps": 4, "batch_size": 2, "seed": 3, "device": "cpu",
            "mixed_precision": "fp32", "model": {"preset": "tiny"},
            "data": {"cache_dir": str(cache), "num_frames": T, "height": S, "width": S},
            "optim": {"lr": 1e-3}, "loss": {}, "checkpoint": {"every": 100, "keep_last": 1},
            "log": {"every": 1, "tensorboard": False, "progress": False}}
    for key, value in extra.items():
        section, _, name = key.partition(".")
        if name:
            data[section][name] = value
        else:
            data[key] = value
    return config_from_dict(data)


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stage", [1, 2])
def test_a_training_step_reads_nothing_back_from_the_device(cache: Path, tmp_path: Path, stage: int) -> None:
    first = Trainer(_config(cache, tmp_path / "s1", steps=1))
    init = first.train().last_checkpoint
    extra = {"stage": 2, "init_from": str(init)} if stage == 2 else {}
    trainer = Trainer(_config(cache, tmp_path / f"run{stage}", **extra), CPU)
    it = iter(trainer.loader)
    batches = [next(it) for _ in range(2)]  # the loader's own work is outside the step
    trainer.step_on_device(iter(batches[:1]))
    ops = _Ops()
    with ops:
        means, norm, skipped = trainer.step_on_device(iter(batches[1:]))
    reads = {k: v for k, v in ops.count.items() if k in HOST_READS}
    assert sum(ops.count.values()) > 1000 and not reads, reads
    assert means.shape == (len(losses_mod.loss_keys(stage)),) and torch.isfinite(means).all()
    assert norm.ndim == 0 and norm > 0 and skipped.dtype == torch.bool and not skipped


def test_rows_every_n_steps_hold_the_means_of_their_steps(cache: Path, tmp_path: Path) -> None:
    every = Trainer(_config(cache, tmp_path / "every1", steps=6), CPU).train()
    grouped = Trainer(_config(cache, tmp_path / "every4", steps=6, **{"log.every": 4}), CPU).train()
    assert [r["step"] for r in grouped.history] == [4, 6]  # every 4 steps and the last step
    assert [r["steps"] for r in grouped.history] == [4.0, 2.0]
    assert [r["step"] for r in read_metrics(tmp_path / "every4")] == [4, 6]
    for row, (lo, hi) in zip(grouped.history, [(0, 4), (4, 6)]):
        for key in ("objective", "loss_depth", "loss_camera", "grad_norm"):
            want = sum(r[key] for r in every.history[lo:hi]) / (hi - lo)
            assert row[key] == pytest.approx(want, rel=1e-6), key
        assert row["skipped"] == 0.0 and row["step_time_s"] > 0 and row["samples_per_s"] > 0


def _poison(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None) -> None:
    """NaN objective on the given 1-based ``compute_losses`` calls (one per step here)."""
    real = losses_mod.compute_losses
    calls = {"n": 0}

    def fake(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if bad_calls is None or calls["n"] in bad_calls:
            out["objective"] = out["objective"] * float("nan")
        return out

    monkeypatch.setattr(losses_mod, "compute_losses", fake)


def test_a_skipped_step_leaves_weights_and_optimizer_state_alone(cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(_config(cache, tmp_path / "run"), CPU)
    it = iter(trainer.loader)
    trainer.step_on_device(it)
    params = [p for _, p in trainer.trainable]
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in trainer.optimizer.state[p].items()} for p in params]
    _poison(monkeypatch, None)
    _, _, skipped = trainer.step_on_device(it)
    assert bool(skipped)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    for p, saved in zip(params, state):
        assert all(torch.equal(trainer.optimizer.state[p][k], v) for k, v in saved.items())  # step, moments
    assert trainer.optimizer.state[params[0]]["step"].item() == 1.0


def test_skips_inside_a_row_are_counted_and_a_streak_stops_the_run(cache: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fantasyworld.errors import NonFiniteLossError

    _poison(monkeypatch, {2, 3})
    result = Trainer(_config(cache, tmp_path / "some", steps=6, **{"log.every": 3}), CPU).train()
    assert [(r["step"], r["skipped"]) for r in result.history] == [(3, 2.0), (6, 0.0)]
    assert math.isfinite(result.history[0]["objective"])  # the mean of the one kept step of the row
    _poison(monkeypatch, None)
    with pytest.raises(NonFiniteLossError, match="4 optimizer steps in a row"):
        Trainer(_config(cache, tmp_path / "all", steps=8, max_nonfinite_steps=3, **{"log.every": 4}), CPU).train()


def test_cache_on_device_streams_the_loaders_samples(cache: Path, tmp_path: Path) -> None:
    dataset = CachedClipDataset(cache)
    kw = {"seed": 5, "batch_size": 2, "world_size": 1, "rank": 0, "grad_accum": 1, "start_step": 1}
    stream = DeviceCacheStream(dataset, torch.device("cpu"), **kw)
    assert stream.tensors["points"].dtype == torch.float16  # stored dtype kept in memory
    assert stream.nbytes() < sum(p.stat().st_size for p in cache.glob("*.safetensors"))
    for got, want in zip(iter(stream), [b for _, b in zip(range(3), build_stream_loader(dataset, **kw))]):
        assert got["clip_id"] == want["clip_id"] and torch.equal(got["sample_position"], want["sample_position"])
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    a = Trainer(_config(cache, tmp_path / "loader"), CPU).train()
    b = Trainer(_config(cache, tmp_path / "device", **{"data.cache_on_device": True}), CPU).train()
    assert [r["objective"] for r in a.history] == [r["objective"] for r in b.history]


def test_a_deadline_stops_the_run_with_a_checkpoint(cache: Path, tmp_path: Path) -> None:
    result = Trainer(_config(cache, tmp_path / "run", steps=50), CPU).train(deadline=time.monotonic())
    assert result.stopped == "time_limit" and result.step == 1
    assert result.last_checkpoint == tmp_path / "run" / "step-1.safetensors" and result.last_checkpoint.is_file()


def test_camera_dropout_withholds_the_rays_on_the_steps_it_draws(cache: Path, tmp_path: Path) -> None:
    from fantasyworld.training.data import camera_dropped

    draws = [camera_dropped(3, step * 4, 4, 0.5) for step in range(400)]
    assert 0.4 < sum(draws) / len(draws) < 0.6 and not any(camera_dropped(3, p, 4, 0.0) for p in range(100))
    assert [camera_dropped(3, step * 4 + 3, 4, 0.5) for step in range(400)] == draws  # one draw per step
    init = Trainer(_config(cache, tmp_path / "s1", steps=1), CPU).train().last_checkpoint
    trainer = Trainer(_config(cache, tmp_path / "s2", stage=2, init_from=str(init), **{"loss.camera_dropout": 0.5}),
                      CPU)
    it = iter(trainer.loader)
    seen = []
    for step in range(8):
        inputs = trainer.prepare(next(it))
        seen.append(inputs.get("plucker") is None)
        assert seen[-1] == camera_dropped(3, step * 2, 2, 0.5)
    assert any(seen) and not all(seen)


def test_the_device_cache_is_loaded_once_per_process(cache: Path) -> None:
    from fantasyworld.training.device_cache import load_device_cache, release_device_cache

    dataset = CachedClipDataset(cache)
    kw = {"seed": 0, "batch_size": 1, "world_size": 1, "rank": 0, "grad_accum": 1}
    a = DeviceCacheStream(dataset, torch.device("cpu"), **kw)
    b = DeviceCacheStream(CachedClipDataset(cache), torch.device("cpu"), **kw)
    assert all(a.tensors[k] is b.tensors[k] for k in a.tensors)  # the second stream reads nothing
    release_device_cache()
    fresh, _ = load_device_cache(dataset, torch.device("cpu"))
    assert fresh["latents"] is not a.tensors["latents"] and torch.equal(fresh["latents"], a.tensors["latents"])


class _Clock:
    """The trainer's ``time`` module, with a clock that moves only when a step runs."""

    def __init__(self, seconds_per_step: float, slow_until: int = 0) -> None:
        self.now, self.seconds_per_step, self.slow_until = 1000.0, seconds_per_step, slow_until

    def monotonic(self) -> float:
        return self.now


def _clocked(monkeypatch: pytest.MonkeyPatch, trainer: Trainer, clock: _Clock, stall_at: int | None = None) -> None:
    """Each optimizer step of ``trainer`` advances ``clock`` by its step time; the step
    ``stall_at`` takes an hour (a stalled machine)."""
    import fantasyworld.training.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "time", clock)
    real = trainer.step_on_device
    done = [trainer.start_step]

    def step(data_iter):
        out = real(data_iter)
        done[0] += 1
        slow = 2.0 if done[0] <= clock.slow_until else 1.0  # a machine busy at the start
        clock.now += 3600.0 if done[0] == stall_at else clock.seconds_per_step * slow
        return out

    monkeypatch.setattr(trainer, "step_on_device", step)


def test_a_time_budget_plans_the_steps_and_the_schedule_ends_with_it(cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fantasyworld.training.time_budget import PLAN_AT_STEP, PLAN_MARGIN

    extra = {"steps": 200, "time_budget_s": 4.0, "optim.schedule": "cosine", "optim.min_lr_ratio": 0.1,
             "checkpoint.every": 30}
    trainer = Trainer(_config(cache, tmp_path / "run", **extra), CPU)
    clock = _Clock(0.1)  # 10 steps/s: 2.5 s gone at step 25, 1.5 s left
    _clocked(monkeypatch, trainer, clock, stall_at=32)
    first = trainer.train()
    planned = PLAN_AT_STEP + int(10.0 * 1.5 * PLAN_MARGIN)
    assert first.planned_steps == planned == 39 and first.planned_rate == pytest.approx(10.0)
    # the stall at step 32 passes the budget: stopped with a checkpoint that keeps the plan
    assert first.stopped == "time_limit" and first.step == 32

    resumed = Trainer(_config(cache, tmp_path / "run", resume=True, **extra), CPU)
    assert resumed.start_step == 32 and resumed.total_steps == planned
    _clocked(monkeypatch, resumed, _Clock(0.1))
    second = resumed.train()
    assert second.stopped == "finished" and second.step == planned and second.planned_rate is None
    lrs = [r["lr"] for r in first.history + second.history]
    assert lrs[-1] == pytest.approx(1e-3 * 0.1)  # the cosine reached its floor at the planned last step
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # one decreasing curve across the plan and the resume


def test_a_budget_that_fits_every_step_changes_nothing(cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(_config(cache, tmp_path / "run", steps=30, time_budget_s=1e6), CPU)
    _clocked(monkeypatch, trainer, _Clock(0.1))
    result = trainer.train()
    assert result.step == 30 and result.planned_steps == 30 and result.stopped == "finished"
    with pytest.raises(Exception, match="time_budget_s must be > 0"):
        _config(cache, tmp_path / "bad", time_budget_s=0)


def test_the_plan_follows_a_machine_that_gets_faster(cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 1-25 at 5/s, then 10/s: the first plan (49 steps) is too short, the re-plans at
    30% and 60% of its steps (32 and 39) see the new rate and fill the budget."""
    extra = {"steps": 200, "time_budget_s": 10.0, "optim.schedule": "cosine", "optim.min_lr_ratio": 0.1}
    trainer = Trainer(_config(cache, tmp_path / "run", **extra), CPU)
    clock = _Clock(0.1, slow_until=25)
    _clocked(monkeypatch, trainer, clock)
    result = trainer.train()
    # step 25 at t = 5 s: 25 + int(5 x 5 x 0.97) = 49; step 32 at 5.7 s: 32 + int(10 x 4.3 x 0.97) = 73
    assert result.stopped == "finished" and result.step == result.planned_steps == 73
    assert result.planned_rate == pytest.approx(10.0) and clock.now - 1000.0 <= 10.0
    assert result.history[-1]["lr"] == pytest.approx(1e-3 * 0.1)


def test_plan_points_and_fitted_steps() -> None:
    from fantasyworld.training.time_budget import StepPlanner, fitted_steps

    assert fitted_steps(25, 10.0, 1.5, 200) == 39 and fitted_steps(25, 10.0, 1e9, 200) == 200
    assert fitted_steps(30, 10.0, -5.0, 200) == 30  # late: no step beyond the current one
    now = [0.0]
    planner = StepPlanner(torch.device("cpu"), lambda: now[0])
    assert planner.points == [5, 25] and planner.due(5) and not planner.due(6)
    assert planner.rate(5) is None and planner.due(25)
    now[0] = 2.0
    assert planner.rate(25) == (10.0, 6)
    planner.planned(25, 125)
    assert planner.points == [55, 85]  # 30% and 60% of the 100 steps left
    planner.planned(55, 300)  # a later plan adds no points
    assert planner.points == [55, 85]
    resumed = StepPlanner(torch.device("cpu"), lambda: now[0], start_step=10)  # resumed before any plan
    assert resumed.points == [15, 35] and resumed.first_plan == 35
