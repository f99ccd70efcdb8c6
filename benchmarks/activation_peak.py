"""Peak activation memory of one no-grad forward, counted on the meta device (no GPU, no weights).

Every tensor an operator returns during the forward is tracked by its storage until the last
tensor on that storage is garbage-collected; the largest sum of live storages is the peak,
reported with the operator, the output shape and the project's source lines that made it.
Parameters are not counted (they exist before the forward). ``F.scaled_dot_product_attention``
is counted as a fused kernel (its output only, no score matrix), as the GPU's flash kernels run.

What it is for: where the inference forward's transient memory peaks, before a GPU is spent
on it (``--no-heads``: the Wan and geometry blocks alone, as the denoising steps before the
last run them).

    python benchmarks/activation_peak.py --preset wan2.1-i2v-14b-480p --frames 81 --size 336x592
    python benchmarks/activation_peak.py --preset wan2.1-i2v-14b-480p --frames 81 --size 336x592 --no-heads
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meta_inputs import meta_forward_inputs  # noqa: E402

from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402


class LiveStorages(TorchDispatchMode):
    """Bytes of the storages that operator outputs hold, while any tensor on them lives."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.nbytes: dict[int, int] = {}
        self.live = self.peak = 0
        self.at: dict[str, Any] = {}

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.nbytes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ARG002
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key not in self.refs:
                self.refs[key] = 0
                self.nbytes[key] = t.untyped_storage().nbytes()
                self.live += self.nbytes[key]
                if self.live > self.peak:
                    self.peak = self.live
                    lines = [f"{f.filename.split('fantasyworld/', 1)[-1]}:{f.lineno} {f.name}"
                             for f in traceback.extract_stack()[:-1] if "/fantasyworld/" in f.filename]
                    self.at = {"op": str(func), "shape": list(t.shape), "tensor_dtype": str(t.dtype),
                               "where": lines[-3:]}
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


def _fused_attention(query, key, value, *args, **kwargs):  # noqa: ARG001
    """What a fused attention kernel leaves behind: the output, no score matrix."""
    return torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)


def forward_peak(preset: str, frames: int, height: int, width: int, heads: bool = True,
                 dtype: torch.dtype = torch.bfloat16, text_tokens: int = 512,
                 temporal_chunk: int | None = None, frames_chunk: int | None = None) -> dict[str, Any]:
    """Peak live activation bytes of ``FantasyWorldModel(preset)``'s no-grad forward on one
    sample of ``frames x height x width`` pixels (latents ``(1, 16, 1 + (frames - 1) // 4, H / 8,
    W / 8)``, Plücker rays ``(1, frames, 6, H, W)``), on the meta device. ``temporal_chunk``: the
    DPT heads' ``temporal_chunk_size`` (latent frames per step of their temporal upsamplers);
    ``frames_chunk``: their ``frames_chunk_size`` (pixel frames per step of the fusion; None:
    the preset's)."""
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = FantasyWorldModel(cfg, device="meta").to(dtype).eval()
    for module in model.modules():
        if hasattr(module, "temporal_chunk_size"):
            module.temporal_chunk_size = temporal_chunk
            if frames_chunk is not None:
                module.frames_chunk_size = frames_chunk
    latents, timestep, text, inputs = meta_forward_inputs(cfg, frames, height, width, dtype=dtype,
                                                          text_tokens=text_tokens)
    if not heads:
        inputs["heads"] = None
    counter = LiveStorages()
    sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _fused_attention
    try:
        with torch.no_grad(), counter:
            model(latents, timestep, text, **inputs)
    finally:
        F.scaled_dot_product_attention = sdpa
    return {"preset": preset, "frames": frames, "height": height, "width": width, "heads": heads,
            "dtype": str(dtype), "temporal_chunk": temporal_chunk,
            "frames_chunk": frames_chunk, "peak_gib": counter.peak / 2**30, "peak_bytes": counter.peak,
            **counter.at}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="wan2.1-i2v-14b-480p")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="336x592", help="HxW in pixels")
    p.add_argument("--no-heads", action="store_true", help="the blocks alone (the steps before the last)")
    p.add_argument("--temporal-chunk", type=int, default=None,
                   help="latent frames per step of the DPT heads' temporal upsamplers (default: all)")
    p.add_argument("--frames-chunk", type=int, default=None,
                   help="pixel frames per step of the DPT heads' fusion (default: the preset's, 16)")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    row = forward_peak(args.preset, args.frames, h, w, heads=not args.no_heads,
                       temporal_chunk=args.temporal_chunk, frames_chunk=args.frames_chunk)
    print(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
