"""The whole ``generate`` per memory tier, and the CFG step against the plain Wan forward, in one run.

One command on a GPU machine (random weights of the real sizes, bf16)::

    python benchmarks/bench_generate.py --preset wan2.1-i2v-14b-480p --size 336x592 --frames 81 \\
        --steps 3 --tiers 80,48,24 --out generate.json

What it builds: the FantasyWorld model of the preset (Wan + geometry branch), a UMT5-XXL
text encoder, a CLIP ViT-H/14 image encoder and the Wan2.1 VAE, all with the real shapes and
random weights (meta device -> GPU -> N(0, 0.02), norm weights 1, zero-initialised gates zero),
in bf16 with every fp32-declared module kept fp32; tokenizer: the offline word-level one.

What it measures:

* ``tiers``: :class:`~fantasyworld.inference.pipeline.FantasyWorldPipeline` end to end (camera,
  text and image encoding, ``--steps`` CFG denoising steps, the geometry pass with all heads,
  the VAE decode, the fused cloud) for each memory tier, under
  ``torch.cuda.set_per_process_memory_fraction`` set to the tier's cap (``80``: none, ``48``:
  46 GiB, ``24``: 22 GiB): seconds and peak GPU memory per phase, and the 50-step estimate
  ``encode + 50 x (denoise / steps) + geometry + decode``. The peak of a run does not depend
  on the number of steps (every step allocates the same), so a few steps give it.
* ``step``: one CFG step (batch 2: conditional and unconditional halves, heads off) of ours
  and the plain diffusers Wan transformer's own batch-2 forward on the same inputs, eager,
  then ours with each layer compiled and Wan with its blocks compiled; the ratios, and the
  compiled step's output error against eager next to the bf16 noise floor (the same step as
  two batch-1 forwards); with ``--attention fa3,...``, ours compiled with each of those attention
  backends (:mod:`fantasyworld.layers.attention`) and its flow error against eager; with ``--fp8``, ours
  again with float8 linears (compiled; ``--fp8-scope all``: the geometry blocks' and cross-attention's
  too), then with float8 linears and each ``--fp8-attention`` backend.
* ``step-cache`` (``--what step-cache``): the first-block step cache
  (:mod:`fantasyworld.inference.step_cache`): one uncached ``generate`` of ``--cache-steps``
  steps, then one per ``--step-cache`` threshold with the same seed and inputs; per threshold
  the denoise time and its speed-up, the skipped steps and every step's probe distance, and
  the relative L2 error of the final latents and of the depth against the uncached run::

      python benchmarks/bench_generate.py --what step-cache --step-cache 0.05,0.1,0.2 \\
          --cache-steps 20 --out step_cache.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fantasyworld.inference.memory_tiers import FP8_SCOPES, get_memory_tier  # noqa: E402
from fantasyworld.inference.pipeline import FantasyWorldPipeline  # noqa: E402
from fantasyworld.inference.sampler import Conditioning  # noqa: E402
from fantasyworld.layers.attention import (  # noqa: E402
    ATTENTION_BACKENDS,
    attention_backend_unavailable,
    use_attention_backend,
)
from fantasyworld.layers.fp8_linear import swap_linears_to_fp8  # noqa: E402
from fantasyworld.models import encoders  # noqa: E402
from fantasyworld.models.config import get_preset  # noqa: E402
from fantasyworld.models.fantasyworld import FantasyWorldModel  # noqa: E402
from fantasyworld.models.parallelize import compile_blocks  # noqa: E402
from fantasyworld.models.wan_backbone import rebuild_rope  # noqa: E402
from fantasyworld.models.wan_loading import cast_keeping_fp32  # noqa: E402

#: memory tier -> the cap the run is held to (GiB; None: the whole card)
TIER_CAPS_GIB = {"80": None, "48": 46.0, "24": 22.0}
ZERO_INIT = ("gamma_m1", "gamma_m2", "v_proj.group2.2")


def log(*a) -> None:
    print(*a, flush=True)


def random_init_(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Materialise a meta-device module on ``device`` with random weights (dtypes kept)."""
    module = module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(z in name for z in ZERO_INIT):
                p.zero_()
            elif p.ndim == 1 and ("norm" in name or "layer_norm" in name or name.endswith(("ls1.gamma", "ls2.gamma"))):
                p.fill_(1.0 if "norm" in name else 0.01)
            elif p.ndim == 1 and name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    return module


