"""Wan2.2 variant on one GPU: seconds per CFG step and peak memory of a 14B-sized expert.

    python benchmarks/bench_wan22.py                    # GPU: low expert, 81x480x832, bf16
    python benchmarks/bench_wan22.py --experts 2        # both experts resident (as the official)
    python benchmarks/bench_wan22.py --tiny             # CPU smoke run of the same code path (seconds)

Builds the ``wan2.2-fun-a14b-control-camera-low`` expert (and, with ``--experts 2``, the
high one) with random weights: on the meta device, cast there (bf16, the
``_keep_in_fp32_modules`` fp32), materialised with ``to_empty`` on the device and filled in
place with N(0, 0.02) (norm weights 1, layer scales 0.01, zero-initialised gates 0), so no
fp32 copy is ever allocated. Then, at 81 frames 480x832 (latent 16x21x60x104, 32,760 video
tokens), it times what the two-expert sampler runs per step: one guided step
(:func:`fantasyworld.inference.sampler.guided_flow`, CFG scale 5, conditional and
unconditional passes batched, bf16-rounded timestep), the control adapter once per
expert, and the last step with the geometry heads. It prints one JSON object: seconds per
CFG step (median), the last step with heads, the control adapter, an estimate for 50
steps, and the peak allocated memory (GiB). Depends on torch, diffusers and this project.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fantasyworld.inference.sampler import Conditioning, guided_flow  # noqa: E402
from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402
from fantasyworld.models.wan_backbone import rebuild_rope  # noqa: E402
from fantasyworld.models.wan_loading import cast_keeping_fp32  # noqa: E402

#: zero-initialised parameters of the FantasyWorld modules (kept at zero as at init)
ZERO_INIT = ("gamma_m1", "gamma_m2")


def build_expert(preset: str, device: torch.device, dtype: torch.dtype, seed: int) -> FantasyWorldModel:
    """Random-weight expert in ``dtype`` on ``device`` without any fp32 copy (module docstring)."""
    with torch.device("meta"):
        model = FantasyWorldModel(get_preset(preset), device="meta")
    cast_keeping_fp32(model, dtype)  # on meta: free
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(z in name for z in ZERO_INIT):
                p.zero_()
            elif p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            elif name.endswith(("ls1.gamma", "ls2.gamma")):
                p.fill_(0.01)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    rebuild_rope(model.transformer, device)
    return model.eval().requires_grad_(False)


def timer(device: torch.device):
    """``time(fn, warmup, repeat) -> list of seconds`` (CUDA events on a GPU)."""
    def run(fn, warmup: int, repeat: int) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeat):
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize(device)
                out.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return out
    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny-wan2.2 experts on the CPU, 9x32x48 (smoke run)")
    p.add_argument("--experts", type=int, choices=(1, 2), default=1,
                   help="1: the low expert; 2: both resident, a high and a low step timed")
    p.add_argument("--frames", type=int, default=None, help="pixel frames (default 81; tiny 9)")
    p.add_argument("--height", type=int, default=None, help="default 480 (tiny 32)")
    p.add_argument("--width", type=int, default=None, help="default 832 (tiny 48)")
    p.add_argument("--repeat", type=int, default=3, help="timed CFG steps (after one warm-up)")
    p.add_argument("--no-cfg-batch", action="store_true", help="two batch-1 passes instead of one batch-2 pass")
    p.add_argument("--no-heads", action="store_true", help="skip timing the last step with the geometry heads")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    tiny = args.tiny
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not tiny:
        p.error("no CUDA device: pass --tiny for the CPU smoke run")
    frames, h, w = args.frames or (9 if tiny else 81), args.height or (32 if tiny else 480), \
        args.width or (48 if tiny else 832)
    dtype = torch.bfloat16
    names = ("low",) if args.experts == 1 else ("high", "low")
    prefix = "tiny-wan2.2-" if tiny else "wan2.2-fun-a14b-control-camera-"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    experts = {n: build_expert(prefix + n, device, dtype, seed=i) for i, n in enumerate(names)}
    build_s = time.perf_counter() - t0
    cfg = experts["low"].config
    f, lh, lw = (frames - 1) // 4 + 1, h // 8, w // 8
    g = torch.Generator(device=device).manual_seed(0)
    text_len = 512
    x = torch.randn(1, 16, f, lh, lw, device=device, generator=g)
    cond_latent = torch.randn(1, 20, f, lh, lw, device=device, generator=g)
    text = torch.randn(1, text_len, cfg.wan["text_dim"], device=device, generator=g)
    negative = torch.zeros_like(text)
    plucker = torch.randn(1, frames, 6, h, w, device=device, generator=g, dtype=dtype)
    time_it = timer(device)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "presets": [e.config.name for e in experts.values()], "frames": frames, "hw": [h, w],
                 "latent": [16, f, lh, lw], "video_tokens": f * (lh // 2) * (lw // 2), "dtype": "bfloat16",
                 "cfg_batch": not args.no_cfg_batch, "guidance_scale": 5.0,
                 "params_per_expert": sum(p.numel() for p in experts["low"].parameters()),
                 "s_build_random_weights": round(build_s, 2), "torch": torch.__version__}
    sigma = {"high": torch.tensor(0.95), "low": torch.tensor(0.5)}
    with torch.no_grad():
        for name, model in experts.items():
            ctrl = time_it(lambda model=model: model.encode_camera(plucker), 1, 1)
            res[f"s_control_adapter_{name}"] = ctrl[0]
            cond = Conditioning(text, negative, model.encode_camera(plucker), cond_latent)

            def step(model=model, cond=cond, name=name, heads=None):
                return guided_flow(model, x, sigma[name].to(device), cond, 5.0, cfg_batch=not args.no_cfg_batch,
                                   heads=heads, round_timestep=True)

            times = time_it(step, 1, args.repeat)
            res[f"s_per_cfg_step_{name}"] = statistics.median(times)
            res[f"s_per_cfg_step_{name}_all"] = times
            if name == "low" and not args.no_heads:
                try:  # the heads run at full video resolution (81 x 480 x 832)
                    res["s_last_step_with_heads"] = time_it(lambda: step(heads=("depth", "points", "camera")), 0, 1)[0]
                except torch.cuda.OutOfMemoryError as exc:  # keep the step figures
                    res["heads_error"] = f"out of memory: {str(exc).splitlines()[0]}"
                    torch.cuda.empty_cache()
    res["s_per_cfg_step"] = res["s_per_cfg_step_low"]
    last = res.get("s_last_step_with_heads", res["s_per_cfg_step_low"])
    if args.experts == 2:  # the official rule at 50 steps: 18 high steps, 32 low (the last with heads)
        res["s_50_steps_est"] = 18 * res["s_per_cfg_step_high"] + 31 * res["s_per_cfg_step_low"] + last
    else:  # one expert timed; the other has the same architecture and cost
        res["s_50_steps_est"] = 49 * res["s_per_cfg_step_low"] + last
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    else:
        res["peak_gib"] = None
    text_out = json.dumps(res, indent=2)
    print(text_out, flush=True)
    if args.out:
        Path(args.out).write_text(text_out + "\n")
    return res


if __name__ == "__main__":
    main()
