"""``fantasyworld data {synth,validate,cache,annotate}``: make, check, pre-encode and annotate datasets."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fantasyworld.data.buckets import Bucket


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x128, got {text!r}") from None
    return h, w


def _synth(args: argparse.Namespace) -> int:
    from fantasyworld.data.synth import synthesize_dataset

    h, w = args.size
    start = time.time()
    trajectories = [t.strip() for t in args.trajectories.split(",") if t.strip()] if args.trajectories else None
    from fantasyworld.data.formats import METADATA_NAME, load_metadata

    before = len(load_metadata(args.out)) if args.append and (Path(args.out) / METADATA_NAME).is_file() else 0
    try:
        synthesize_dataset(args.out, num_clips=args.clips, num_frames=args.frames, height=h, width=w,
                           seed=args.seed, workers=args.workers, per_frame=args.per_frame, fps=args.fps,
                           progress=not args.quiet, detail=args.detail, trajectories=trajectories,
                           trajectory_frames=args.trajectory_frames, append=args.append,
                           time_limit_s=args.max_seconds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(load_metadata(args.out)) - before
    print(f"wrote {n} clips x {args.frames} frames at {h}x{w} to {args.out} in {time.time() - start:.1f} s"
          + (f" (stopped by --max-seconds {args.max_seconds:g} before {args.clips})" if n < args.clips else ""))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fantasyworld.data.validate import format_report, validate_dataset

    problems, n = validate_dataset(args.root, decode_video=not args.no_decode, check_values=not args.no_values,
                                   progress=args.progress)
    print(format_report(problems, n))
    return 1 if problems else 0


def _cache(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from fantasyworld.data.cache import build_cache
    from fantasyworld.errors import CheckpointError, ConfigError, DataError

    h, w = args.size if args.size else (None, None)
    try:
        buckets = _cache_buckets(args)
        out = build_cache(args.data, args.out, args.vae, args.text_encoder, tokenizer_dir=args.tokenizer,
                          image_encoder_dir=args.image_encoder, num_frames=args.frames, height=h, width=w,
                          stride=args.stride, device=args.device, dtype=args.dtype, latent_dtype=args.latent_dtype,
                          geometry_dtype=args.geometry_dtype, overwrite=args.overwrite, progress=not args.quiet,
                          buckets=buckets, unfit=args.unfit, max_crop=args.max_crop,
                          workers=args.workers, batch_size=args.batch)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(err, file=sys.stderr)
        return 1
    if buckets:
        import json

        index = json.loads((out / "index.json").read_text())
        for u in index["unfit"]:
            print(f"skipped {u['clip_id']}: {u['message']} [{u['reason']}]")
        counts = {tuple(b): 0 for b in index["buckets"]}
        for e in index["clips"]:
            counts[tuple(e["bucket"])] += 1
        print("buckets: " + ", ".join(f"{f}x{bh}x{bw}: {n}" for (f, bh, bw), n in counts.items()))
    print(f"cache written to {args.out}")
    return 0


def _cache_buckets(args: argparse.Namespace) -> tuple[Bucket, ...] | None:
    """The bucket set of ``data cache`` (``--buckets`` or ``--aspect-ratios``), or None."""
    from fantasyworld.data.buckets import resolve_buckets
    from fantasyworld.errors import ConfigError

    if args.buckets is None and args.aspect_ratios is None:
        return None
    sizes = [b for b in args.buckets.split(",") if b.strip()] if args.buckets is not None else None
    ratios = area = frames = None
    if args.aspect_ratios is not None:
        if args.size is None:
            raise ConfigError("--aspect-ratios needs --size HxW: the generated buckets have about H x W pixels")
        try:
            ratios = [float(r) for r in args.aspect_ratios.split(",")]
            frames = [int(f) for f in args.bucket_frames.split(",")] if args.bucket_frames else [args.frames]
        except ValueError:
            raise ConfigError("--aspect-ratios and --bucket-frames are comma-separated numbers, got "
                              f"{args.aspect_ratios!r} and {args.bucket_frames!r}") from None
        area = args.size[0] * args.size[1]
    names = {"sizes": "--buckets", "aspect_ratios": "--aspect-ratios", "area": "--size", "frames": "--bucket-frames"}
    return resolve_buckets(sizes, ratios, area, frames, key=names)


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"expected fx,fy,cx,cy, got {text!r}")
    return vals


def _annotate(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from fantasyworld.data.annotate import AlignSettings, AnnotateSettings, annotate_videos
    from fantasyworld.errors import FantasyWorldError

    try:
        settings = AnnotateSettings(
            num_frames=args.frames, stride=args.stride, size=args.size, depth=args.depth,
            depth_model=args.depth_model, cameras=args.cameras, gt_root=args.gt_root, intrinsics=args.intrinsics,
            fov_deg=args.fov, refine_intrinsics=args.refine_intrinsics, mapper=args.mapper,
            min_registered=args.min_registered, max_reprojection=args.max_reprojection,
            align=AlignSettings(max_residual=args.max_depth_residual), workers=args.workers,
            sfm_threads=args.sfm_threads, device=args.device, batch_size=args.batch_size,
            overwrite=args.overwrite, retry_rejected=args.retry_rejected)
        summary = annotate_videos(args.videos, args.out, settings, prompts=args.prompts, progress=not args.quiet)
    except (FantasyWorldError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["rejected"] == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data`` with sub-commands ``synth``, ``validate``, ``cache`` and ``annotate``."""
    from fantasyworld.data.buckets import UNFIT_POLICIES  # light: no torch

    parser = sub.add_parser("data", help="make, validate and cache datasets (see docs/data.md)")
    cmds = parser.add_subparsers(dest="data_command", required=True)

    p = cmds.add_parser("synth", help="render procedural 3D worlds with exact depth, points and cameras")
    p.add_argument("--out", required=True, help="output dataset root (seed layout)")
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--size", type=_size, default=(128, 128), help="HxW, both even (default 128x128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--per-frame", action="store_true", help="depth/points as per-frame .npy files")
    p.add_argument("--detail", type=float, default=0.0,
                   help="high-frequency texture on every surface, e.g. 0.6 for structure from motion "
                        "(default 0: the plain look)")
    p.add_argument("--trajectories", default=None,
                   help="comma list; clip i follows the (i mod n)-th (default: a seeded choice per clip)")
    p.add_argument("--trajectory-frames", type=int, default=None,
                   help="each clip is a --frames window (seeded start) of a camera path this long, "
                        "as a short clip cut from a longer video (default: the path spans the clip)")
    p.add_argument("--append", action="store_true",
                   help="add the clips after those already in --out (e.g. a second --size into one dataset)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this many seconds, keeping the clips finished by then (0 .. k-1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_synth)

    p = cmds.add_parser("validate", help="check every clip; one line per problem, exit 1 on problems")
    p.add_argument("root", help="dataset root holding metadata.json")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every video frame")
    p.add_argument("--no-values", action="store_true", help="skip the NaN/inf scan of depth and points")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=_validate)

    p = cmds.add_parser("cache", help="encode clips once with the Wan VAE and UMT5 (and CLIP for I2V)")
    p.add_argument("--data", required=True, help="dataset root (seed layout)")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--vae", required=True,
                   help="local AutoencoderKLWan directory ('tiny': the tiny presets' seeded tiny VAE)")
    p.add_argument("--text-encoder", required=True,
                   help="local UMT5EncoderModel directory ('tiny': the tiny presets' seeded one)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: ../tokenizer or the encoder's)")
    p.add_argument("--image-encoder", default=None,
                   help="local CLIPVisionModel directory (I2V presets; 'tiny' for tiny-i2v)")
    p.add_argument("--frames", type=int, default=81, help="4k+1 frames per clip")
    p.add_argument("--size", type=_size, default=None, help="HxW (default: stored size)")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="encoder compute dtype")
    p.add_argument("--latent-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--geometry-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--workers", type=int, default=0, help="processes decoding and reading clips (default 0: this one)")
    p.add_argument("--batch", type=int, default=1, help="clips per encoder call (default 1)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--buckets", default=None,
                   help="store each clip at its bucket's shape: comma list of FxHxW, e.g. 81x336x592,81x592x336 "
                        "(docs/data.md#buckets)")
    p.add_argument("--aspect-ratios", default=None,
                   help="generate the buckets instead: comma list of width/height ratios, each at about the "
                        "pixel area of --size")
    p.add_argument("--bucket-frames", default=None, help="frame counts of generated buckets (default: --frames)")
    p.add_argument("--unfit", default="error", choices=list(UNFIT_POLICIES),
                   help="clips that fit no bucket: refuse the dataset (default) or leave them out")
    p.add_argument("--max-crop", type=float, default=None,
                   help="a clip fits no bucket if its aspect crop would cut more than this share of its area")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cache)

    p = cmds.add_parser("annotate", help="turn raw videos into the seed layout: SfM cameras (pycolmap), "
                                         "monocular depth aligned to them, point maps, a quality report")
    p.add_argument("--videos", required=True, help="a folder of videos or a glob ('raw/**/*.mp4')")
    p.add_argument("--out", required=True, help="output dataset root (seed layout + report.html)")
    p.add_argument("--prompts", default=None, help="JSON {name: prompt} or 'name<TAB>prompt' lines")
    p.add_argument("--frames", type=int, default=81, help="frames per clip (default 81)")
    p.add_argument("--stride", type=int, default=1, help="take every S-th frame")
    p.add_argument("--size", type=_size, default=None,
                   help="output HxW, even (scale to cover + centre crop; default: the stored size)")
    p.add_argument("--depth", default="depth-anything",
                   help="depth-anything (default), depth-pro, gt, or module:function")
    p.add_argument("--depth-model", default=None, help="local transformers folder of the depth model")
    p.add_argument("--cameras", default="sfm", help="sfm (default, pycolmap), gt, or module:function")
    p.add_argument("--gt-root", default=None, help="seed-layout dataset for the gt estimators "
                                                   "(default: the folder above the videos folder)")
    p.add_argument("--fov", type=float, default=None, help="known horizontal field of view (degrees)")
    p.add_argument("--intrinsics", type=_floats, default=None,
                   help="known fx,fy,cx,cy in pixels of the stored video")
    p.add_argument("--refine-intrinsics", action="store_true", help="let bundle adjustment refine a given focal")
    p.add_argument("--mapper", default="incremental", choices=["incremental", "global"])
    p.add_argument("--min-registered", type=float, default=0.8, help="reject a clip below this registered share")
    p.add_argument("--max-reprojection", type=float, default=2.0, help="reject above this mean error (pixels)")
    p.add_argument("--max-depth-residual", type=float, default=0.25,
                   help="reject above this median relative depth-alignment residual")
    p.add_argument("--workers", type=int, default=1, help="processes for decoding + SfM")
    p.add_argument("--sfm-threads", type=int, default=None, help="threads per SfM (default: cores / workers)")
    p.add_argument("--device", default="auto", help="depth model device (auto: cuda when present)")
    p.add_argument("--batch-size", type=int, default=8, help="depth model batch")
    p.add_argument("--overwrite", action="store_true", help="redo clips already annotated")
    p.add_argument("--retry-rejected", action="store_true", help="redo clips rejected by an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_annotate)