def build_components(preset: str, device: torch.device, dtype: torch.dtype):
    """``(model, vae, text_encoder, tokenizer, image_encoder, processor)`` of real sizes (tiny
    presets: the tiny encoders)."""
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = FantasyWorldModel(cfg, device="meta")
    if dtype != torch.float32:
        cast_keeping_fp32(model, dtype)
    model = random_init_(model, device)
    rebuild_rope(model.transformer, device)
    model.eval().requires_grad_(False)
    if cfg.name.startswith("tiny"):
        vae = encoders.tiny_vae(0)
        te, tok = encoders.tiny_text_encoder(0)
        ie, proc = encoders.tiny_image_encoder(0) if cfg.is_i2v else (None, None)
        return model, vae.to(device), te, tok, ie, proc
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    tok = encoders.tiny_tokenizer()
    umt5 = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    with torch.device("meta"):
        te = UMT5EncoderModel(umt5).to(dtype)
    te = random_init_(te, device).eval().requires_grad_(False)
    ie = proc = None
    if cfg.is_i2v:
        clip = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                num_attention_heads=16, image_size=224, patch_size=14, projection_dim=1024,
                                hidden_act="gelu")
        with torch.device("meta"):
            ie = CLIPVisionModel(clip).to(dtype)
        ie = random_init_(ie, device).eval().requires_grad_(False)
        proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    vae = AutoencoderKLWan().to(device, torch.float32).eval().requires_grad_(False)
    return model, vae, te, tok, ie, proc


def cuda_time(fn, device: torch.device, warmup: int = 1, repeat: int = 3) -> float:
    """Median seconds per call after ``warmup`` untimed calls (CUDA events; wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def set_cap(device: torch.device, cap_gib: float | None) -> None:
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0 if cap_gib is None else cap_gib * 2**30 / total, index)


def run_tier(pipe: FantasyWorldPipeline, tier: str, a: argparse.Namespace, image: np.ndarray | None) -> dict:
    """Re-place the pipeline for ``tier`` (``_place`` undoes an earlier block swap) and generate
    once under the tier's cap."""
    pipe.memory = get_memory_tier(tier)
    pipe._text_cache.clear()  # every run encodes its prompts (the text phase is measured per tier)
    set_cap(pipe.device, None)
    pipe._place()
    cap = TIER_CAPS_GIB.get(tier)
    set_cap(pipe.device, cap)
    h, w = a.size
    res: dict = {"tier": tier, "cap_gib": cap}
    start = time.perf_counter()
    try:
        out = pipe("a courtyard with a fountain", image=image, camera="orbit", num_frames=a.frames, height=h,
                   width=w, num_steps=a.steps, seed=0, progress=False)
    except torch.OutOfMemoryError as exc:
        res["error"] = f"OOM: {str(exc).splitlines()[0]}"
        set_cap(pipe.device, None)
        return res
    res["wall_s"] = time.perf_counter() - start
    res["timings"] = {k: round(v, 3) for k, v in out.timings.items()}
    res["peak_gib"] = out.settings.get("peak_memory_gib", {})
    res["peak_gib_max"] = max(res["peak_gib"].values()) if res["peak_gib"] else None
    t = out.timings
    encode = t.get("encode_text", 0) + t.get("encode_image", 0) + t.get("camera", 0)
    res["s_per_step"] = t["denoise"] / a.steps
    res["s_50_step_estimate"] = encode + 50 * res["s_per_step"] + t.get("geometry", 0) + t["decode"] + t["fuse"]
    res["finite"] = bool(np.isfinite(out.depth).all() and np.isfinite(out.latents).all())
    res["latents"], res["depth"] = out.latents, out.depth  # compared across tiers, then dropped
    set_cap(pipe.device, None)
    return res


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_step_cache(pipe: FantasyWorldPipeline, a: argparse.Namespace, image: np.ndarray | None) -> dict:
    """``--cache-steps`` steps uncached, then once per ``--step-cache`` threshold, same seed and
    inputs: denoise seconds, the speed-up, the skipped steps and the distances, and the output
    error against the uncached run (final latents and depth, relative L2)."""
    h, w = a.size
    kw = dict(image=image, camera="orbit", num_frames=a.frames, height=h, width=w, num_steps=a.cache_steps, seed=0,
              progress=False, step_cache_first_steps=a.step_cache_first, step_cache_last_steps=a.step_cache_last)
    pipe("warm-up", **{**kw, "num_steps": 2})  # first-call costs (every phase, heads too) stay out of the timings
    ref = pipe("a courtyard with a fountain", **kw)
    base = ref.timings["denoise"]
    out: dict = {"num_steps": a.cache_steps, "first_steps": a.step_cache_first, "last_steps": a.step_cache_last,
                 "uncached": {"denoise_s": round(base, 3), "s_per_step": round(base / a.cache_steps, 3),
                              "geometry_s": round(ref.timings.get("geometry", 0.0), 3)},
                 "cached": []}
    log(json.dumps(out["uncached"]))
    for thresh in (float(v) for v in a.step_cache.split(",")):
        res = pipe("a courtyard with a fountain", step_cache=thresh, **kw)
        rep = res.settings["step_cache"]
        row = {"threshold": thresh, "skipped": rep["skipped"], "skipped_steps": rep["skipped_steps"],
               "denoise_s": round(res.timings["denoise"], 3),
               "speedup_denoise": round(base / res.timings["denoise"], 3),
               "latent_rel_err": _rel(res.latents, ref.latents), "depth_rel_err": _rel(res.depth, ref.depth),
               "distance": rep["distance"]}
        log(json.dumps(row))
        out["cached"].append(row)
    return out


