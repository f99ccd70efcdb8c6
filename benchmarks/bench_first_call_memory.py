"""Peak GPU memory of a process's FIRST ``generate`` call against its second, phase by phase and module by module.

One command on a GPU machine (random weights of the real sizes, bf16, built as
``bench_generate.py`` builds them)::

    python benchmarks/bench_first_call_memory.py --preset wan2.1-i2v-14b-480p --size 336x592 --frames 81 \\
        --steps 2 --trace-dir memtrace --out first_call.json

What it records, for call 1 and call 2 of the same pipeline (same inputs):

* ``resident_gib``: before each call, the GPU bytes held by each component's parameters and
  buffers (model, VAE, text encoder, image encoder) and by the whole allocator;
* ``phases``: per phase of the call (camera, encode_text, encode_image, sample, decode, fuse),
  the allocated GiB at its start, its peak and at its end, and the reserved GiB at its end;
* ``modules``: a forward hook on every module of the pose encoder, the text encoder, the image
  encoder and the VAE, and on each top-level part of the model, records the allocated GiB
  before and after it and the allocator's peak (since its phase began) before and after it;
  ``peak_raisers`` lists the modules after which the phase's peak rose, largest rise first
  (the module that set a phase's peak is the first of its phase there);
* with ``--trace-dir``: ``torch.cuda.memory._record_memory_history`` during each call and a
  snapshot per call (``call1.pickle``, ``call2.pickle``; open them at
  https://pytorch.org/memory_viz), with Python stacks of every live allocation, also when a
  call runs out of memory.

``--encoder-blocks-on-gpu`` puts the text and image encoders' repeated blocks on the GPU before
call 1, where the encoder placement left them before ``HostOffload`` moved every tensor to
host memory at construction; run once with and once without it to see what that placement
cost the first call. ``--tier 48`` holds the run to the tier's cap (46 GiB), as
``bench_generate.py`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import TIER_CAPS_GIB, add_shape_args, build_pipeline, set_cap  # noqa: E402

from fantasyworld.inference import pipeline as pipeline_mod  # noqa: E402
from fantasyworld.inference.memory import PhaseMeter, repeated_blocks  # noqa: E402
from fantasyworld.inference.pipeline import FantasyWorldPipeline  # noqa: E402

GIB = 2**30


def log(*a) -> None:
    print(*a, flush=True)


def gpu_gib(module: torch.nn.Module | None) -> float:
    """GiB of ``module``'s parameters and buffers that live on a CUDA device."""
    if module is None:
        return 0.0
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}.values()
    return sum(t.numel() * t.element_size() for t in tensors if t.is_cuda) / GIB


class TracedPhases(PhaseMeter):
    """:class:`PhaseMeter` that also keeps the allocated GiB at each phase's start and end."""

    current: TracedPhases | None = None

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.detail: dict[str, dict[str, float]] = {}
        self.name = ""
        TracedPhases.current = self

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        torch.cuda.synchronize(self.device)
        start = torch.cuda.memory_allocated(self.device) / GIB
        self.name = name
        try:
            with super().phase(name):
                yield
        finally:
            self.detail[name] = {"start": round(start, 3), "peak": round(self.peak_gib.get(name, float("nan")), 3),
                                 "end": round(torch.cuda.memory_allocated(self.device) / GIB, 3),
                                 "reserved_end": round(torch.cuda.memory_reserved(self.device) / GIB, 3)}


class ModuleTracker:
    """Forward hooks recording allocated memory and the running peak around each module."""

    def __init__(self, named: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.rows: list[dict] = []
        self._open: dict[int, list[tuple[float, float]]] = {}
        self._handles = []
        for prefix, root in named.items():
            if root is None:
                continue
            for name, mod in root.named_modules():
                label = f"{prefix}.{name}" if name else prefix
                self._handles.append(mod.register_forward_pre_hook(lambda m, a, label=label: self._pre(m)))
                self._handles.append(mod.register_forward_hook(lambda m, a, o, label=label: self._post(m, label)))

    def _mem(self) -> tuple[float, float]:
        return torch.cuda.memory_allocated(self.device) / GIB, torch.cuda.max_memory_allocated(self.device) / GIB

    def _pre(self, m: torch.nn.Module) -> None:
        self._open.setdefault(id(m), []).append(self._mem())

    def _post(self, m: torch.nn.Module, label: str) -> None:
        (alloc0, peak0), (alloc1, peak1) = self._open[id(m)].pop(), self._mem()
        phase = TracedPhases.current.name if TracedPhases.current else ""
        self.rows.append({"phase": phase, "module": label, "alloc_before": alloc0, "alloc_after": alloc1,
                          "peak_before": peak0, "peak_after": peak1, "peak_rise": peak1 - peak0})

    def summary(self, top: int = 25) -> dict:
        raisers = sorted((r for r in self.rows if r["peak_rise"] > 1e-3), key=lambda r: -r["peak_rise"])[:top]
        return {"peak_raisers": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                 for r in raisers], "num_module_calls": len(self.rows)}

    def clear(self) -> None:
        self.rows.clear()


