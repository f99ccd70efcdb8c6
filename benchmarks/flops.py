"""Model FLOPs of a FantasyWorld training step or forward, counted on the meta device.

Counts every matmul, convolution and attention FLOP of one forward (and backward, if
asked) with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors: no memory, any
preset, no GPU. Gradient checkpointing is off here, so recomputation is *excluded* (the
MFU convention: model FLOPs, not hardware FLOPs). Backward FLOPs count what autograd
really does: activation gradients through the frozen Wan blocks, no weight gradients for
frozen weights.

    python benchmarks/flops.py --preset wan2.1-t2v-1.3b --frames 81 --height 336 --width 592
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel


def count_flops(
    preset: str, frames: int, height: int, width: int, batch: int = 1, stage: int = 2, backward: bool = True,
    heads: bool = True, pixel_frames: int | None = None,
) -> dict[str, float]:
    """FLOPs of one step: ``{"forward": ..., "backward": ..., "total": ...}``.

    ``pixel_frames``: the pixel-rate heads predict only that many frames (the training option
    ``loss.pixel_frames_per_step``); None: every frame. The DPT resizes are counted as the
    kernel (no FLOPs), whichever implementation a run uses, so the count is the same model's.
    """
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = FantasyWorldModel(cfg, device="meta").set_stage(stage)
        f = (frames - 1) // 4 + 1
        latents = torch.randn(batch, 16, f, height // 8, width // 8)
        timestep = torch.full((batch,), 500.0)
        text = torch.randn(batch, 512, cfg.wan["text_dim"])
        kw = {"plucker": torch.randn(batch, frames, 6, height, width)}
        if pixel_frames is not None:
            kw["pixel_frames"] = torch.arange(pixel_frames).repeat(batch, 1)
        if cfg.is_i2v:
            kw["cond_latent"] = torch.randn(batch, 20, f, height // 8, width // 8)
            kw["image_emb"] = torch.randn(batch, 257, cfg.wan["image_dim"])
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(latents, timestep, text, **kw, stage=stage, heads=("depth", "points", "camera") if heads else None)
    fwd = counter.get_total_flops()
    bwd = 0
    if backward:
        loss = sum(v.float().mean() for k, v in out.items() if isinstance(v, torch.Tensor) and v.requires_grad)
        counter2 = FlopCounterMode(display=False)
        with counter2:
            loss.backward()
        bwd = counter2.get_total_flops()
    return {"forward": float(fwd), "backward": float(bwd), "total": float(fwd + bwd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=336)
    p.add_argument("--width", type=int, default=592)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--pixel-frames", type=int, default=None,
                   help="the pixel-rate heads predict this many frames (loss.pixel_frames_per_step); default all")
    a = p.parse_args()
    r = count_flops(a.preset, a.frames, a.height, a.width, a.batch, a.stage, backward=not a.forward_only,
                    pixel_frames=a.pixel_frames)
    print(json.dumps({k: f"{v / 1e12:.2f} TFLOP" for k, v in r.items()}))


if __name__ == "__main__":
    main()
