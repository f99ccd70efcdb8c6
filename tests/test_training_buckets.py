"""Training with resolution/frame buckets (tiny preset, CPU) on a dataset of two clip sizes:
every step one bucket, compiled regions compile once per bucket and never again, a run
resumed mid-epoch equals the uninterrupted one, a changed bucket set is refused on resume,
and a bucketed latent cache trains and is checked against data.buckets."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from fantasyworld.cli import main
from fantasyworld.models import parallelize
from fantasyworld.models.encoders import save_tiny_encoders
from fantasyworld.training import checkpoint as ckpt
from fantasyworld.training import trainer as trainer_module
from fantasyworld.training.config import config_from_dict, config_to_dict
from fantasyworld.training.data import STREAM_STATE_KEY
from fantasyworld.training.trainer import Trainer, loss_keys

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [[9, 32, 48], [5, 48, 32]]  # landscape clips of 9 frames, portrait clips of 5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_buckets") / "ds"
    for frames, size in ((9, "32x48"), (5, "48x32")):
        assert main(["data", "synth", "--out", str(root), "--clips", "2", "--frames", str(frames), "--size", size,
                     "--seed", "3", "--workers", "1", "--quiet", "--append"]) == 0
    return root


def _config(out: Path, steps: int, resume: bool = False, compile: bool = False, **data):
    return config_from_dict({
        "output_dir": str(out), "steps": steps, "batch_size": 2, "seed": 0, "device": "cpu",
        "mixed_precision": "fp32", "resume": resume, "model": {"preset": "tiny", "compile": compile},
        "data": {"random_crop": True, "buckets": {"sizes": SIZES}, **data},
        "optim": {"lr": 1e-3}, "checkpoint": {"every": 2, "keep_last": 2},
        "log": {"tensorboard": False, "progress": False}})


def test_compiled_training_compiles_once_per_bucket(data, tmp_path, monkeypatch) -> None:
    graphs: list[int] = []

    def count_graphs(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(1)
        return gm.forward  # run the captured graph as it is: only the number of compiles matters

    shapes: list[int] = []
    real = parallelize.compile_blocks

    def compile_counting(model, **kw):
        shapes.append(kw["num_shapes"])
        return real(model, backend=count_graphs, **kw)

    steps: list[tuple[int, int]] = []  # (bucket of the step, graphs compiled before it)
    prepare = Trainer.prepare

    def prepare_recording(self, batch):
        assert batch["bucket"].unique().numel() == 1  # every micro-batch is one bucket
        steps.append((int(batch["bucket"][0]), len(graphs)))
        return prepare(self, batch)

    monkeypatch.setattr(trainer_module, "compile_blocks", compile_counting)
    monkeypatch.setattr(Trainer, "prepare", prepare_recording)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(cache_size_limit=8, accumulated_cache_size_limit=256):
        result = Trainer(_config(tmp_path / "run", steps=6, compile=True, root=str(data))).train()
        assert torch._dynamo.config.cache_size_limit == 2 * parallelize.RECOMPILES_PER_SHAPE
        assert torch._dynamo.config.accumulated_cache_size_limit == 2 * parallelize.ACCUMULATED_RECOMPILES_PER_SHAPE
    torch._dynamo.reset()
    steps.append((-1, len(graphs)))
    assert shapes == [2]  # the trainer raised the limits for its 2 buckets
    # 2 clips per bucket, global batch 2: an epoch is 2 steps, one of each bucket; 6 steps = 3 epochs
    assert sorted(Counter(b for b, _ in steps[:-1]).values()) == [3, 3]
    new = [(bucket, after - before) for (bucket, before), (_, after) in zip(steps, steps[1:])]
    first_of = {bucket: i for i, (bucket, _) in reversed(list(enumerate(new)))}
    assert all(n > 0 for i, (_, n) in enumerate(new) if i in first_of.values())
    assert all(n == 0 for i, (_, n) in enumerate(new) if i not in first_of.values()), new
    per_bucket = [n for i, (_, n) in enumerate(new) if i in first_of.values()]
    assert per_bucket[0] == per_bucket[1]  # the same regions, once for each shape
    assert all(math.isfinite(r["objective"]) for r in result.history)


def test_resumed_mid_epoch_equals_uninterrupted(data, tmp_path) -> None:
    full = Trainer(_config(tmp_path / "full", steps=5, root=str(data))).train()
    Trainer(_config(tmp_path / "part", steps=3, root=str(data))).train()  # checkpoints at 2 and 3
    state = ckpt.read_state(tmp_path / "part", 3)[STREAM_STATE_KEY]
    assert (state["epoch"], state["step_in_epoch"], state["steps_per_epoch"]) == (1, 1, 2)  # mid-epoch
    assert state["bucket_sizes"] == [2, 2] and state["global_batch"] == 2
    resumed = Trainer(_config(tmp_path / "part", steps=5, resume=True, root=str(data))).train()
    keys = [*loss_keys(1), "grad_norm", "lr"]
    assert [r["step"] for r in resumed.history] == [4, 5]
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history[3:]]


def test_resume_with_other_buckets_is_refused(data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    cfg = _config(run, steps=2, root=str(data))
    Trainer(cfg).train()
    before = sorted(p.name for p in run.iterdir())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    args = ["train", "--config", str(config), "steps=4", "--resume"]
    assert main([*args, "data.buckets.sizes=[[5,48,32]]"]) == 2  # every clip in one bucket
    err = capsys.readouterr().err
    assert "step-2.state.pt: cannot resume step 2: the bucket order changed (bucket_sizes was [2, 2], now [4])" in err
    # the same assignment to other shapes: the order would be the same, the samples not
    assert main([*args, "data.buckets.sizes=[[5,32,48],[5,48,32]]"]) == 2
    assert ("the bucket order changed (buckets were [[5, 48, 32], [9, 32, 48]], now [[5, 48, 32], [5, 32, 48]])"
            in capsys.readouterr().err)
    off = ["data.buckets.sizes=null", "data.num_frames=5", "data.height=32", "data.width=32"]
    assert main([*args, *off]) == 2  # buckets off now, on then
    assert "cannot resume without data.buckets a run written with them" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_bucketed_cache_trains_and_must_match_data_buckets(data, tmp_path, capsys) -> None:
    enc = save_tiny_encoders(tmp_path / "enc")
    cache = tmp_path / "cache"
    assert main(["data", "cache", "--data", str(data), "--out", str(cache), "--vae", str(enc["vae"]),
                 "--text-encoder", str(enc["text_encoder"]), "--buckets", "9x32x48,5x48x32", "--quiet"]) == 0
    result = Trainer(_config(tmp_path / "run", steps=2, cache_dir=str(cache))).train()
    assert len(result.history) == 2 and all(math.isfinite(r["objective"]) for r in result.history)
    config = tmp_path / "cache.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(_config(tmp_path / "other", steps=1, cache_dir=str(cache)))))
    args = ["train", "--config", str(config)]
    assert main([*args, "data.buckets.sizes=null"]) == 2
    assert ("holds the buckets 5x48x32, 9x32x48 but data.buckets is off: set "
            "data.buckets.sizes=[[5,48,32],[9,32,48]]") in capsys.readouterr().err
    assert main([*args, "data.buckets.sizes=[[9,32,48]]"]) == 2
    assert "but data.buckets is 9x32x48" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_validation_clips_are_read_at_their_bucket_shapes(data, tmp_path) -> None:
    from types import SimpleNamespace

    from fantasyworld.eval.validation import Validator

    cfg = config_from_dict({**config_to_dict(_config(tmp_path / "run", steps=1, root=str(data))),
                            "validation": {"every": 1, "split": "all", "max_clips": 4}})
    fake = SimpleNamespace(cfg=cfg, run_dir=tmp_path / "run", start_step=0, world=SimpleNamespace(is_main=True))
    validator = Validator(fake)
    assert [tuple(s["video"].shape) for s in validator.samples] == [(3, 9, 32, 48)] * 2 + [(3, 5, 48, 32)] * 2
