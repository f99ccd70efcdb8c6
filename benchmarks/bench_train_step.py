"""The trainer's own optimizer step, timed per configuration: every speed and memory lever where users get it.

Each configuration builds a :class:`~fantasyworld.training.trainer.Trainer` from a run config
(the one ``fantasyworld train`` would build, random backbone) on a synthetic latent cache at the
real shapes, and times :meth:`Trainer.train_step` (prepare -> forward and losses -> backward ->
clip -> optimizer step, data loading included) with CUDA events: median of ``--steps`` after
``--warmup``. It prints one JSON line per configuration: stage, s/step, peak memory
(``max_memory_allocated`` / ``max_memory_reserved``), model FLOPs (``benchmarks/flops.py``,
recompute excluded, the DPT resizes counted as the kernel), the bf16 matmul rate measured in the
same run (8192^3), MFU, the losses of every step, optionally the top-10 kernels
(``--profile``) and the full-frame geometry losses after training (``eval`` token).

A configuration is ``+``-joined tokens (``--configs layer,selective+compile,tier24+fit``):

============== ===============================================================================
token          effect (run-config key)
============== ===============================================================================
none, layer,   ``model.checkpointing`` (default ``layer``); ``heads``/``noheads``:
selective      ``model.checkpoint_heads`` (default on)
compile/eager  ``model.compile`` (default: ``--compile``)
cl / nocl      ``model.dpt_channels_last`` true / false (default: the trainer's auto, on for CUDA)
matmul/kernel  ``model.dpt_resize`` (default: auto, ``matmul`` on CUDA)
fp8            ``model.fp8_frozen=true``
offload        ``model.activation_offload=heads``; ``offloadall``: ``all``
8bit           ``optim.optimizer=adamw8bit``; ``bnb8bit``: ``adamw8bit-bnb`` (with a tier: replaces its optimizer)
tierN          ``memory_tier=N`` (80, 48, 24); the tier's settings replace the defaults above
capG           ``torch.cuda.set_per_process_memory_fraction`` so that the process may use G GiB
subK           ``loss.pixel_frames_per_step=K`` (an integer, or ``sub0.25`` a fraction)
framesN        N pixel frames (default ``--frames``)
fit            try the frame counts of ``--fit-frames`` (largest first) and keep the first that runs
eval           after the steps: geometry losses on every frame of the first ``--eval-batches`` batches
nocudnn        ``torch.backends.cuda.enable_cudnn_sdp(False)`` for this configuration (SDPA then
               dispatches to flash / memory-efficient attention): isolates cuDNN attention
============== ===============================================================================

Configurations with the same stage, frames and steps see the same batches (same seed, same
init): ``loss_rel_diff`` is the largest relative difference of their step objectives against the
first such configuration of the run. ``--device cpu`` is a smoke mode at tiny sizes (the test
``tests/test_bench_train_step.py`` runs it).

    python benchmarks/bench_train_step.py --stages 2,1 --configs layer+kernel+nocl,selective --compile
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import count_flops  # noqa: E402
from synthetic_cache import write_synthetic_cache  # noqa: E402

from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402
from fantasyworld.models.inputs import pixel_frame_count  # noqa: E402
from fantasyworld.training.config import TINY_PRESETS, config_from_dict  # noqa: E402
from fantasyworld.training.losses import loss_keys  # noqa: E402
from fantasyworld.training.trainer import Trainer  # noqa: E402

__all__ = ["main", "parse_tokens", "run_config"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def matmul_rate(device: torch.device, n: int) -> float:
    """Median TFLOP/s of an ``n^3`` product (bf16 on CUDA, fp32 on the CPU), 4 rotating input sets."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    xs = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
          for _ in range(4)]
    times = []
    for i in range(34):
        a, b = xs[i % 4]
        t0 = time.perf_counter()
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            torch.cuda.synchronize()
            dt = s.elapsed_time(e) / 1e3
        else:
            a @ b
            dt = time.perf_counter() - t0
        if i >= 4:
            times.append(dt)
    return 2 * n**3 / statistics.median(times) / 1e12


