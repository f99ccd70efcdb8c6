"""``model.cuda_graphs``: what can be checked without a GPU.

The capture and replay themselves need CUDA (``benchmarks/bench_small_steps.py --cuda-graphs``
compares them with the eager trainer on one GPU); here: the settings that are refused and
their messages, the signature a graph is specialised to, and checkpoints written by a graphed
run (device learning rate, capturable groups) being the same as an eager run's.
"""

from __future__ import annotations

import pytest
import torch

from fantasyworld.training import checkpoint as ckpt
from fantasyworld.training.config import ConfigError, apply_overrides, config_from_dict
from fantasyworld.training.graphed_step import check_cuda_graphs, signature
from fantasyworld.training.lr_schedule import lr_multiplier
from fantasyworld.training.memory_tiers import MemorySettings


def test_cpu_run_with_cuda_graphs_is_refused_by_the_config() -> None:
    data = apply_overrides({"data": {"root": "data/x"}}, ["device=cpu", "model.cuda_graphs=true"])
    with pytest.raises(ConfigError, match="model.cuda_graphs needs a CUDA device: set device=cuda"):
        config_from_dict(data)
    assert config_from_dict(apply_overrides(data, ["device=auto"])).model.cuda_graphs  # decided at start


@pytest.mark.parametrize(("where", "memory", "message"), [
    ((torch.device("cpu"), 1), {}, "a CUDA device (this run trains on cpu)"),
    ((torch.device("cuda"), 2), {}, "one process (this run has 2"),
    ((torch.device("cuda"), 1), {"optimizer": "adamw8bit"},
     "optim.optimizer adamw, whose fused step can be captured (got adamw8bit)"),
    ((torch.device("cuda"), 1), {"checkpointing": "layer"}, "no activation checkpointing"),
    ((torch.device("cuda"), 1), {"checkpoint_heads": True}, "no activation checkpointing"),
    ((torch.device("cuda"), 1), {"activation_offload": "heads"}, "no activation offload"),
])
def test_settings_a_graph_cannot_capture_are_named(where: tuple, memory: dict, message: str) -> None:
    check_cuda_graphs(torch.device("cuda"), 1, MemorySettings(fp8_frozen=True))  # nothing to refuse
    with pytest.raises(ConfigError) as err:
        check_cuda_graphs(*where, MemorySettings(**memory))
    assert message in str(err.value) and "set model.cuda_graphs=false" in str(err.value)


def test_signature_separates_what_a_graph_is_specialised_to() -> None:
    a = {"latents": torch.zeros(2, 16, 3, 4, 4), "plucker": torch.zeros(2, 9, 6, 32, 32), "flow_target": None}
    same_values_other_data = {"latents": torch.ones(2, 16, 3, 4, 4), "plucker": torch.ones(2, 9, 6, 32, 32),
                              "flow_target": None}
    assert signature([a]) == signature([same_values_other_data])  # data is copied in, not captured
    no_camera = {k: v for k, v in a.items() if k != "plucker"}  # a stage-2 step whose cameras are dropped
    other_shape = {**a, "latents": torch.zeros(2, 16, 5, 4, 4)}  # another bucket
    other_dtype = {**a, "latents": torch.zeros(2, 16, 3, 4, 4, dtype=torch.bfloat16)}
    keys = {signature([a]), signature([no_camera]), signature([other_shape]), signature([other_dtype]),
            signature([a, a])}
    assert len(keys) == 5
    with pytest.raises(TypeError, match="input 'prompts' is a list"):
        signature([{"prompts": ["a room"]}])


def test_graphed_groups_are_saved_as_an_eager_run_saves_them(tmp_path) -> None:
    # what GraphedStep does to the groups: a device-tensor lr (here a CPU one) and capturable on
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("constant", 4, 10, 0.0))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched.step()
    eager = ckpt._optimizer_state(model, opt, _one_process())
    for group in opt.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]))
        group["capturable"] = True
    sched._last_lr = [torch.tensor(v) for v in sched._last_lr]
    graphed = ckpt._optimizer_state(model, opt, _one_process())
    # the device lr is float32 (as the fused kernel reads it): equal to the float to its rounding
    assert graphed["param_groups"][0].pop("lr") == pytest.approx(eager["param_groups"][0].pop("lr"), rel=1e-7)
    assert graphed["param_groups"] == eager["param_groups"]
    assert graphed["param_groups"][0]["capturable"] is False
    assert opt.param_groups[0]["capturable"] is True  # the live optimizer is untouched
    state = ckpt._plain_scheduler_state(sched.state_dict())
    assert state["_last_lr"] == [pytest.approx(5e-4)] and all(isinstance(v, float) for v in state["_last_lr"])


def _one_process():
    from fantasyworld.training.parallel import World

    return World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
