"""Real-scale GPU benchmark: matmul ceiling, training steps, inference steps.

One command on a GPU machine (random weights, bf16)::

    python benchmarks/bench_gpu.py --what matmul,train,infer --out results.json

* ``matmul``: the card's bf16 rate (8192^3 product, median of repeats): the MFU ceiling.
* ``train``: FantasyWorld training steps (forward + backward + AdamW) with gradient
  checkpointing for stage 1 and stage 2 of a preset at a resolution; s/step, samples/s,
  peak memory, MFU = model FLOPs (counted on the meta device by ``benchmarks/flops.py``,
  attention included, recompute excluded) / (time x measured matmul rate), and the top
  kernels from ``torch.profiler``. The step is the trainer's: a random latent-cache batch
  goes through the trainer's input builder (``fantasyworld.models.inputs``) and its
  per-sample losses.
* ``infer``: one denoising step with CFG batched (B=2, heads off), the plain Wan
  transformer's own batch-2 forward for comparison, the final step with heads, and a
  VAE decode.

Weights are random: built on the meta device, materialised on the GPU and filled with
N(0, 0.02) (norm weights 1, zero-initialised gates kept at zero), which exercises exactly
the kernels the real weights would.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import count_flops  # noqa: E402

from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402
from fantasyworld.models.inputs import training_inputs  # noqa: E402
from fantasyworld.models.parallelize import compile_blocks  # noqa: E402
from fantasyworld.models.wan_backbone import rebuild_rope  # noqa: E402
from fantasyworld.models.wan_loading import cast_keeping_fp32  # noqa: E402
from fantasyworld.training.losses import per_sample_losses  # noqa: E402

DEV = torch.device("cuda")


def log(*a) -> None:
    print(*a, flush=True)


def cuda_time(fn, warmup: int = 2, repeat: int = 5) -> list[float]:
    """Seconds per call (CUDA events), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return times


def matmul_rate(n: int = 8192) -> float:
    """Median bf16 TFLOP/s of an n^3 matmul on random data (rotating 4 input sets)."""
    xs = [(torch.randn(n, n, device=DEV, dtype=torch.bfloat16), torch.randn(n, n, device=DEV, dtype=torch.bfloat16))
          for _ in range(4)]
    i = [0]

    def f():
        a, b = xs[i[0] % 4]
        i[0] += 1
        return a @ b

    t = cuda_time(f, warmup=5, repeat=30)
    return 2 * n**3 / statistics.median(t) / 1e12


def build_model(preset: str, trainable_dtype: torch.dtype) -> FantasyWorldModel:
    """Random-weight model on the GPU: Wan in bf16 (fp32-kept modules fp32), ours in ``trainable_dtype``."""
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = FantasyWorldModel(cfg, device="meta")
    model = model.to_empty(device=DEV)
    zero_init = ("gamma_m1", "gamma_m2", "v_proj.group2.2")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(z in name for z in zero_init):
                p.zero_()
            elif p.ndim == 1 and ("norm" in name or name.endswith("ls1.gamma") or name.endswith("ls2.gamma")):
                p.fill_(1.0 if "norm" in name else 0.01)
            else:
                p.normal_(0.0, 0.02)
    rebuild_rope(model.transformer, DEV)
    cast_keeping_fp32(model.transformer, torch.bfloat16)
    for mod in model.fantasyworld_modules().values():
        mod.to(trainable_dtype)
    return model


