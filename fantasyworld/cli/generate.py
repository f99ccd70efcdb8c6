"""``fantasyworld generate``: video + depth + points + cameras from a trained checkpoint.

Example::

    fantasyworld generate --checkpoint outputs/fantasy_world_stage2 --backbone Wan2.1-T2V-1.3B-Diffusers \\
        --vae Wan2.1-T2V-1.3B-Diffusers/vae --text-encoder Wan2.1-T2V-1.3B-Diffusers/text_encoder \\
        --prompt "a sunlit courtyard" --camera orbit --frames 81 --size 336x592 --out out/courtyard

Exit codes: 0 success, 2 bad input (unknown camera path, unreadable or mismatched camera
file, bad checkpoint, bad size), with a one-line ``error: ...`` naming the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fantasyworld.inference.memory_tiers import DEFAULT_MEMORY_TIER, FP8_SCOPES, MEMORY_TIERS


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 336x592, got {text!r}") from None
    return h, w


def _import_callable(spec: str):
    """``"package.module:function"`` -> the callable."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--depth-estimator {spec}: expected MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--depth-estimator {spec}: cannot import ({exc})") from exc
    if not callable(fn):
        raise ValueError(f"--depth-estimator {spec}: not callable")
    return fn


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``generate`` sub-command (imports nothing heavy: ``--help`` stays fast)."""
    p = sub.add_parser("generate", help="generate a video with depth, points and cameras (see docs/inference.md)")
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="stage-2 step-N.safetensors or its directory (newest step); a directory "
                                        "with high/ and low/ runs the two-expert Wan2.2 variant")
    g.add_argument("--backbone", default=None,
                   help="Wan2.1 transformer directory (Wan2.2: the Wan2.2-Fun-A14B-Control-Camera directory); "
                        "'random' for the tiny presets' seeded backbone")
    g.add_argument("--high-lora", default=None, help="Wan2.2: the high-noise expert's reward LoRA (safetensors)")
    g.add_argument("--low-lora", default=None, help="Wan2.2: the low-noise expert's reward LoRA (safetensors)")
    g.add_argument("--vae", default=None, help="AutoencoderKLWan directory ('tiny' for the tiny random VAE)")
    g.add_argument("--text-encoder", default=None, help="UMT5 encoder directory ('tiny' for the tiny one)")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: beside the text encoder)")
    g.add_argument("--image-encoder", default=None, help="CLIP vision directory (I2V presets; 'tiny')")
    g.add_argument("--preset", default=None, help="preset if the checkpoint has no config.json")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="transformer precision (default: bfloat16 on GPU, float32 on CPU)")
    g = p.add_argument_group("conditioning")
    g.add_argument("--prompt", default="")
    g.add_argument("--negative-prompt", default=None, help="default: Wan's negative prompt")
    g.add_argument("--text-emb", default=None, help="cached prompt embeddings: safetensors with 'text_emb'")
    g.add_argument("--negative-text-emb", default=None, help="cached negative-prompt embeddings")
    g.add_argument("--image", default=None, help="first frame for I2V presets")
    g.add_argument("--last-image", default=None, help="Wan2.2: optional last frame")
    g.add_argument("--camera", default="orbit",
                   help="named path (--list-cameras lists them; 'NAME:MAGNITUDE' allowed) or a camera file "
                        "(seed rows, RealEstate10K txt, official JSON, COLMAP text dir, TUM)")
    g.add_argument("--camera-magnitude", type=float, default=None,
                   help="named path magnitude: distance, degrees or zoom factor")
    g.add_argument("--camera-format", default="auto", choices=["auto", "seed", "re10k", "official_json", "colmap",
                                                               "tum"])
    g.add_argument("--fov", type=float, default=60.0, help="horizontal FoV (deg) when the camera has no intrinsics")
    g.add_argument("--resample-camera", action="store_true", help="resample a file of another length to --frames")
    g.add_argument("--translation-scale", type=float, default=None,
                   help="our checkpoints: multiply the requested translations (default 1); official_compat "
                        "checkpoints: the official scene scale the translations are DIVIDED by")
    g.add_argument("--scale-depth", default=None,
                   help="official_compat only: first-frame depth map (.npy, or .npz with 'depth') the official "
                        "translation scale is computed from (as the official does with MoGe-2)")
    g.add_argument("--depth-estimator", default=None, metavar="MODULE:FUNCTION",
                   help="official_compat only: importable callable, RGB uint8 (H, W, 3) -> depth (H, W), run on "
                        "--image to get the official translation scale")
    g.add_argument("--list-cameras", action="store_true", help="print the named camera paths and exit")
    g = p.add_argument_group("sampling")
    g.add_argument("--frames", type=int, default=None,
                   help="4k+1 frames (default: the clips the checkpoint was trained on, from its run's "
                        "train_config.yaml; else 81)")
    g.add_argument("--size", type=_size, default=None,
                   help="HxW, multiples of 16 (default: the training clips' size, from the run's "
                        "train_config.yaml; else 336x592, or 480x832 for the two-expert Wan2.2 variant)")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--cfg", type=float, default=5.0, help="guidance scale (1 disables CFG)")
    g.add_argument("--shift", type=float, default=5.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--geometry", default="auto", choices=["auto", "final", "last-step", "none"],
                   help="final: heads on the denoised latent (extra forward); last-step: heads in the last step; "
                        "auto: last-step for official_compat checkpoints (as the official), final otherwise")
    g.add_argument("--schedule", default="auto", choices=["auto", "project", "official"],
                   help="sigma grid: project (diffusers' flow-matching Euler), official (the released sampler's "
                        "grid and bf16-rounded timesteps); auto: official for official_compat checkpoints")
    g.add_argument("--no-cfg-batch", action="store_true",
                   help="run the CFG passes as two forwards (default: the memory tier's choice)")
    g.add_argument("--step-cache", type=float, default=None, metavar="THRESH",
                   help="first-block step caching: reuse the last computed step's video residual while the first "
                        "Wan block's output moved less than THRESH (relative L1); default off (see "
                        "docs/inference.md#step-caching)")
    g.add_argument("--step-cache-first", type=int, default=2, help="step caching: first steps always in full")
    g.add_argument("--step-cache-last", type=int, default=2, help="step caching: last steps always in full")
    g.add_argument("--step-cache-blocks", type=int, default=1, help="step caching: Wan blocks the probe runs")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer layer (first step pays the compile time)")
    g.add_argument("--fp8", nargs="?", const="wan", default=None, choices=list(FP8_SCOPES), metavar="SCOPE",
                   help="float8 weights for linear layers (FP8 GPUs; see docs/benchmarks.md): 'wan' (the default "
                        "with a bare --fp8) the frozen Wan blocks', 'all' also the geometry blocks' and the "
                        "cross-attention's")
    g.add_argument("--attention", default="sdpa", metavar="BACKEND",
                   help="attention kernel (fantasyworld.layers.attention's registry): sdpa (default, torch's "
                        "fused kernels), fa3 (FlashAttention-3, bf16) or fa3_fp8 (FlashAttention-3 on float8 "
                        "inputs); the FA3 ones need a Hopper GPU and a FlashAttention-3 build "
                        "(docs/inference.md#attention-kernels)")
    g.add_argument("--memory", default=DEFAULT_MEMORY_TIER, choices=list(MEMORY_TIERS),
                   help="memory tier, the card's GiB: " + "; ".join(f"{k}: {t.description}"
                                                                  for k, t in MEMORY_TIERS.items()))
    g.add_argument("--vae-tiling", default="auto", choices=["auto", "on", "off"])
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=None, help="output folder (refused if it holds files, unless --overwrite)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the results in a non-empty --out (as a whole: no earlier file stays)")
    g.add_argument("--cloud-source", default="depth", choices=["depth", "points"])
    g.add_argument("--conf-percentile", type=float, default=50.0, help="drop points below this confidence percentile")
    g.add_argument("--max-points", type=int, default=200_000)
    g.add_argument("--fps", type=float, default=16.0)
    g.add_argument("--no-colmap", action="store_true")
    g.add_argument("--export", default="glb", choices=["glb", "none"],
                   help="glb (default): also write scene.glb, the fused cloud and camera frustums for Blender and "
                        "web viewers; none: skip it")
    g.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """:func:`_run` with SIGTERM / SIGINT raising ``Interrupted`` (exit 143 / 130): the staged
    output folder is removed and an earlier result stays as it was."""
    from fantasyworld.errors import interrupt_on_signals

    with interrupt_on_signals("generate"):
        return _run(args)


def _clip_shape(args: argparse.Namespace, two_expert: bool) -> tuple[int, tuple[int, int]]:
    """``(frames, (height, width))``: ``--frames`` / ``--size``, else the shape of the clips the
    checkpoint was trained on (its run's ``train_config.yaml``; a two-expert directory: the
    low-noise expert's), else 81 frames at the preset family's size. A tiny model trained on
    9x32x32 clips would otherwise be sampled at 81x336x592, for minutes on a CPU."""
    from fantasyworld.models.weights import resolve_checkpoint, training_clip_shape

    root = Path(args.checkpoint) / "low" if two_expert else Path(args.checkpoint)
    run_t = run_h = run_w = None
    if args.frames is None or args.size is None:
        weights, _, _ = resolve_checkpoint(root, args.preset)
        run_t, run_h, run_w = training_clip_shape(weights.parent)
    frames = args.frames or run_t or 81
    if args.size is not None:
        size = args.size
    elif run_h and run_w:
        size = (run_h, run_w)
    else:
        size = (480, 832) if two_expert else (336, 592)
    if not args.quiet and (args.frames is None or args.size is None):
        source = "the checkpoint's training config" if run_t or run_h else "the default"
        print(f"sampling {frames}x{size[0]}x{size[1]} (frames x height x width, from {source}; "
              "--frames / --size to change)")
    return frames, size


def _run(args: argparse.Namespace) -> int:
    """Load, generate, save; print the output folder and the timings."""
    from fantasyworld.inference.trajectories import NAMED_PATHS

    if args.list_cameras:
        for name, (_, _, default) in NAMED_PATHS.items():
            print(f"{name:14s} default magnitude {default:g}")
        return 0
    if not args.checkpoint or not args.out:
        print("error: --checkpoint and --out are required", file=sys.stderr)
        return 2
    from fantasyworld.errors import OutputError, check_output_dir, staged_output_dir

    try:
        check_output_dir(args.out, "--out", overwrite=args.overwrite)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from fantasyworld.errors import CheckpointError, DataError
    from fantasyworld.inference.pipeline import FantasyWorldPipeline
    from fantasyworld.inference.trajectories import TrajectoryError

    depth_estimator = None
    if args.depth_estimator:
        try:
            depth_estimator = _import_callable(args.depth_estimator)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from fantasyworld.errors import ConfigError
    from fantasyworld.inference.two_expert_pipeline import TwoExpertPipeline, is_two_expert_checkpoint
    from fantasyworld.layers.attention import set_attention_backend

    try:
        set_attention_backend(args.attention)
    except ConfigError as exc:
        print(f"error: --attention: {exc}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    two = is_two_expert_checkpoint(args.checkpoint)
    if not two and (args.last_image or args.high_lora or args.low_lora):
        print(f"error: --last-image/--high-lora/--low-lora need a two-expert checkpoint (high/ and low/ in "
              f"{args.checkpoint})", file=sys.stderr)
        return 2
    try:
        frames, (h, w) = _clip_shape(args, two)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = {"last_image": args.last_image} if two else {}
    start = time.perf_counter()
    try:
        if two:
            pipe = TwoExpertPipeline.from_pretrained(
                args.checkpoint, backbone=args.backbone, vae=args.vae, text_encoder=args.text_encoder,
                tokenizer=args.tokenizer, device=device, dtype=dtype, high_lora=args.high_lora,
                low_lora=args.low_lora)
        else:
            pipe = FantasyWorldPipeline.from_pretrained(
                args.checkpoint, backbone=args.backbone, vae=args.vae, text_encoder=args.text_encoder,
                tokenizer=args.tokenizer, image_encoder=args.image_encoder, device=device, dtype=dtype,
                preset=args.preset, memory=args.memory)
            if args.fp8:
                pipe.quantize_fp8(args.fp8)
            if args.compile:
                pipe.compile()
        load_s = time.perf_counter() - start
        result = pipe(
            args.prompt, args.negative_prompt, image=args.image, camera=args.camera, num_frames=frames,
            height=h, width=w, num_steps=args.steps, guidance_scale=args.cfg, shift=args.shift, seed=args.seed,
            camera_magnitude=args.camera_magnitude, camera_format=args.camera_format, fov_deg=args.fov,
            resample_camera=args.resample_camera, translation_scale=args.translation_scale,
            scale_depth=args.scale_depth, depth_estimator=depth_estimator,
            prompt_embeds=args.text_emb, negative_prompt_embeds=args.negative_text_emb, geometry=args.geometry,
            schedule=args.schedule, cfg_batch=False if args.no_cfg_batch else None,
            vae_tiling={"auto": "auto", "on": True, "off": False}[args.vae_tiling],
            cloud_source=args.cloud_source, conf_percentile=args.conf_percentile, max_points=args.max_points,
            fps=args.fps, progress=not args.quiet, step_cache=args.step_cache,
            step_cache_first_steps=args.step_cache_first, step_cache_last_steps=args.step_cache_last,
            step_cache_probe_blocks=args.step_cache_blocks, **extra)
        result.timings["load"] = load_s
        out = Path(args.out)
        with staged_output_dir(out) as tmp:  # swapped in whole: an overwrite leaves no stale file
            paths = {k: out / v.relative_to(tmp)
                     for k, v in result.save(tmp, colmap=not args.no_colmap, glb=args.export == "glb").items()}
    except (TrajectoryError, CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.out}: cannot write the outputs ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {len(paths)} outputs to {args.out} (open {paths['report.html']})")
        print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
        if "step_cache" in result.settings:
            sc = result.settings["step_cache"]
            print(f"step cache: skipped {sc['skipped']} of {sc['skipped'] + sc['computed']} steps "
                  f"(threshold {sc['threshold']:g})")
        if "peak_memory_gib" in result.settings:
            print("peak GPU memory: " + ", ".join(f"{k} {v:.1f} GiB"
                                                 for k, v in result.settings["peak_memory_gib"].items()))
    return 0