def one_call(pipe: FantasyWorldPipeline, a: argparse.Namespace, image: np.ndarray | None, tag: str,
             tracker: ModuleTracker) -> dict:
    dev = pipe.device
    out: dict = {"resident_gib": {"model": gpu_gib(pipe.model), "vae": gpu_gib(pipe.vae),
                                  "text_encoder": gpu_gib(pipe.text_encoder),
                                  "image_encoder": gpu_gib(pipe.image_encoder),
                                  "allocated": torch.cuda.memory_allocated(dev) / GIB}}
    out["resident_gib"] = {k: round(v, 3) for k, v in out["resident_gib"].items()}
    tracker.clear()
    if a.trace_dir:
        torch.cuda.memory._record_memory_history(max_entries=a.max_entries, context="all", stacks="python")
    h, w = a.size
    start = time.perf_counter()
    try:
        res = pipe("a courtyard with a fountain", image=image, camera="orbit", num_frames=a.frames, height=h,
                   width=w, num_steps=a.steps, seed=0, progress=False)
        out["timings"] = {k: round(v, 3) for k, v in res.timings.items()}
    except torch.OutOfMemoryError as exc:
        out["error"] = f"OOM: {str(exc).splitlines()[0]}"
    out["wall_s"] = round(time.perf_counter() - start, 3)
    out["phases"] = TracedPhases.current.detail if TracedPhases.current else {}
    out["modules"] = tracker.summary()
    if a.trace_dir:
        path = Path(a.trace_dir) / f"{tag}.pickle"
        torch.cuda.memory._dump_snapshot(str(path))
        torch.cuda.memory._record_memory_history(enabled=None)
        out["snapshot"] = str(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--steps", type=int, default=2, help="denoising steps per call (the peak does not depend on it)")
    p.add_argument("--tier", default="80", choices=sorted(TIER_CAPS_GIB))
    p.add_argument("--encoder-blocks-on-gpu", action="store_true",
                   help="put the encoders' repeated blocks on the GPU before call 1 (the earlier placement)")
    p.add_argument("--trace-dir", default=None, help="folder for the memory-history snapshots (call1/call2.pickle)")
    p.add_argument("--max-entries", type=int, default=200_000, help="memory-history ring buffer size")
    p.add_argument("--device", default="cuda", help="a CUDA device (the figures are CUDA allocator figures)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark measures CUDA memory: run it on a GPU machine")
    dev = torch.device(a.device)
    dtype = torch.bfloat16
    if a.trace_dir:
        Path(a.trace_dir).mkdir(parents=True, exist_ok=True)
    results: dict = {"preset": a.preset, "size": list(a.size), "frames": a.frames, "steps": a.steps, "tier": a.tier,
                     "encoder_blocks_on_gpu": a.encoder_blocks_on_gpu, "device": torch.cuda.get_device_name(dev),
                     "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                     "cudnn_benchmark": torch.backends.cudnn.benchmark, "date": time.strftime("%Y-%m-%d")}
    pipe, build_s, image = build_pipeline(a, dev, dtype, a.tier)
    results["build_s"] = round(build_s, 1)
    if a.encoder_blocks_on_gpu:
        for enc in (pipe.text_encoder, pipe.image_encoder):
            for block in repeated_blocks(enc) if enc is not None else []:
                for t in [*block.parameters(), *block.buffers()]:
                    t.data = t.data.to(dev)
    torch.cuda.empty_cache()
    pipeline_mod.PhaseMeter = TracedPhases  # the pipeline's meter, with the start/end figures
    named = {"pose_encoder": pipe.model.pose_encoder, "control_adapter": pipe.model.control_adapter,
             "text_encoder": pipe.text_encoder, "image_encoder": pipe.image_encoder, "vae": pipe.vae,
             "geometry": pipe.model.geometry, **{f"pcb_layers.{i}": m for i, m in enumerate(pipe.model.pcb_layers)},
             **{f"irg_layers.{i}": m for i, m in enumerate(pipe.model.irg_layers)}}
    tracker = ModuleTracker(named, dev)
    set_cap(dev, TIER_CAPS_GIB.get(a.tier))
    for tag in ("call1", "call2"):
        pipe._text_cache.clear()  # both calls encode their prompts (the text phase is measured each time)
        results[tag] = one_call(pipe, a, image, tag, tracker)
        log(json.dumps({tag: {k: results[tag][k] for k in ("resident_gib", "phases") if k in results[tag]}}))
    first, second = results["call1"]["phases"], results["call2"]["phases"]
    results["peak_excess_first_call_gib"] = {k: round(first[k]["peak"] - second[k]["peak"], 3)
                                             for k in first if k in second}
    text = json.dumps(results, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
