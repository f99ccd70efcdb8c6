"""Multi-GPU training-step benchmark with FSDP2 (weak scaling: fixed per-GPU batch).

Run under torchrun, once per GPU count::

    torchrun --nproc_per_node 4 benchmarks/bench_fsdp.py --preset wan2.1-i2v-14b-480p --stage 2

Uses the trainer's own sharding (:func:`fantasyworld.training.parallel.shard_model`:
geometry blocks, cross-attention layers and heads are FSDP units, the model wrapper is
the root, frozen Wan weights are replicated), random weights, bf16 autocast with fp32
trainable weights, gradient checkpointing (layers + DPT fusion chunks), AdamW. Rank 0
prints one JSON line: s/step (median), samples/s over all GPUs, per-GPU peak memory (max
over ranks). Also runs on CPU with gloo for a smoke test (``--device cpu --preset tiny``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fantasyworld.geometry.plucker import plucker_rays  # noqa: E402
from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402
from fantasyworld.models.wan_backbone import rebuild_rope  # noqa: E402
from fantasyworld.models.wan_loading import cast_keeping_fp32  # noqa: E402
from fantasyworld.training.losses import compute_losses  # noqa: E402
from fantasyworld.training.parallel import all_reduce_max, init_world, shard_model, shutdown  # noqa: E402


def random_model(preset: str, device: torch.device, seed: int = 0) -> FantasyWorldModel:
    """Meta-built model materialised on ``device`` with N(0, 0.02) weights (same on every rank)."""
    with torch.device("meta"):
        model = FantasyWorldModel(get_preset(preset), device="meta")
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(z in name for z in ("gamma_m1", "gamma_m2", "v_proj.group2.2")):
                p.zero_()
            elif p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    rebuild_rope(model.transformer, device)
    if device.type == "cuda":
        cast_keeping_fp32(model.transformer, torch.bfloat16)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="wan2.1-i2v-14b-480p")
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="336x592")
    p.add_argument("--batch", type=int, default=1, help="per-GPU batch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    world = init_world(a.device)
    dev = world.device
    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = random_model(a.preset, dev).train().set_stage(a.stage)
    model.gradient_checkpointing = True
    model.checkpoint_heads = True
    shard_model(model, world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=dev.type == "cuda")
    build_s = time.perf_counter() - t0
    cfg = model.config
    b, t = a.batch, a.frames
    f = (t - 1) // 4 + 1
    g = torch.Generator(device=dev).manual_seed(1 + world.rank)
    act = torch.bfloat16 if dev.type == "cuda" else torch.float32
    w2c = torch.eye(4, device=dev).repeat(b, t, 1, 1)
    w2c[:, :, 2, 3] = -0.05 * torch.arange(t, device=dev)
    K = torch.tensor([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]], device=dev).repeat(b, t, 1, 1)
    inputs = dict(
        plucker=plucker_rays(w2c, K, h, w).to(act),
        cond_latent=torch.randn(b, 20, f, h // 8, w // 8, device=dev, generator=g).to(act) if cfg.is_i2v else None,
        image_emb=torch.randn(b, 257, cfg.wan["image_dim"], device=dev, generator=g).to(act) if cfg.is_i2v else None,
    )
    latents = torch.randn(b, 16, f, h // 8, w // 8, device=dev, generator=g).to(act)
    text = torch.randn(b, 512, cfg.wan["text_dim"], device=dev, generator=g).to(act)
    timestep = torch.full((b,), 500.0, device=dev)
    gt = {"depth": 1 + torch.rand(b, t, h, w, device=dev, generator=g),
          "points": torch.randn(b, t, h, w, 3, device=dev, generator=g),
          "valid": torch.ones(b, t, h, w, dtype=torch.bool, device=dev), "w2c": w2c, "intrinsics": K}
    target = torch.randn(latents.shape, device=dev, generator=g)

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        s = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(latents, timestep, text, **inputs, stage=a.stage)
        loss = compute_losses(out, gt, stage=a.stage, lambda_geo=1.0, alpha=0.2,
                              flow_target=target if a.stage == 2 else None)["objective"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - s

    first = step()
    times = [step() for _ in range(a.steps)]
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
    peak = float(all_reduce_max(torch.tensor([peak], device=dev), world)[0])
    sec = statistics.median(times)
    if world.is_main:
        print(json.dumps({
            "preset": a.preset, "stage": a.stage, "gpus": world.world_size, "per_gpu_batch": b,
            "frames": t, "hw": [h, w], "s_per_step": sec, "samples_per_s": b * world.world_size / sec,
            "peak_gib_per_gpu": peak, "s_first_step": first, "s_build": build_s, "times": times,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        }), flush=True)
    if world.distributed:
        dist.barrier()
    shutdown(world)


if __name__ == "__main__":
    main()
