"""``fantasyworld data annotate``: time per clip at video size, and camera/depth accuracy.

Not a test. Two parts:

``--part video``: one **synthetic** clip standing in for a camera video (no real video can
be fetched on the measuring machine): an 81-frame 528x304 world with fine texture
(``render_clip(..., detail=0.6)``, an ``arc`` trajectory) encoded as H.264 by PyAV. It is
annotated with the full command twice, once with a tiny random Depth Anything (the
pipeline's own cost: decoding, SfM, alignment, point maps, writing) and once with a
random model of the Depth Anything V2 *Small* architecture (24.8M parameters: the CPU
cost of a real small depth model; random weights, so its depths mean nothing and the
residual bound is lifted for the timing). The output is validated and one tiny training
step is run on it.

``--part accuracy``: SfM accuracy of the default settings (unknown intrinsics) over
textured worlds at 160x160, 20 frames, every translating trajectory, ground-truth depth
plugged in: per-clip median rotation / translation-direction errors after the Sim(3) of
:func:`fantasyworld.eval.metrics.align_trajectory_sim3`, depth AbsRel after one global
scale.

Usage::

    python benchmarks/bench_annotate.py --work /tmp/bench_annotate --part video
    python benchmarks/bench_annotate.py --work /tmp/bench_annotate --part accuracy --clips 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from fantasyworld.cli import main
from fantasyworld.data.formats import read_video, write_video
from fantasyworld.data.synth import render_clip, synthesize_dataset
from fantasyworld.data.validate import validate_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_depth_anything(out: Path) -> Path:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    bb = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      patch_size=14, image_size=56, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                              fusion_hidden_size=16, head_hidden_size=8, reassemble_factors=[2, 1])
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 56, "width": 56}}))
    return out


def small_shaped_depth_anything(out: Path) -> Path:
    """Random weights in the Depth Anything V2 Small architecture (ViT-S/14 DINOv2 + DPT)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    bb = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                      patch_size=14, image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384],
                              fusion_hidden_size=64, head_hidden_size=32, reassemble_factors=[4, 2, 1, 0.5])
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(cfg)
    print(f"Depth Anything V2 Small-shaped model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params")
    model.save_pretrained(out)
    return out


def annotate_twice(work: Path, videos: Path, frames: int, true_fov: float | None = None) -> None:
    """Annotate every video of ``videos`` with the tiny and the Small-shaped random depth model,
    print one JSON line per run, validate, and train one tiny step on the first output."""
    runs = [("tiny", tiny_depth_anything(work / "tiny_da"), "10"),
            ("small-shaped", small_shaped_depth_anything(work / "small_da"), "1000")]
    for name, model, bound in runs:
        out = work / f"ann_{name}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        rc = main(["data", "annotate", "--videos", str(videos), "--out", str(out), "--frames", str(frames),
                   "--depth-model", str(model), "--max-depth-residual", bound, "--quiet"])
        wall = time.perf_counter() - t0
        problems, n = validate_dataset(out) if (out / "metadata.json").exists() else ([], 0)  # the whole output
        for entry in json.loads((out / "report.json").read_text())["clips"]:
            print(json.dumps({"run": name, "clip": entry["clip_id"], "rc": rc, "wall_s": round(wall, 1),
                              "status": entry["status"], "reason": entry.get("reason"),
                              "size": f"{entry.get('width')}x{entry.get('height')}",
                              "registered_fraction": entry.get("registered_fraction"),
                              "reprojection_error": entry.get("reprojection_error"), "fov_deg": entry.get("fov_deg"),
                              "true_fov_deg": true_fov, "seconds_total": entry.get("seconds_total"),
                              "seconds": {k: round(v, 1) for k, v in entry.get("seconds", {}).items()},
                              "validate_problems": len(problems), "validated_clips": n}))
    run = work / "train_step"
    shutil.rmtree(run, ignore_errors=True)
    rc = main(["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"output_dir={run}",
               f"data.root={work / 'ann_tiny'}", "data.num_frames=5", "data.height=32", "data.width=32", "steps=1",
               "checkpoint.every=1", "log.progress=false", "log.tensorboard=false"])
    print(f"one tiny training step on the annotated clip: rc {rc}, {sorted(p.name for p in run.glob('step-*'))}")


def part_video(work: Path) -> None:
    videos = work / "videos"
    shutil.rmtree(videos, ignore_errors=True)
    videos.mkdir(parents=True)
    t0 = time.perf_counter()
    clip = render_clip(11, 0, 81, 304, 528, trajectory="arc", detail=0.6)
    write_video(videos / "synthetic_528x304.mp4", clip.frames, fps=16)
    print(f"rendered + encoded 81x304x528 in {time.perf_counter() - t0:.1f} s")
    annotate_twice(work, videos, 81, true_fov=float(np.degrees(2 * np.arctan(264 / clip.K[0, 0]))))