def parse_tokens(spec: str) -> dict[str, Any]:
    """A configuration string (module docstring) -> ``{"overrides": [...], "cap": GiB|None, ...}``."""
    out: dict[str, Any] = {"overrides": {}, "cap": None, "frames": None, "fit": False, "eval": False,
                           "compile": None, "tier": None, "cudnn_sdp": True}
    o = out["overrides"]
    for tok in spec.split("+"):
        if tok in ("none", "layer", "selective"):
            o["model.checkpointing"] = tok
        elif tok in ("heads", "noheads"):
            o["model.checkpoint_heads"] = tok == "heads"
        elif tok in ("compile", "eager"):
            out["compile"] = tok == "compile"
        elif tok in ("cl", "nocl"):
            o["model.dpt_channels_last"] = tok == "cl"
        elif tok in ("matmul", "kernel"):
            o["model.dpt_resize"] = tok
        elif tok == "fp8":
            o["model.fp8_frozen"] = True
        elif tok in ("offload", "offloadall"):
            o["model.activation_offload"] = "heads" if tok == "offload" else "all"
        elif tok == "8bit":
            o["optim.optimizer"] = "adamw8bit"
        elif tok == "bnb8bit":
            o["optim.optimizer"] = "adamw8bit-bnb"
        elif tok.startswith("tier"):
            out["tier"] = tok[4:]
        elif tok.startswith("cap"):
            out["cap"] = float(tok[3:])
        elif tok.startswith("sub"):
            o["loss.pixel_frames_per_step"] = float(tok[3:])
        elif tok.startswith("frames"):
            out["frames"] = int(tok[6:])
        elif tok == "fit":
            out["fit"] = True
        elif tok == "eval":
            out["eval"] = True
        elif tok == "nocudnn":
            out["cudnn_sdp"] = False
        else:
            raise ValueError(f"unknown configuration token {tok!r} in {spec!r} (see --help)")
    return out


def _run_config_dict(a: argparse.Namespace, stage: int, frames: int, parsed: dict[str, Any], cache: Path,
                     init_from: Path | None, run_dir: Path) -> dict[str, Any]:
    tiny = a.preset in TINY_PRESETS
    data: dict[str, Any] = {
        "stage": stage, "output_dir": str(run_dir), "steps": 10**6, "batch_size": a.batch, "seed": a.seed,
        "device": a.device, "init_from": str(init_from) if init_from else None,
        "model": {"preset": a.preset, "backbone_dir": None if tiny else "random",
                  "compile": a.compile if parsed["compile"] is None else parsed["compile"]},
        "data": {"cache_dir": str(cache), "num_frames": frames, "height": a.hw[0], "width": a.hw[1],
                 "num_workers": a.workers},
        "checkpoint": {"every": 10**6}, "log": {"tensorboard": False, "progress": False},
        "optim": {"lr": a.lr, "warmup_steps": 0},
    }
    if parsed["tier"] is not None:
        data["memory_tier"] = parsed["tier"]
    else:  # the defaults a configuration changes: layer checkpointing with chunked heads
        data["model"].update({"checkpointing": "layer", "checkpoint_heads": True})
    for key, value in parsed["overrides"].items():
        section, _, name = key.rpartition(".")
        data.setdefault(section, {})[name] = value
    return data


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _full_frame_losses(trainer: Trainer, n: int) -> dict[str, float]:
    """Mean geometry losses on every pixel frame of the first ``n`` batches of the stream (no grad)."""
    keys = loss_keys(trainer.stage)
    sums = dict.fromkeys(keys, 0.0)
    it = iter(trainer.loader)
    with torch.no_grad():
        for _ in range(n):
            inputs = trainer.prepare(next(it))
            inputs.pop("pixel_frames", None)
            _, terms = trainer.forward_losses(inputs)
            for k in keys:
                if k in terms:
                    sums[k] += float(terms[k]) / (n * trainer.cfg.batch_size)
    return sums


def _top_kernels(fn, device: torch.device, n: int = 10) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    evs = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in evs) or 1.0
    return [{"kernel": e.key[:110], "ms": getattr(e, attr) / 1e3, "share": getattr(e, attr) / total}
            for e in evs[:n]]


