"""Validation during training (tiny preset, CPU): images, scalars and the best checkpoint are
written, and the training losses and weights are the same as without validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.eval.validation import BEST_INFO, BEST_WEIGHTS, VALIDATION_LOG, Validator, check_metric
from fantasyworld.training.config import ConfigError, config_from_dict
from fantasyworld.training.logging import MetricsLogger
from fantasyworld.training.trainer import Trainer, loss_keys

STEPS = 4


def _config(data, out, stage=1, init_from=None, **validation):
    cfg = {"stage": stage, "output_dir": str(out), "steps": STEPS if stage == 1 else 2, "batch_size": 1,
           "seed": 0, "device": "cpu", "mixed_precision": "fp32",
           "model": {"preset": "tiny"},
           "data": {"root": str(data), "num_frames": 5, "height": 32, "width": 32, "random_crop": False},
           "optim": {"lr": 1e-3}, "checkpoint": {"every": STEPS, "keep_last": 1},
           "log": {"every": 1, "tensorboard": True, "progress": False}}
    if init_from is not None:
        cfg["init_from"] = str(init_from)
    if validation:
        cfg["validation"] = validation
    return config_from_dict(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("val")
    data = synthesize_dataset(root / "data", num_clips=3, num_frames=5, height=32, width=32, seed=5, workers=1)
    plain = Trainer(_config(data, root / "plain"), validator=Validator).train()
    trainer = Trainer(_config(data, root / "validated", every=2, split="all", max_clips=2), validator=Validator)
    validated = trainer.train()
    stage2 = Trainer(_config(data, root / "stage2", stage=2, init_from=validated.last_checkpoint, every=2,
                             split="all", max_clips=2, generate_steps=2), validator=Validator).train()
    return {"data": data, "plain": plain, "validated": validated, "stage2": stage2, "trainer": trainer}


def test_validation_does_not_change_training(runs) -> None:
    plain, validated = runs["plain"], runs["validated"]
    keys = [*loss_keys(1), "grad_norm", "lr"]
    assert [[r[k] for k in keys] for r in validated.history] == [[r[k] for k in keys] for r in plain.history]
    a, b = load_file(str(plain.last_checkpoint)), load_file(str(validated.last_checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_writes_tensorboard_images_scalars_and_the_best_checkpoint(runs) -> None:
    run_dir = runs["validated"].run_dir
    rows = [json.loads(line) for line in (run_dir / VALIDATION_LOG).read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(len(r["clips"]) == 2 for r in rows)
    assert all(np.isfinite(r["abs_rel_median"]) and r["seconds"] > 0 for r in rows)
    for step in (2, 4):
        for name in ("depth", "trajectories"):
            assert (run_dir / "validation" / f"step-{step:06d}_{name}.png").is_file()
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"val/depth", "val/trajectories"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("val/depth")] == [2, 4]
    scalars = events.Scalars("val/abs_rel_median")
    assert [e.step for e in scalars] == [2, 4]
    np.testing.assert_allclose([e.value for e in scalars], [r["abs_rel_median"] for r in rows], rtol=1e-6)
    assert {"val/rot_err", "val/seconds", "loss/objective"} <= set(events.Tags()["scalars"])
    # best checkpoint: the step with the lowest abs_rel_median, the trainable weights of that step
    best = json.loads((run_dir / BEST_INFO).read_text())
    want = min(rows, key=lambda r: r["abs_rel_median"])
    assert best["step"] == want["step"] and best["value"] == pytest.approx(want["abs_rel_median"])
    with safe_open(str(run_dir / BEST_WEIGHTS), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "fantasyworld" and meta["stage"] == "1" and meta["step"] == str(best["step"])
        assert set(f.keys()) == set(load_file(str(runs["validated"].last_checkpoint)).keys())
    if best["step"] == STEPS:
        last = load_file(str(runs["validated"].last_checkpoint))
        assert all(torch.equal(v, last[k]) for k, v in load_file(str(run_dir / BEST_WEIGHTS)).items())


def test_stage2_validation_adds_a_short_generation_to_the_depth_figure(runs) -> None:
    s1 = Image.open(runs["validated"].run_dir / "validation" / "step-000002_depth.png")
    s2 = Image.open(runs["stage2"].run_dir / "validation" / "step-000002_depth.png")
    assert s2.height > s1.height  # two more rows: the generated frames and their depth


def test_validation_config_errors_name_the_key(runs, tmp_path) -> None:
    base = {"output_dir": str(tmp_path), "model": {"preset": "tiny"},
            "data": {"cache_dir": str(tmp_path), "num_frames": 5, "height": 32, "width": 32}}
    with pytest.raises(ConfigError, match="set validation.root"):
        config_from_dict({**base, "validation": {"every": 10}})
    with pytest.raises(ConfigError, match="did you mean 'abs_rel_median'"):
        check_metric(config_from_dict({**base, "validation": {"every": 10, "root": "x",
                                                              "metric": "abs_rel_medain"}}).validation.metric)
    with pytest.raises(ConfigError, match="holds no clip"):
        Trainer(_config(runs["data"], tmp_path / "none", every=2, split="train", held_out_fraction=0.99),
                validator=Validator)


def test_a_validation_leaves_rng_states_weights_and_training_mode_alone(runs, tmp_path) -> None:
    # last in this file: it appends a row to the validated run's validation.jsonl
    trainer = runs["trainer"]
    trainer.model.train()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    logger = MetricsLogger(tmp_path, enabled=False, total_steps=1)
    row = trainer.validator.run(STEPS + 1, logger)
    assert np.isfinite(row["abs_rel_median"])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    assert trainer.model.training
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def _wandb_history(run_dir, wait_s: float = 60.0) -> list[dict[str, str]]:
    """History rows of the offline W&B run under ``run_dir`` (its ``.wandb`` file is a
    LevelDB-style log of protobuf records: 7-byte file header, 32 KiB blocks, each chunk
    ``crc32 (4) | length (2) | type (1)``, types full 1 / first 2 / middle 3 / last 4).

    W&B's service process writes that file; ``finish()`` can return before the last records
    reach it on a loaded machine, so the file is read again until it holds the run's exit
    record (at most ``wait_s`` seconds; then what is there is returned)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        rows, finished = _wandb_records(run_dir)
        if finished or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _wandb_records(run_dir) -> tuple[list[dict[str, str]], bool]:
    """(history rows, whether the exit record was written) of the run's ``.wandb`` file."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    rows, finished = [], False
    for raw in records:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): i.value_json for i in rec.history.item})
        finished = finished or kind == "exit"
    return rows, finished


def test_offline_wandb_gets_losses_validation_scalars_and_images(runs, tmp_path) -> None:
    pytest.importorskip("wandb")  # in the test extra; skipped only outside it
    cfg = _config(runs["data"], tmp_path / "wb", every=2, split="all", max_clips=1)
    cfg.log.wandb = True
    result = Trainer(cfg, validator=Validator).train()
    rows = _wandb_history(tmp_path / "wb")
    steps = {int(r["_step"]) for r in rows}
    assert steps == set(range(1, STEPS + 1))
    losses = [r for r in rows if "loss/objective" in r]
    assert len(losses) == STEPS
    # the logged objective is the trainer's own number
    assert float(losses[-1]["loss/objective"]) == pytest.approx(result.history[-1]["objective"], rel=1e-6)
    val = [r for r in rows if "val/rot_err" in r]
    assert {int(r["_step"]) for r in val} == {2, 4}
    images = [r for r in rows if r.get("val/depth/_type") == '"image-file"']
    assert len(images) == 2
    for r in images:
        media = json.loads(r["val/depth/path"])
        assert next((tmp_path / "wb").glob(f"wandb/offline-run-*/files/{media}")).stat().st_size > 0
