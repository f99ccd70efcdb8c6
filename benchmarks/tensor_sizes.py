"""The largest tensors of one training step, without a GPU: forward and backward on the meta device.

Every operator's output of a stage-1 or stage-2 step (the model's forward on random inputs of
the requested shape, a sum of every output as the loss, backward through the trainable
modules) is recorded by a dispatch mode; nothing is allocated, so the 1.3B and 14B presets
at 81 frames run on any machine in seconds. It prints the distinct tensors of at least
``--min-elements`` elements, largest first, with how many times each occurs and whether it
reaches 2^31 elements (the size from which a kernel indexing with 32-bit offsets overflows).

On the meta device ``scaled_dot_product_attention`` runs its explicit matmul + softmax form,
so the attention score matrices ``(B, heads, Lq, Lk)`` appear in the list: they exist on a
GPU only where an attention does not run a fused kernel.

    python benchmarks/tensor_sizes.py --preset wan2.1-t2v-1.3b --frames 81 --size 336x592
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from meta_inputs import meta_forward_inputs  # noqa: E402

from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402

INT32_LIMIT = 2**31


class _SizeRecorder(TorchDispatchMode):
    """Counts every operator output of at least ``min_elements`` elements by (phase, op, shape, dtype)."""

    def __init__(self, min_elements: int) -> None:
        super().__init__()
        self.min_elements = min_elements
        self.phase = "forward"
        self.seen: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.numel() >= self.min_elements:
                self.seen[(self.phase, str(func.overloadpacket.__name__), tuple(o.shape), str(o.dtype))] += 1
        return out


def step_tensor_sizes(preset: str, frames: int, height: int, width: int, stage: int = 2,
                      min_elements: int = 2**25) -> list[dict]:
    """Distinct tensors of one training step's forward and backward, largest first.

    Returns rows ``{"phase", "op", "shape", "dtype", "elements", "count", "over_int32"}``.
    """
    cfg = get_preset(preset)
    if (frames - 1) % 4 or height % 16 or width % 16:
        raise ValueError(f"need frames = 4k + 1 and a size in multiples of 16, got {frames} x {height}x{width}")
    with torch.device("meta"):
        model = FantasyWorldModel(cfg, device="meta")
    model.set_stage(stage)
    latents, timestep, text, kwargs = meta_forward_inputs(cfg, frames, height, width,
                                                          cameras=stage == 2 or cfg.has_control_adapter)
    rec = _SizeRecorder(min_elements)
    with rec:
        out = model(latents, timestep, text, **kwargs, stage=stage)
        loss = sum(v.float().sum() for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
        rec.phase = "backward"
        loss.backward()
    rows = []
    for (phase, op, shape, dtype), count in rec.seen.items():
        n = 1
        for s in shape:
            n *= s
        rows.append({"phase": phase, "op": op, "shape": list(shape), "dtype": dtype.replace("torch.", ""),
                     "elements": n, "count": count, "over_int32": n >= INT32_LIMIT})
    rows.sort(key=lambda r: (-r["elements"], r["phase"], r["op"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="336x592", help="HxW")
    p.add_argument("--stage", type=int, default=2, choices=(1, 2))
    p.add_argument("--min-elements", type=float, default=2**25, help="smallest tensor listed (elements)")
    p.add_argument("--top", type=int, default=30, help="rows printed")
    a = p.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    rows = step_tensor_sizes(a.preset, a.frames, h, w, a.stage, int(a.min_elements))
    print(f"{a.preset}, stage {a.stage}, {a.frames}x{h}x{w}: {sum(r['over_int32'] for r in rows)} distinct "
          f"tensors of >= 2^31 elements; largest {len(rows[:a.top])} of {len(rows)} listed")
    for r in rows[: a.top]:
        mark = "  >= 2^31" if r["over_int32"] else ""
        print(f"{r['elements'] / INT32_LIMIT:6.2f} x 2^31  x{r['count']:<3d} {r['phase']:8s} {r['op']:32s} "
              f"{tuple(r['shape'])} {r['dtype']}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
