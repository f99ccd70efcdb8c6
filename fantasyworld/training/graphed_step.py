"""The trainer's optimizer step captured as one CUDA graph (``model.cuda_graphs``).

A small preset's step is a few thousand short kernels: issued one by one from Python, the
host takes longer to launch them than the device takes to run them. Captured once as a CUDA
graph, the whole step (forward, losses, backward, gradient norm and clipping, fused AdamW with
its on-device skip of a non-finite step) is replayed with one launch; only the loader's
gather, :meth:`~fantasyworld.training.trainer.Trainer.prepare` (per-sample noise) and the
copies into the graph's input buffers stay on the host's side.

How a step runs, per *signature* of its micro-batches (the names, shapes and dtypes of their
tensors: a stage-2 step without cameras, another bucket's shape or a different pixel-frame
count is another signature, with its own graph):

1. the first ``warmup`` steps of a signature run eagerly on a side stream (cuDNN's algorithm
   search, the allocator, ``torch.compile``, the optimizer's lazy state all happen there);
2. the next one copies its inputs into new static buffers, captures the step into a graph
   (capturing runs nothing) and replays it: that step is trained by the replay;
3. every later step of the signature copies its inputs into those buffers and replays.

The steps are the same computation as the eager trainer's (same kernels, same order), so a run
with graphs follows the eager run to within the nondeterminism of the kernels themselves
(docs/training.md gives the measured difference). Requirements, checked when the trainer is
built: a CUDA device, one process, the fused ``adamw`` optimizer, and no activation
checkpointing or offload (both call back into the host during backward). The learning rate
lives in a device tensor per parameter group that the schedule fills before each replay (a
float would be frozen into the graph); checkpoints store it as a float, so a run may resume
with or without graphs.

Memory: each signature's graph keeps its own pool (activations, gradients) for the whole run,
so a run with several signatures holds several steps' worth of activations: fine for the
small presets this is for, not for the 1.3B and 14B ones (leave it off there).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fantasyworld.errors import ConfigError
from fantasyworld.training.memory_tiers import MemorySettings

__all__ = ["CudaGraphs", "GraphedStep", "StepOutputs", "check_cuda_graphs", "signature"]

StepOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(loss-term means, gradient norm, skipped)`` of one step, on the device."""

Signature = tuple[tuple[tuple[str, tuple[int, ...], torch.dtype] | tuple[str, Any], ...], ...]


def signature(micro_batches: Sequence[dict[str, Any]]) -> Signature:
    """What a captured graph is specialised to: per micro-batch, each tensor's name, shape and
    dtype, and each other value (``None`` entries included: a missing input is part of it)."""
    out = []
    for inputs in micro_batches:
        items = []
        for key in sorted(inputs):
            value = inputs[key]
            if isinstance(value, torch.Tensor):
                items.append((key, tuple(value.shape), value.dtype))
            elif value is None or isinstance(value, (bool, int, float, str)):
                items.append((key, value))
            else:
                raise TypeError(f"model.cuda_graphs: input {key!r} is a {type(value).__name__}; a graphed "
                                f"step takes tensors, numbers, strings or None")
        out.append(tuple(items))
    return tuple(out)


def check_cuda_graphs(device: torch.device, world_size: int, memory: MemorySettings) -> None:
    """Raise :class:`ConfigError` when ``model.cuda_graphs`` cannot run on ``device`` with
    ``world_size`` processes and the resolved ``memory`` settings."""
    problems = []
    if device.type != "cuda":
        problems.append(f"a CUDA device (this run trains on {device.type})")
    if world_size != 1:
        problems.append(f"one process (this run has {world_size}: FSDP's collectives are not captured here)")
    if memory.optimizer != "adamw":
        problems.append(f"optim.optimizer adamw, whose fused step can be captured (got {memory.optimizer})")
    if memory.checkpointing != "none" or memory.checkpoint_heads:
        problems.append("no activation checkpointing (model.checkpointing none, model.checkpoint_heads false)")
    if memory.activation_offload != "none":
        problems.append("no activation offload (model.activation_offload none)")
    if problems:
        raise ConfigError("model.cuda_graphs needs " + "; ".join(problems) + ": set model.cuda_graphs=false "
                          "or change those settings")