def make_batch(cfg, b: int, frames: int, h: int, w: int, stage: int, device: torch.device = DEV) -> dict:
    """A random latent-cache clip batch of ``b`` samples turned into the trainer's model inputs
    and loss targets (:func:`~fantasyworld.models.inputs.training_inputs`, stage ``stage``)."""
    f = (frames - 1) // 4 + 1
    g = torch.Generator().manual_seed(0)
    t = torch.arange(frames, dtype=torch.float32)
    w2c = torch.eye(4).repeat(b, frames, 1, 1)
    w2c[:, :, 2, 3] = -0.05 * t
    K = torch.tensor([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]]).repeat(b, frames, 1, 1)
    clip = {
        "latents": torch.randn(b, 16, f, h // 8, w // 8, generator=g),
        "text_emb": torch.randn(b, 512, cfg.wan["text_dim"], generator=g),
        "depth": 1 + torch.rand(b, frames, h, w, generator=g), "points": torch.randn(b, frames, h, w, 3, generator=g),
        "valid": torch.ones(b, frames, h, w, dtype=torch.bool), "w2c": w2c, "intrinsics": K,
        "sample_position": torch.arange(b, dtype=torch.int64),
    }
    if cfg.is_i2v:
        clip["cond_latent"] = torch.randn(b, 20, f, h // 8, w // 8, generator=g)
        clip["clip_image_emb"] = torch.randn(b, 257, cfg.wan["image_dim"], generator=g)
    return training_inputs(clip, device=device, stage=stage, seed=0, shift=5.0, is_i2v=cfg.is_i2v)


def top_kernels(fn, n: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    evs = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in evs)
    for e in evs[:n]:
        rows.append({"kernel": e.key[:110], "ms": e.device_time_total / 1e3, "share": e.device_time_total / total})
    return rows


def bench_train(
    preset: str, frames: int, h: int, w: int, batch: int, stage: int, rate: float, profile: bool,
    ckpt_layers: bool = True, ckpt_heads: bool = False, compiled: bool = False,
) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(preset, torch.float32).train().set_stage(stage)
    model.gradient_checkpointing = ckpt_layers
    model.checkpoint_heads = ckpt_heads
    if compiled:
        compile_blocks(model)
    params = [p for _, p in model.trainable_named_parameters()]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    inputs = make_batch(model.config, batch, frames, h, w, stage)

    def step():  # the trainer's step: its forward, per-sample losses and mean objective
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(inputs["latents"], inputs["timestep"], inputs["text_emb"], plucker=inputs.get("plucker"),
                        cond_latent=inputs.get("cond_latent"), image_emb=inputs.get("image_emb"), stage=stage)
        total, _ = per_sample_losses(out, inputs, stage=stage, lambda_geo=1.0, alpha=0.2)
        (total / batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = cuda_time(step, warmup=1, repeat=3)
    sec = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30
    flops = count_flops(preset, frames, h, w, batch, stage)["total"]
    res = {
        "what": "train", "preset": preset, "stage": stage, "frames": frames, "hw": [h, w], "batch": batch,
        "ckpt_layers": ckpt_layers, "ckpt_heads": ckpt_heads, "compiled": compiled, "s_first_step": first,
        "s_per_step": sec, "samples_per_s": batch / sec, "peak_gib": peak, "model_tflop": flops / 1e12,
        "mfu": flops / sec / (rate * 1e12), "times": times,
    }
    if profile:
        res["top_kernels"] = top_kernels(step)
    return res


def bench_infer(preset: str, frames: int, h: int, w: int, rate: float, profile: bool, compiled: bool = False) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(preset, torch.bfloat16).eval()
    if compiled:
        compile_blocks(model)
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in make_batch(model.config, 2, frames, h, w, stage=2).items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        pose = model.encode_camera(inputs["plucker"])

        def cfg_step(heads=None):
            return model(inputs["latents"], inputs["timestep"], inputs["text_emb"], pose_feature=pose,
                         cond_latent=inputs.get("cond_latent"), image_emb=inputs.get("image_emb"), stage=2,
                         heads=heads)

        def wan_only():
            x = inputs["latents"]
            if model.config.is_i2v:
                x = torch.cat([x, inputs["cond_latent"]], 1)
            return model.transformer(x, inputs["timestep"], inputs["text_emb"], inputs.get("image_emb"),
                                     return_dict=False)[0]

        t_step = statistics.median(cuda_time(cfg_step, warmup=1, repeat=3))
        t_wan = statistics.median(cuda_time(wan_only, warmup=1, repeat=3))
        t_last = statistics.median(cuda_time(lambda: cfg_step(("depth", "points", "camera")), warmup=1, repeat=2))
        res = {
            "what": "infer", "preset": preset, "frames": frames, "hw": [h, w], "cfg_batch": 2, "compiled": compiled,
            "s_per_step_cfg": t_step, "s_wan_forward_b2": t_wan, "ratio_vs_wan": t_step / t_wan,
            "s_last_step_with_heads": t_last, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        if profile:
            res["top_kernels"] = top_kernels(cfg_step)
    model.to("meta")  # free the 14B weights before the VAE
    torch.cuda.empty_cache()
    try:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan().to(DEV, torch.bfloat16).eval()
        lat = torch.randn(1, 16, (frames - 1) // 4 + 1, h // 8, w // 8, device=DEV, dtype=torch.bfloat16)
        with torch.no_grad():
            res["s_vae_decode"] = statistics.median(cuda_time(lambda: vae.decode(lat), warmup=1, repeat=2))
        res["s_total_50_steps_est"] = 49 * t_step + t_last + res["s_vae_decode"]
    except Exception as exc:  # report, keep the other numbers
        res["vae_error"] = repr(exc)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", default="matmul,train,infer")
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--infer-preset", default="wan2.1-i2v-14b-480p")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--sizes", default="336x592", help="comma list of HxW")
    p.add_argument("--batches", default="1", help="comma list of batch sizes to try (train)")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--variants", default="ckpt",
                   help="comma list of training variants: ckpt (layers), ckpt+heads, heads (heads only), "
                        "none, each optionally +compile (e.g. ckpt+heads+compile)")
    p.add_argument("--infer-compile", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    what = a.what.split(",")
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "cudnn": torch.backends.cudnn.version(),
           "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(), "sdpa_cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
           "date": time.strftime("%Y-%m-%d")}
    log(json.dumps(env))
    results = {"env": env, "runs": []}
    rate = matmul_rate()
    results["matmul_tflops"] = rate
    log(f"bf16 matmul: {rate:.0f} TFLOP/s")
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    if "train" in what:
        for (h, w) in sizes:
            for stage, variant in [(int(s), v) for s in a.stages.split(",") for v in a.variants.split(",")]:
                parts = set(variant.split("+"))
                opts = {"ckpt_layers": "ckpt" in parts, "ckpt_heads": "heads" in parts, "compiled": "compile" in parts}
                for b in [int(x) for x in a.batches.split(",")]:
                    try:
                        r = bench_train(a.preset, a.frames, h, w, b, stage, rate, a.profile and b == 1, **opts)
                    except torch.OutOfMemoryError:
                        log(f"train stage {stage} {variant} {h}x{w} batch {b}: OOM")
                        results["runs"].append({"what": "train", "stage": stage, "hw": [h, w], "batch": b,
                                                "variant": variant, "oom": True})
                        torch.cuda.empty_cache()
                        break
                    results["runs"].append(r)
                    log(f"train {a.preset} stage {stage} [{variant}] {a.frames}x{h}x{w} b{b}: "
                        f"{r['s_per_step']:.3f} s/step {r['samples_per_s']:.3f} samples/s peak {r['peak_gib']:.1f} GiB "
                        f"MFU {r['mfu']:.1%}")
                    for k in r.get("top_kernels", [])[:8]:
                        log(f"    {k['share']:6.1%} {k['ms']:9.1f} ms  {k['kernel']}")
    if "infer" in what:
        h, w = sizes[0]
        try:
            r = bench_infer(a.infer_preset, a.frames, h, w, rate, a.profile, a.infer_compile)
            results["runs"].append(r)
            log(json.dumps({k: v for k, v in r.items() if k != "top_kernels"}))
            for k in r.get("top_kernels", [])[:8]:
                log(f"    {k['share']:6.1%} {k['ms']:9.1f} ms  {k['kernel']}")
        except torch.OutOfMemoryError as exc:
            log(f"infer OOM: {exc}")
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