def run_config(a: argparse.Namespace, stage: int, frames: int, parsed: dict[str, Any], caches: dict[int, Path],
               init_from: Path | None, work: Path, rate: float, name: str) -> dict[str, Any]:
    """Build the trainer of one configuration, run warm-up and timed steps, return its JSON row."""
    device = torch.device(a.device)
    cache = caches.setdefault(frames, write_synthetic_cache(
        work / f"cache_{frames}", a.clips, frames, a.hw[0], a.hw[1], get_preset(a.preset).wan["text_dim"]))
    run_dir = work / f"run_{len(list(work.glob('run_*')))}"
    cfg = config_from_dict(_run_config_dict(a, stage, frames, parsed, cache, init_from, run_dir))
    _release(device)
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(parsed["cudnn_sdp"])
        total = torch.cuda.get_device_properties(device).total_memory
        frac = 1.0 if parsed["cap"] is None else min(1.0, parsed["cap"] * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(frac, device.index or 0)
    row: dict[str, Any] = {"config": name, "stage": stage, "preset": a.preset, "frames": frames, "hw": a.hw,
                           "batch": a.batch, "cap_gib": parsed["cap"], "memory_tier": cfg.memory_tier,
                           "cudnn_sdp": parsed["cudnn_sdp"]}
    losses: list[dict[str, float]] = []
    times: list[float] = []
    trainer = it = None

    def step() -> None:
        values, _ = trainer.train_step(it)
        losses.append({k: v for k, v in values.items() if k in loss_keys(stage) or k == "grad_norm"})

    try:
        t_build = time.perf_counter()
        trainer = Trainer(cfg)
        row.update(memory=dict(trainer.memory.__dict__), compile=cfg.model.compile,
                   build_s=time.perf_counter() - t_build)
        it = iter(trainer.loader)
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                step()
                e.record()
                torch.cuda.synchronize()
                dt = s.elapsed_time(e) / 1e3
            else:
                step()
                dt = time.perf_counter() - t0
            if i == 0:
                row["s_first_step"] = dt
            if i >= a.warmup:
                times.append(dt)
        row["s_per_step"] = statistics.median(times)
        row["times"] = times
        if device.type == "cuda":
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        k = cfg.loss.pixel_frames_per_step
        sub = None if k is None else pixel_frame_count(k, frames)
        flops = count_flops(a.preset, frames, a.hw[0], a.hw[1], a.batch, stage, pixel_frames=sub)["total"]
        row.update(model_tflop=flops / 1e12, matmul_tflops=rate, mfu=flops / row["s_per_step"] / (rate * 1e12),
                   pixel_frames=sub, losses=losses)
        if a.profile:
            row["top_kernels"] = _top_kernels(step, device)
        if parsed["eval"]:
            row["eval_full_frames"] = _full_frame_losses(trainer, a.eval_batches)
    except torch.OutOfMemoryError as exc:
        row.update(oom=True, error=str(exc).splitlines()[0][:200], losses=losses)
    finally:
        trainer = it = None  # noqa: F841 (free the model before the next configuration)
        _release(device)
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)
    return row


def _stage1_weights(a: argparse.Namespace, work: Path) -> Path:
    """A stage-1 checkpoint of the preset (seeded random weights) for the stage-2 trainers' ``init_from``."""
    path = work / "stage1_init.safetensors"
    if not path.exists():
        torch.manual_seed(a.seed)
        model = FantasyWorldModel(get_preset(a.preset), device=a.device)
        model.save_fantasyworld(path, stage=1)
        del model
        _release(torch.device(a.device))
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--preset", default=None, help="default: wan2.1-t2v-1.3b on cuda, tiny on cpu")
    p.add_argument("--frames", type=int, default=None, help="default: 81 on cuda, 9 on cpu")
    p.add_argument("--size", default=None, help="HxW; default 336x592 on cuda, 32x48 on cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--stages", default="2,1")
    p.add_argument("--configs", default="layer", help="comma list of configurations (tokens: see below)")
    p.add_argument("--compile", action="store_true", help="compile every configuration (token eager: not)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--clips", type=int, default=4, help="clips in the synthetic cache")
    p.add_argument("--workers", type=int, default=2, help="data.num_workers")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-frames", default="81,65,49,33,17", help="frame counts the fit token tries")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--profile", action="store_true", help="top-10 kernels of one more step per configuration")
    p.add_argument("--matmul-n", type=int, default=None, help="matmul size (default 8192 on cuda, 256 on cpu)")
    p.add_argument("--work", default=None, help="folder for the synthetic cache and run folders (default: temp)")
    p.add_argument("--out", default=None, help="also write the rows here (JSON lines)")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.preset = a.preset or ("wan2.1-t2v-1.3b" if cuda else "tiny")
    a.frames = a.frames or (81 if cuda else 9)
    a.hw = [int(v) for v in (a.size or ("336x592" if cuda else "32x48")).split("x")]
    if not cuda:
        torch.set_num_threads(1)
    device = torch.device(a.device)
    rate = matmul_rate(device, a.matmul_n or (8192 if cuda else 256))
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "matmul_tflops": rate, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({"env": env}), flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        caches: dict[int, Path] = {}
        refs: dict[tuple, list[float]] = {}
        for stage in [int(s) for s in a.stages.split(",")]:
            init_from = _stage1_weights(a, work) if stage == 2 else None
            for spec in a.configs.split(","):
                parsed = parse_tokens(spec)
                tries = [int(f) for f in a.fit_frames.split(",")] if parsed["fit"] else [parsed["frames"] or a.frames]
                for frames in tries:
                    log(f"stage {stage} [{spec}] {frames} frames ...")
                    row = run_config(a, stage, frames, parsed, caches, init_from, work, rate, spec)
                    if not row.get("oom") or frames == tries[-1]:
                        break
                    log(f"  OOM at {frames} frames under the cap; trying fewer")
                objectives = [s["objective"] for s in row.get("losses", [])]
                key = (stage, row["frames"], len(objectives))
                if objectives and not row.get("oom"):
                    ref = refs.setdefault(key, objectives)
                    row["loss_rel_diff"] = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(objectives, ref))
                print(json.dumps(row), flush=True)
                rows.append(row)
                if a.out:
                    with open(a.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