class _CudaCapture:
    """A captured CUDA graph and the outputs of its body (the graph's own tensors)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, outputs: StepOutputs) -> None:
        self.graph = graph
        self.outputs = outputs

    def replay(self) -> None:
        self.graph.replay()


class CudaGraphs:
    """How :class:`GraphedStep` runs eager warm-up steps and captures graphs on a CUDA device:
    both on one side stream (cuBLAS and cuDNN set up their per-stream state during the warm-up
    on the stream the capture then uses), a capture from a synchronised device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def eager(self, fn: Callable[[], StepOutputs]) -> StepOutputs:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn()
        current.wait_stream(self.stream)
        return out

    def capture(self, fn: Callable[[], StepOutputs]) -> _CudaCapture:
        """Record ``fn``'s kernels (nothing runs until ``replay``)."""
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        # thread_local: the loader's pin-memory thread may allocate host memory meanwhile
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            outputs = fn()
        return _CudaCapture(graph, outputs)


class _Captured:
    """One signature's capture and the static input buffers its body reads."""

    def __init__(self, capture: Any, inputs: list[dict[str, Any]]) -> None:
        self.capture = capture
        self.inputs = inputs

    def load(self, micro_batches: Sequence[dict[str, Any]]) -> None:
        for static, inputs in zip(self.inputs, micro_batches, strict=True):
            for key, value in inputs.items():
                if isinstance(value, torch.Tensor):
                    static[key].copy_(value, non_blocking=True)


class GraphedStep:
    """Runs ``body`` (one optimizer step over a list of prepared micro-batches, no host reads,
    gradients accumulated from ``None``) eagerly, then as a replayed CUDA graph (module docstring).

    Args:
        body: ``micro_batches -> (means, grad_norm, skipped)``; it must leave the gradients in
            place (this class sets them to ``None`` before each eager step and before capture).
        optimizer: the optimizer ``body`` steps (built ``fused=True``); its groups' ``lr`` become
            device tensors here and ``capturable`` is switched on.
        device: the CUDA device.
        warmup: eager steps per signature before it is captured (>= 1).
        backend: how eager steps run and graphs are captured (default :class:`CudaGraphs`; an
            object with the same ``eager(fn)`` and ``capture(fn) -> .replay(), .outputs``).
        log: called with one line per capture (what was captured, how many graphs there are).
    """

    def __init__(self, body: Callable[[Sequence[dict[str, Any]]], StepOutputs], optimizer: torch.optim.Optimizer,
                 device: torch.device, warmup: int = 3, backend: Any = None,
                 log: Callable[[str], None] | None = None) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (cuDNN, the allocator and compilation settle there), got {warmup}")
        if not optimizer.defaults.get("fused"):
            raise ConfigError("model.cuda_graphs needs the fused AdamW (optim.optimizer adamw)")
        self.body = body
        self.optimizer = optimizer
        self.warmup = warmup
        self.graphs: dict[Signature, _Captured] = {}
        self.eager_steps: Counter[Signature] = Counter()
        self.backend = backend if backend is not None else CudaGraphs(device)
        self.log = log
        for group in optimizer.param_groups:
            group["capturable"] = True
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        optimizer._warned_capturable_if_run_uncaptured = True  # the eager warm-up steps are expected

    @property
    def captures(self) -> int:
        """Graphs captured so far (one per signature seen more than ``warmup`` times)."""
        return len(self.graphs)

    def __call__(self, micro_batches: Sequence[dict[str, Any]]) -> StepOutputs:
        key = signature(micro_batches)
        captured = self.graphs.get(key)
        if captured is None:
            if self.eager_steps[key] < self.warmup:
                self.eager_steps[key] += 1
                return self._eager(micro_batches)
            captured = self._capture(key, micro_batches)
        else:
            captured.load(micro_batches)
        captured.capture.replay()
        return tuple(t.clone() for t in captured.capture.outputs)  # type: ignore[return-value]

    def _eager(self, micro_batches: Sequence[dict[str, Any]]) -> StepOutputs:
        self.optimizer.zero_grad(set_to_none=True)

        def run() -> StepOutputs:
            out = self.body(micro_batches)
            self.optimizer.zero_grad(set_to_none=True)
            return out

        return self.backend.eager(run)

    def _capture(self, key: Signature, micro_batches: Sequence[dict[str, Any]]) -> _Captured:
        static = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                  for inputs in micro_batches]
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients in its pool
        captured = _Captured(self.backend.capture(lambda: self.body(static)), static)
        self.graphs[key] = captured
        if self.log is not None:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in static[0].items() if isinstance(v, torch.Tensor))
            self.log(f"captured the training step as CUDA graph {len(self.graphs)} after {self.warmup} eager steps "
                     f"({len(static)} micro-batch(es) of {shapes})")
        return captured