def run_steps(pipe: FantasyWorldPipeline, a: argparse.Namespace) -> dict:
    """Our batch-2 CFG step vs the plain Wan batch-2 forward, eager then compiled."""
    model, dev, dtype = pipe.model, pipe.device, pipe.dtype
    cfg = model.config
    h, w = a.size
    f = (a.frames - 1) // 4 + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, f, h // 8, w // 8, generator=g).to(dev, dtype)
    t = torch.full((2,), 500.0, device=dev)
    text = torch.randn(1, 512, cfg.wan["text_dim"], generator=g).to(dev)
    plucker = torch.randn(1, a.frames, 6, h, w, generator=g).to(dev, dtype)
    with torch.no_grad():
        pose = model.encode_camera(plucker)
    cond_latent = image_emb = None
    if cfg.is_i2v:
        cond_latent = torch.randn(1, 20, f, h // 8, w // 8, generator=g).to(dev)
        image_emb = torch.randn(1, 257, cfg.wan["image_dim"], generator=g).to(dev)
    kw = Conditioning(text, torch.zeros_like(text), pose, cond_latent, image_emb).model_kwargs(True, dtype)

    @torch.no_grad()
    def ours():
        return model(x, t, kw["text_emb"], pose_feature=kw["pose_feature"], cond_latent=kw["cond_latent"],
                     image_emb=kw["image_emb"], stage=2, heads=None)["flow"]

    @torch.no_grad()
    def wan():
        inp = torch.cat([x, kw["cond_latent"]], 1) if cfg.is_i2v else x
        return model.transformer(inp, t, kw["text_emb"], kw["image_emb"], return_dict=False)[0]

    @torch.no_grad()
    def ours_halves():  # the same two samples as two batch-1 forwards (bf16 kernels differ by batch)
        halves = [model(x[i:i + 1], t[:1], kw["text_emb"][i:i + 1], pose_feature=kw["pose_feature"][:1],
                        cond_latent=None if kw["cond_latent"] is None else kw["cond_latent"][:1],
                        image_emb=None if kw["image_emb"] is None else kw["image_emb"][:1], stage=2,
                        heads=None)["flow"] for i in range(2)]
        return torch.cat(halves)

    res: dict = LoggedDict()
    ref = ours().float()
    res["ours_eager_s"] = cuda_time(ours, dev)
    res["wan_eager_s"] = cuda_time(wan, dev)
    # bf16 noise floor: the same forward, batch 2 vs two batch-1 forwards
    res["noise_floor_rel_err"] = rel(ours_halves(), ref)
    res["ratio_eager"] = res["ours_eager_s"] / res["wan_eager_s"]
    start = time.perf_counter()
    compile_blocks(model, granularity="layers")
    sdpa = not a.skip_sdpa_compiled
    if sdpa:
        got = ours().float()
        res["ours_compile_first_call_s"] = time.perf_counter() - start
        res["compiled_flow_rel_err"] = rel(got, ref)
        res["ours_compiled_s"] = cuda_time(ours, dev)
        res["ratio_compiled_vs_wan_eager"] = res["ours_compiled_s"] / res["wan_eager_s"]
    if sdpa and not a.skip_wan_compiled:
        for blk in model.transformer.blocks:  # the plain Wan forward calls block.forward
            blk.compile(dynamic=False)
        res["wan_compiled_s"] = cuda_time(wan, dev, warmup=2)
        res["ratio_compiled_vs_wan_compiled"] = res["ours_compiled_s"] / res["wan_compiled_s"]
    time_attention_backends(res, "", a.attention, ours, ref, dev)
    if a.fp8:
        torch.cuda.reset_peak_memory_stats(dev)
        res["fp8_scope"] = a.fp8_scope
        res["fp8_linears"] = sum(len(swap_linears_to_fp8(model.get_submodule(prefix), lambda *_: True))
                                 for prefix in FP8_SCOPES[a.fp8_scope])
        torch.cuda.empty_cache()
        res["fp8_resident_gib"] = torch.cuda.memory_allocated(dev) / 2**30
        if sdpa:
            got = ours().float()  # recompiles for the new layer type
            res["fp8_flow_rel_err"] = rel(got, ref)
            res["ours_fp8_compiled_s"] = cuda_time(ours, dev)
            res["ratio_fp8_compiled_vs_wan_eager"] = res["ours_fp8_compiled_s"] / res["wan_eager_s"]
        time_attention_backends(res, "fp8_", a.fp8_attention, ours, ref, dev)
    return res


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` of tensors on their device (:func:`_rel` is the same for the pipeline's
    numpy outputs)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def comma_list(text: str) -> list[str]:
    """``"fa3,fa3_fp8"`` -> ``["fa3", "fa3_fp8"]`` (empty items dropped)."""
    return [n for n in text.split(",") if n]


class LoggedDict(dict):
    """A result dict that prints every entry as it is set (a run cut short still shows what it measured)."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        log(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")


def time_attention_backends(res: dict, prefix: str, names: list[str], ours, ref: torch.Tensor,
                            dev: torch.device) -> None:
    """For each attention backend in ``names``: the compiled step's seconds (``ours_{prefix}compiled_{name}_s``,
    the compiled layers recompile for it), its ratio to the plain Wan eager forward and its flow
    error against the eager bf16 step (``{prefix}{name}_flow_rel_err``); a backend that cannot run here
    is recorded as ``{prefix}{name}_unavailable`` (the reason) and skipped."""
    for name in names:
        reason = attention_backend_unavailable(name)
        if reason:  # recorded, and the run goes on to what it can still measure
            res[f"{prefix}{name}_unavailable"] = reason
            continue
        with use_attention_backend(name):
            start = time.perf_counter()
            got = ours().float()
            res[f"{prefix}{name}_first_call_s"] = time.perf_counter() - start
            res[f"{prefix}{name}_flow_rel_err"] = rel(got, ref)
            res[f"ours_{prefix}compiled_{name}_s"] = cuda_time(ours, dev)
        res[f"ratio_{prefix}compiled_{name}_vs_wan_eager"] = res[f"ours_{prefix}compiled_{name}_s"] / res["wan_eager_s"]


def add_shape_args(p: argparse.ArgumentParser) -> None:
    """``--preset``, ``--size HxW`` and ``--frames`` of the model and clip a benchmark builds."""
    p.add_argument("--preset", default="wan2.1-i2v-14b-480p")
    p.add_argument("--size", default="336x592", type=lambda s: tuple(int(v) for v in s.split("x")))
    p.add_argument("--frames", type=int, default=81)


def build_pipeline(a: argparse.Namespace, dev: torch.device, dtype: torch.dtype, memory: str
                   ) -> tuple[FantasyWorldPipeline, float, np.ndarray | None]:
    """The pipeline of ``a.preset`` on random weights of the real sizes (:func:`build_components`),
    the seconds it took, and a seeded random ``(H, W, 3)`` uint8 first frame for I2V presets."""
    start = time.perf_counter()
    pipe = FantasyWorldPipeline(*build_components(a.preset, dev, dtype), device=dev, dtype=dtype, memory=memory)
    build_s = time.perf_counter() - start
    image = np.random.default_rng(0).integers(0, 256, (*a.size, 3), dtype=np.uint8) if pipe.config.is_i2v else None
    return pipe, build_s, image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--steps", type=int, default=3, help="denoising steps per generate (per-step cost x 50 = estimate)")
    p.add_argument("--tiers", default="80,48,24")
    p.add_argument("--what", default="tiers,step", help="comma list of tiers, step, step-cache")
    p.add_argument("--fp8", action="store_true", help="also time the step with float8 linears (compiled)")
    p.add_argument("--fp8-scope", default="wan", choices=list(FP8_SCOPES),
                   help="which linears --fp8 quantises (fantasyworld.inference.memory_tiers.FP8_SCOPES)")
    backends = [n for n in ATTENTION_BACKENDS if n != "sdpa"]
    p.add_argument("--attention", default="", type=comma_list,
                   help=f"--what step: comma list of attention backends ({', '.join(backends)}) also timed "
                        "with the compiled bf16 step")
    p.add_argument("--skip-wan-compiled", action="store_true",
                   help="--what step: do not compile and time the plain Wan forward (saves its compile time)")
    p.add_argument("--skip-sdpa-compiled", action="store_true",
                   help="--what step: time the compiled steps only with the --attention / --fp8-attention "
                        "backends, not with the default sdpa (saves a compile each)")
    p.add_argument("--fp8-attention", default="", type=comma_list,
                   help="with --fp8: comma list of attention backends also timed with the float8 linears")
    p.add_argument("--step-cache", default="0.05,0.1,0.2",
                   help="--what step-cache: comma list of first-block cache thresholds, each run against uncached")
    p.add_argument("--cache-steps", type=int, default=20, help="--what step-cache: denoising steps per run")
    p.add_argument("--step-cache-first", type=int, default=2, help="--what step-cache: first steps in full")
    p.add_argument("--step-cache-last", type=int, default=2, help="--what step-cache: last steps in full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    results: dict = {"preset": a.preset, "size": list(a.size), "frames": a.frames, "steps": a.steps,
                     "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    pipe, results["build_s"], image = build_pipeline(a, dev, dtype, "80")
    log(f"built in {results['build_s']:.1f}s")
    what = a.what.split(",")
    if "tiers" in what:
        results["tiers"] = []
        arrays = {}
        for tier in a.tiers.split(","):
            r = run_tier(pipe, tier, a, image)
            if "latents" in r:
                arrays[tier] = (r.pop("latents"), r.pop("depth"))
            log(json.dumps(r))
            results["tiers"].append(r)
        # same noise and weights: tiers differ only by CFG batching (float reordering) and placement
        first = next(iter(arrays), None)
        results["tier_max_abs_diff"] = {
            f"{k}_vs_{first}": {"latents": float(np.abs(v[0] - arrays[first][0]).max()),
                                "depth": float(np.abs(v[1] - arrays[first][1]).max())}
            for k, v in arrays.items() if k != first}
        pipe.memory = get_memory_tier("80")
        pipe._place()
    if "step-cache" in what:
        results["step_cache"] = run_step_cache(pipe, a, image)
    if "step" in what:
        results["step"] = run_steps(pipe, a)
        log(json.dumps(results["step"]))
    text = json.dumps(results, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
