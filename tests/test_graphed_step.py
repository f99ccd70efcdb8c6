"""``model.cuda_graphs``: what can be checked without a GPU.

The capture and replay themselves need CUDA (``benchmarks/check_graphed_step.py`` compares them
with the eager trainer on one GPU); here: the settings that are refused and their messages, the
signature a graph is specialised to, the warm-up / capture / replay bookkeeping with a stand-in
for the graphs (each replay on its own step's data, results equal to the eager steps), and
checkpoints written by a graphed run being the same as an eager run's.
"""

from __future__ import annotations

import pytest
import torch

from fantasyworld.training import checkpoint as ckpt
from fantasyworld.training.config import ConfigError, apply_overrides, config_from_dict
from fantasyworld.training.graphed_step import GraphedStep, check_cuda_graphs, signature
from fantasyworld.training.lr_schedule import lr_multiplier, scheduled_lr
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
    from fantasyworld.training.parallel import init_world

    return init_world("cpu")


class ReplayByRunning:
    """CUDA graphs' bookkeeping without CUDA: ``capture`` records the body without running it
    (as a capture does); ``replay`` runs it on the static buffers the capture was given, from
    gradients set to None: a graph captured from None gradients writes them, it does not add."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.eager_calls = 0
        self.captures = 0

    def eager(self, fn):
        self.eager_calls += 1
        return fn()

    def capture(self, fn):
        self.captures += 1
        optimizer = self.optimizer

        class Recorded:
            outputs = None

            def replay(self) -> None:
                optimizer.zero_grad(set_to_none=True)
                self.outputs = fn()

        return Recorded()


def _batches(n: int, rows: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(rows, 3, generator=g), "y": torch.randn(rows, 2, generator=g), "flow_target": None}
            for _ in range(n)]


def _learner(lr_tensor: bool):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-1, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("cosine", 2, 12, 0.1))
    if lr_tensor:  # as GraphedStep holds it: a float32 tensor the float schedule fills
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32)

    def body(micro_batches):  # the trainer's _optimizer_step in miniature: no host read
        total = torch.zeros(())
        for inputs in micro_batches:
            loss = (model(inputs["x"]) - inputs["y"]).square().mean()
            loss.backward()
            total = total + loss.detach()
        from fantasyworld.training.optimizers import clip_grad_norm

        norm = clip_grad_norm(list(model.parameters()), 1.0, torch.device("cpu"))
        skipped = ~torch.isfinite(norm)
        opt.found_inf = skipped.float()
        opt.step()
        return total.reshape(1), norm, skipped

    return model, opt, sched, body


def test_graphed_steps_warm_up_capture_once_and_replay_on_new_data() -> None:
    batches = _batches(10, 4, seed=1) + _batches(6, 5, seed=2)  # two signatures (4 and 5 rows)
    model, opt, sched, body = _learner(lr_tensor=True)  # the eager reference, with the same float32 lr
    reference = []
    for batch in batches:
        reference.append(body([batch])[0].item())
        opt.zero_grad(set_to_none=True)
        sched.step()

    model, opt, sched, body = _learner(lr_tensor=False)
    backend = ReplayByRunning(opt)
    lines: list[str] = []
    step = GraphedStep(body, opt, torch.device("cpu"), warmup=3, backend=backend, log=lines.append)
    assert all(isinstance(g["lr"], torch.Tensor) and g["capturable"] for g in opt.param_groups)
    got = []
    for i, batch in enumerate(batches):
        got.append(step([batch])[0].item())
        sched.step()  # fills the groups' lr tensors (what a replayed graph reads)
        if i == 2:
            assert (backend.eager_calls, backend.captures) == (3, 0)
        if i == 3:
            assert (backend.eager_calls, backend.captures) == (3, 1)
    # the second signature warmed up and was captured on its own; the first was never captured again
    assert (backend.eager_calls, backend.captures, step.captures) == (6, 2, 2)
    assert len(lines) == 2 and "CUDA graph 2 after 3 eager steps" in lines[1] and "x (5, 3)" in lines[1]
    # every replay trained on its own step's data: the static buffers were refilled each time
    assert got == reference
    # the host's float of the schedule (what the log shows) is the lr the replays read
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(scheduled_lr(sched), rel=1e-7)


def test_replayed_outputs_are_copies_of_the_graphs_own_tensors() -> None:
    model, opt, sched, body = _learner(lr_tensor=False)
    step = GraphedStep(body, opt, torch.device("cpu"), warmup=1, backend=ReplayByRunning(opt))
    batches = _batches(3, 4, seed=3)
    step([batches[0]])
    first = step([batches[1]])  # captured and replayed
    kept = first[0].clone()
    step([batches[2]])  # the next replay overwrites the graph's outputs, not what was returned
    assert torch.equal(first[0], kept)
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedStep(body, opt, torch.device("cpu"), warmup=0, backend=ReplayByRunning(opt))
