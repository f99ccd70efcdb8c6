"""Compiled against eager gradients, one layer at a time: where a compiled training step goes wrong.

The trainer's step compiles every repeated layer (``model.compile``,
:func:`~fantasyworld.models.parallelize.compile_blocks`). This check takes one layer of each
kind the stage-2 forward runs, with the very inputs the forward gives it on a batch of the
trainer, and runs its forward and backward twice eagerly and twice compiled (optionally under the
layer checkpoint the trainer wraps it in), all under the trainer's bf16 autocast. It reports,
per layer kind and frame count, the relative error of the compiled outputs, input gradients
and parameter gradients against the first eager run (for the first and the repeated compiled
call: a miscompiled kernel that reads unwritten memory differs between them), beside the second
eager run's (the kernels' own run-to-run noise), every tensor more than 5% off, and whether
anything is not finite.

A plan item is ``REGION:FRAMES[:ckpt]``: ``pcb`` (a preconditioning layer, Wan block + camera
adapter), ``frame`` (a geometry frame block), ``irg`` (an IRG layer: Wan halves, geometry global
attention, bidirectional cross-attention); ``ckpt`` runs the compiled layer under the trainer's
``layer`` checkpoint (recomputed in backward). One JSON line per item::

    python benchmarks/compile_grad_check.py --plan irg:81,pcb:81,frame:81,irg:81:ckpt,irg:25,irg:21
    python benchmarks/compile_grad_check.py --device cpu --plan irg:9,pcb:9 --backend aot_eager  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import _release, _run_config_dict, _stage1_weights  # noqa: E402
from synthetic_cache import write_synthetic_cache  # noqa: E402

from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.training.config import config_from_dict  # noqa: E402
from fantasyworld.training.trainer import Trainer  # noqa: E402

__all__ = ["REGIONS", "check_region", "main", "parse_plan"]

#: plan region -> path of its module list under the model
REGIONS: dict[str, str] = {"pcb": "pcb_layers", "frame": "geometry.frame_blocks", "irg": "irg_layers"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_plan(spec: str) -> list[tuple[str, int, bool]]:
    """``"irg:81,pcb:81:ckpt"`` -> ``[("irg", 81, False), ("pcb", 81, True)]`` (unknown region: ValueError)."""
    items = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[0] not in REGIONS or (len(parts) == 3 and parts[2] != "ckpt"):
            raise ValueError(f"plan item {item!r}: expected REGION:FRAMES[:ckpt], REGION one of {', '.join(REGIONS)}")
        items.append((parts[0], int(parts[1]), len(parts) == 3))
    return items


def _trainer(a: argparse.Namespace, frames: int, work: Path) -> Trainer:
    """A stage-2 trainer of the preset at ``frames`` (eager, no checkpointing, cameras on every step)."""
    preset = get_preset(a.preset)
    cache = write_synthetic_cache(work / f"cache_{frames}", 2, frames, a.hw[0], a.hw[1], preset.wan["text_dim"])
    parsed = {"tier": None, "compile": False, "overrides": {}}
    data = _run_config_dict(a, 2, frames, parsed, cache, _stage1_weights(a, work), work / f"run_{frames}")
    data["model"].update({"checkpointing": "none", "checkpoint_heads": False})
    data.setdefault("loss", {})["camera_dropout"] = 0.0
    return Trainer(config_from_dict(data))


def _capture(trainer: Trainer, regions: set[str]) -> dict[str, tuple[torch.nn.Module, tuple[Any, ...]]]:
    """The second layer of each region and the positional inputs the forward gives it on one batch."""
    model = trainer.model
    captured: dict[str, tuple[torch.nn.Module, tuple[Any, ...]]] = {}
    handles = []
    for region in regions:
        layers = model.get_submodule(REGIONS[region])
        layer = layers[min(1, len(layers) - 1)]

        def hook(module, args, region=region):
            captured[region] = (module, tuple(x.detach().clone() if torch.is_tensor(x) else x for x in args))

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        inputs = trainer.prepare(next(iter(trainer.loader)))
        with torch.no_grad():
            trainer.forward_losses(inputs)
    finally:
        for h in handles:
            h.remove()
    missing = regions - set(captured)
    if missing:
        raise RuntimeError(f"the forward never called the regions {sorted(missing)}")
    return captured


def _parts(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules holding a layer's parameters (an IRG layer references its parts)."""
    parts = getattr(module, "_parts", None)
    return [p for p in parts if p is not None] if parts is not None else [module]


def _fwd_bwd(fn, module: torch.nn.Module, args: tuple[Any, ...], device: torch.device,
             seed: int) -> dict[str, torch.Tensor]:
    """Outputs, input gradients and parameter gradients of ``fn(*args)`` against fixed cotangents."""
    params = {f"{i}.{n}": p for i, part in enumerate(_parts(module)) for n, p in part.named_parameters()
              if p.requires_grad}
    for p in params.values():
        p.grad = None
    leaves = list(args)
    for i, x in enumerate(args):
        if torch.is_tensor(x) and x.is_floating_point():  # token streams, timestep modulation, pose feature
            leaves[i] = x.detach().clone().requires_grad_(True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator(device=device).manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen, device=device)).sum() for o in outs)
    loss.backward()
    result = {f"out{i}": o.detach().float() for i, o in enumerate(outs)}
    result.update({f"dinput{i}": x.grad.float() for i, x in enumerate(leaves)
                   if torch.is_tensor(x) and x.requires_grad and x.grad is not None})
    result.update({f"dparam.{n}": p.grad.float().clone() for n, p in params.items() if p.grad is not None})
    for p in params.values():
        p.grad = None
    return result


