"""The 8-bit optimizers through the trainer (tiny preset, CPU): a run stopped at a checkpoint and
resumed equals the uninterrupted run step for step (the quantised moments, their scales and
quantisation maps are saved and restored exactly; also with every setting of the 24 GB memory
tier: FP8 frozen linears, head activations in host memory), training lowers the loss, and
``adamw8bit-bnb`` refuses FSDP2-sharded parameters. (One step of either 8-bit optimizer against
fp32 AdamW: ``test_training_memory_tiers.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.training.config import config_from_dict
from fantasyworld.training.optimizers import build_optimizer
from fantasyworld.training.trainer import Trainer, loss_keys

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("optim_resume") / "ds"
    assert main(["data", "synth", "--out", str(root), "--clips", "2", "--frames", "5", "--size", "32x32",
                 "--seed", "4", "--workers", "1", "--quiet"]) == 0
    return root


def _config(out: Path, data: Path, optimizer: str, steps: int, resume: bool = False):
    tier = optimizer.removeprefix("tier") if optimizer.startswith("tier") else None
    return config_from_dict({
        "output_dir": str(out), "steps": steps, "batch_size": 2, "seed": 0, "device": "cpu",
        "mixed_precision": "fp32", "resume": resume, "model": {"preset": "tiny"}, "memory_tier": tier,
        "data": {"root": str(data), "num_frames": 5, "height": 32, "width": 32},
        "optim": {"lr": 1e-3, "optimizer": None if tier else optimizer, "warmup_steps": 0},
        "checkpoint": {"every": 2, "keep_last": 2}, "log": {"tensorboard": False, "progress": False}})


# tier24: 8-bit torchao moments, FP8 frozen Wan linears, head activations in host memory, layer checkpointing
@pytest.mark.parametrize("optimizer", ["adamw8bit-bnb", "adamw8bit", "tier24"])
def test_8bit_run_resumes_exactly(optimizer: str, data: Path, tmp_path: Path, monkeypatch) -> None:
    if optimizer in ("adamw8bit", "tier24"):
        torchao_adam = pytest.importorskip("torchao.optim.adam", reason="torchao (the lowmem extra) is not installed")
        # torchao compiles its per-parameter step; run it eagerly here (same arithmetic, no compiler on the CPU)
        monkeypatch.setattr(torchao_adam.torch, "compile", lambda fn, **_: fn)
    else:
        pytest.importorskip("bitsandbytes", reason="bitsandbytes (the lowmem extra) is not installed")
    full = Trainer(_config(tmp_path / "full", data, optimizer, steps=4)).train()
    Trainer(_config(tmp_path / "part", data, optimizer, steps=2)).train()
    resumed = Trainer(_config(tmp_path / "part", data, optimizer, steps=4, resume=True)).train()
    keys = [*loss_keys(1), "grad_norm", "lr"]
    assert [r["step"] for r in resumed.history] == [3, 4]
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history[2:]]
    assert full.history[-1]["objective"] < full.history[0]["objective"]


def test_bnb_adamw8bit_refuses_sharded_parameters() -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the lowmem extra) is not installed")
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from fantasyworld.errors import ConfigError

    assert not dist.is_initialized()
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = torch.nn.Parameter(distribute_tensor(torch.randn(64, 64), mesh, [Shard(0)]))
        with pytest.raises(ConfigError, match="adamw8bit-bnb cannot update FSDP2-sharded parameters"):
            build_optimizer("adamw8bit-bnb", [{"params": [sharded], "weight_decay": 0.0}], 1e-3, (0.9, 0.999),
                            1e-8, torch.device("cpu"))
    finally:
        dist.destroy_process_group()