def part_real(work: Path, video: Path, start: int, frames: int, crop: tuple[int, int], cut_start: int) -> None:
    """A real camera video: one shot ``[start, start + frames)`` centre-cropped to ``crop``
    (H, W) and re-encoded as H.264, plus an 81-frame stretch from ``cut_start`` that spans shot
    changes (SfM cannot register it as one camera path; the clip must be rejected with its
    reason, the other kept)."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        print(f"{video.name}: {stream.codec_context.name}, {stream.width}x{stream.height}, "
              f"{stream.frames} frames, {float(stream.average_rate or 0):g} fps")
    all_frames = read_video(video)
    h, w = crop
    top, left = (all_frames.shape[1] - h) // 2, (all_frames.shape[2] - w) // 2
    videos = work / "real_videos"
    shutil.rmtree(videos, ignore_errors=True)
    videos.mkdir(parents=True)
    write_video(videos / f"shot_{w}x{h}.mp4", all_frames[start:start + frames, top:top + h, left:left + w], fps=25)
    annotate_twice(work, videos, frames)
    across = work / "real_across_cuts"
    shutil.rmtree(across, ignore_errors=True)
    across.mkdir(parents=True)
    write_video(across / "across_cuts.mp4", all_frames[cut_start:cut_start + 81, top:top + h, left:left + w], fps=25)
    out = work / "ann_across_cuts"
    shutil.rmtree(out, ignore_errors=True)
    rc = main(["data", "annotate", "--videos", str(across), "--out", str(out), "--frames", "81",
               "--depth-model", str(work / "tiny_da"), "--quiet"])
    entry = json.loads((out / "report.json").read_text())["clips"][0]
    print(json.dumps({"run": "across-cuts", "rc": rc, "status": entry["status"], "reason": entry.get("reason")}))


GT_PLUGIN = "def gt_depth(frames, context):\n    return {'depth': context.gt.depth, 'metric': True}\n"


def part_accuracy(work: Path, clips: int) -> None:
    from fantasyworld.data.formats import load_metadata
    from fantasyworld.eval.metrics import aligned_pose_errors
    from fantasyworld.geometry.camera_io import read_seed_cameras

    data = work / "worlds"
    shutil.rmtree(data, ignore_errors=True)
    trajs = ("dolly", "orbit", "pan", "crane", "dolly_turn", "arc")
    synthesize_dataset(data, num_clips=clips, num_frames=20, height=160, width=160, seed=0, workers=2, detail=0.6,
                       trajectories=trajs)
    (work / "bench_annotate_plugin.py").write_text(GT_PLUGIN)
    sys.path.insert(0, str(work))
    out = work / "ann_accuracy"
    shutil.rmtree(out, ignore_errors=True)
    main(["data", "annotate", "--videos", str(data / "videos"), "--out", str(out), "--frames", "20",
          "--depth", "bench_annotate_plugin:gt_depth", "--gt-root", str(data), "--quiet"])
    report = {e["clip_id"]: e for e in json.loads((out / "report.json").read_text())["clips"]}
    ok = {r.clip_id: r for r in load_metadata(out)}
    true_fov = {r.clip_id: float(np.degrees(2 * np.arctan(80 / r.intrinsics[0]))) for r in load_metadata(data)}
    fov_out = work / "ann_accuracy_fov"
    shutil.rmtree(fov_out, ignore_errors=True)
    for cid in sorted(set(report) - set(ok)):  # rejected: again with the true field of view given
        main(["data", "annotate", "--videos", str(data / "videos" / f"{cid}.mp4"), "--out", str(fov_out),
              "--frames", "20", "--depth", "bench_annotate_plugin:gt_depth", "--gt-root", str(data),
              "--fov", f"{true_fov[cid]:.6f}", "--quiet"])
    if fov_out.exists():
        for entry in json.loads((fov_out / "report.json").read_text())["clips"]:
            if entry["status"] == "ok":
                report[entry["clip_id"]] = dict(entry, fov_given=True)
        ok.update({r.clip_id: r for r in load_metadata(fov_out)})
    print("| clip | trajectory | rotation (deg) | translation direction (deg) | depth AbsRel | FoV SfM / true | s |")
    print("|---|---|---|---|---|---|---|")
    for i in range(clips):
        cid = f"clip_{i:05d}"
        e = report[cid]
        if e.get("fov_given"):
            cid_label = f"{cid} (true FoV given)"
        else:
            cid_label = cid
        if cid not in ok:
            print(f"| {cid} | {trajs[i % len(trajs)]} | rejected: {e['reason_code']} ({e['reason']}) | | | "
                  f"- / {true_fov[cid]:.1f} | |")
            continue
        gt_w2c = read_seed_cameras(data / f"camera_params/{cid}.txt")
        err = aligned_pose_errors(read_seed_cameras(ok[cid].cameras), gt_w2c)
        gd, d = np.load(data / f"depth/{cid}.npy"), np.load(ok[cid].depth)
        both = (gd > 0) & (d > 0)
        s = np.median(gd[both] / d[both])
        absrel = float(np.mean(np.abs(s * d[both] - gd[both]) / gd[both]))
        print(f"| {cid_label} | {trajs[i % len(trajs)]} | {np.median(err['rot_err']):.2f} | "
              f"{np.median(err['trans_dir_err']):.2f} | {absrel:.4f} | {e['fov_deg']:.1f} / {true_fov[cid]:.1f} | "
              f"{e['seconds_total']:.1f} |")


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--part", choices=["video", "real", "accuracy"], required=True)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--video", type=Path, help="--part real: a camera video (H.264 or any PyAV reads)")
    parser.add_argument("--start", type=int, default=30, help="--part real: first frame of one shot")
    parser.add_argument("--frames", type=int, default=45, help="--part real: frames of that shot (4k+1)")
    parser.add_argument("--crop", default="264x616", help="--part real: centre crop HxW (even)")
    parser.add_argument("--cut-start", type=int, default=0, help="--part real: start of an 81-frame stretch "
                        "across shot changes")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    if args.part == "video":
        part_video(work)
    elif args.part == "real":
        if args.video is None:
            parser.error("--part real needs --video")
        crop = tuple(int(v) for v in args.crop.lower().split("x"))
        part_real(work, args.video, args.start, args.frames, crop, args.cut_start)
    else:
        part_accuracy(work, args.clips)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main_cli()