def _compare(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor], bad_above: float = 0.05) -> dict[str, Any]:
    """Largest relative error (Frobenius) by group, the worst tensor, every tensor whose error is
    above ``bad_above`` (bf16 noise of these layers is ~3e-3) and the non-finite tensors."""
    groups: dict[str, float] = {}
    worst = ("", 0.0)
    nonfinite = []
    bad: dict[str, float] = {}
    missing = sorted(set(ref) ^ set(other))
    for name in sorted(set(ref) & set(other)):
        a, b = ref[name], other[name]
        if not torch.isfinite(b).all():
            nonfinite.append(name)
            err = float("inf")
        else:
            err = float((a - b).norm() / a.norm().clamp_min(1e-30))
        group = name.split(".")[0].rstrip("0123456789")
        groups[group] = max(groups.get(group, 0.0), err)
        if err > worst[1]:
            worst = (name, err)
        if err > bad_above:
            bad[name] = err
    return {"max_rel_err": groups, "worst": {"tensor": worst[0], "rel_err": worst[1]},
            "above_0.05": dict(sorted(bad.items(), key=lambda kv: -kv[1])[:40]), "n_above_0.05": len(bad),
            "nonfinite": nonfinite[:20], "n_nonfinite": len(nonfinite), "missing": missing}


def check_region(module: torch.nn.Module, args: tuple[Any, ...], device: torch.device, backend: str,
                 ckpt: bool) -> dict[str, Any]:
    """Eager twice, compiled twice (under the layer checkpoint with ``ckpt``): the JSON row's numbers.

    Every floating-point tensor argument is a leaf with a gradient (the token streams, the
    timestep modulation, the pose feature); the loss is a fixed seeded random projection of
    every output, the same in every run."""
    eager = _fwd_bwd(module, module, args, device, 0)
    eager2 = _fwd_bwd(module, module, args, device, 0)
    compiled = torch.compile(module, dynamic=False, backend=backend)
    fn = (lambda *xs: checkpoint(compiled, *xs, use_reentrant=False)) if ckpt else compiled
    t0 = time.perf_counter()
    first = _fwd_bwd(fn, module, args, device, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    second = _fwd_bwd(fn, module, args, device, 0)
    return {"eager_vs_eager": _compare(eager, eager2), "compiled_vs_eager": _compare(eager, first),
            "compiled_repeat_vs_eager": _compare(eager, second), "first_call_s": compile_s,
            "shapes": [list(x.shape) for x in args if torch.is_tensor(x)]}


def _set_inductor(items: list[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` settings to ``torch._inductor.config`` (an unknown key: ValueError)."""
    import ast

    import torch._inductor.config as config

    applied = {}
    for item in items:
        key, sep, value = item.partition("=")
        owner, _, leaf = key.rpartition(".")
        target = config
        for part in filter(None, owner.split(".")):
            target = getattr(target, part)
        if not sep or not hasattr(target, leaf):
            raise ValueError(f"--inductor {item!r}: expected KEY=VALUE with KEY a torch._inductor.config setting")
        setattr(target, leaf, ast.literal_eval(value))
        applied[key] = getattr(target, leaf)
    return applied


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--preset", default=None, help="default: wan2.1-t2v-1.3b on cuda, tiny on cpu")
    p.add_argument("--size", default=None, help="HxW; default 336x592 on cuda, 32x48 on cpu")
    p.add_argument("--plan", default="irg:81,pcb:81,frame:81,irg:81:ckpt,irg:25,irg:21")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generation)")
    p.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="set torch._inductor.config.KEY (dotted, a Python literal value) for the run; repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None, help="also write the rows here (JSON lines)")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.preset = a.preset or ("wan2.1-t2v-1.3b" if cuda else "tiny")
    a.hw = [int(v) for v in (a.size or ("336x592" if cuda else "32x48")).split("x")]
    a.batch, a.workers, a.lr, a.compile = 1, 0, 1e-5, False
    plan = parse_plan(a.plan)
    inductor = _set_inductor(a.inductor)
    device = torch.device(a.device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        by_frames: dict[int, list[tuple[str, bool]]] = {}
        for region, frames, ckpt in plan:
            by_frames.setdefault(frames, []).append((region, ckpt))
        for frames, items in by_frames.items():  # one trainer alive at a time
            trainer = _trainer(a, frames, work)
            captured = _capture(trainer, {r for r, _ in items})
            for region, ckpt in items:
                module, args = captured[region]
                log(f"{region} at {frames} frames{' under the layer checkpoint' if ckpt else ''}: compiling")
                row = {"region": region, "frames": frames, "ckpt": ckpt, "preset": a.preset, "hw": a.hw,
                       "backend": a.backend, "inductor": inductor, "torch": torch.__version__}
                try:
                    row.update(check_region(module, args, device, a.backend, ckpt))
                except torch.OutOfMemoryError as exc:
                    row.update(oom=True, error=str(exc).splitlines()[0][:200])
                print(json.dumps(row), flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                rows.append(row)
                torch._dynamo.reset()
            trainer = captured = None  # noqa: F841
            _release(device)
    return rows


if __name__ == "__main__":
    main()
