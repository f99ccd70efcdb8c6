"""``fantasyworld data annotate``: raw videos -> the seed layout (cameras, depth, point maps).

Per clip (:func:`annotate_videos`):

1. sample ``frames`` frames at ``stride`` and bring them to ``size``
   (:mod:`~fantasyworld.data.annotate.video`);
2. cameras (``sfm`` by default, :mod:`~fantasyworld.data.annotate.sfm`); the clip is
   **rejected** (with its reason in the report, never silently kept) when no frame or
   less than ``min_registered`` of them are registered, when the first or last frame is
   not registered (unregistered frames are interpolated only *between* registered
   neighbours, never extrapolated), when the mean reprojection error exceeds
   ``max_reprojection`` pixels, or, when SfM estimated the focal length, when the camera
   turns by less than ``min_rotation_deg`` over the clip (a pure slide or dolly: the focal
   length is not observable) or the estimate gives a horizontal field of view outside
   ``fov_range``;
3. depth (``depth-anything`` by default), checked, aligned frame by frame to the SfM
   points (:mod:`~fantasyworld.data.annotate.alignment`); rejected when the median
   alignment residual exceeds ``align.max_residual``;
4. units: ground-truth cameras and depth together are passed through unchanged (points
   too); metric estimators (ground truth, Depth Pro with its field of view, metric Depth
   Anything, plug-ins returning ``metric``) put the clip in metres (the median per-frame
   scale); otherwise the clip is scaled so that the median depth of the SfM points is 1;
5. point maps from the aligned depth and the cameras, then the clip is committed
   atomically (:mod:`~fantasyworld.data.annotate.writer`) and gets its report entry.

Decoding and the cameras run in ``workers`` processes (structure from motion is CPU
work); depth runs in the main process, batched, on the GPU when there is one. A clip whose
video cannot be read, is too short, or whose estimator output is unusable is rejected
with its reason and the other clips go on.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fantasyworld.data.annotate import estimators as est
from fantasyworld.data.annotate.alignment import align_depth
from fantasyworld.data.annotate.gt import GroundTruthSource
from fantasyworld.data.annotate.pointmaps import world_points
from fantasyworld.data.annotate.report import depth_strip, summarize, trajectory_top_view, write_report
from fantasyworld.data.annotate.settings import REJECTIONS, AnnotateSettings, Rejected  # noqa: F401
from fantasyworld.data.annotate.sfm import SfmOptions, interpolate_unregistered, run_sfm
from fantasyworld.data.annotate.video import find_videos, load_prompts, prompt_for, sample_clip
from fantasyworld.data.annotate.writer import AnnotationStore, clip_files
from fantasyworld.data.formats import write_video
from fantasyworld.errors import FRAME_COUNT, DataError, EstimatorError
from fantasyworld.geometry.camera_io import write_seed_cameras
from fantasyworld.geometry.cameras import make_intrinsics, relative_to_first, rotation_angle_deg


def _gt_depth(frames: np.ndarray, context: est.ClipContext) -> est.DepthPrediction:
    return est.DepthPrediction(context.gt.depth.astype(np.float32), "depth", metric=True)


def _sparse_from_depth(depth: np.ndarray, per_frame: int = 400, seed: int = 0) -> list[np.ndarray]:
    """``(u, v, z)`` at ``per_frame`` random valid pixels of each frame (pixel centres)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in depth:
        rows, cols = np.nonzero(d > 0)
        if len(rows) > per_frame:
            pick = rng.choice(len(rows), per_frame, replace=False)
            rows, cols = rows[pick], cols[pick]
        out.append(np.stack([cols + 0.5, rows + 0.5, d[rows, cols]], axis=1).astype(np.float64))
    return out


def _gt_cameras(frames: np.ndarray, context: est.ClipContext) -> est.CameraEstimate:
    gt = context.gt
    t = len(frames)
    return est.CameraEstimate(np.array(gt.w2c, dtype=np.float64), np.ones(t, bool), np.array(gt.K),
                              _sparse_from_depth(gt.depth), details={"estimator": "gt"})


def _sfm_cameras(options: SfmOptions):
    def run(frames: np.ndarray, context: est.ClipContext) -> est.CameraEstimate:
        opts = SfmOptions(**{**asdict(options), "intrinsics": context.intrinsics})
        res = run_sfm(frames, opts, work_dir=context.work_dir)
        t = len(frames)
        return est.CameraEstimate(res.w2c, res.registered, np.broadcast_to(res.K, (t, 3, 3)).copy(), res.sparse,
                                  res.reprojection_error, res.frame_errors, len(res.points3d), res.message,
                                  details={"estimator": "sfm", "mapper": options.mapper,
                                           "num_features": res.num_features, "num_models": res.num_models,
                                           "attempts": res.attempts, "seconds": res.seconds,
                                           "intrinsics_fixed": context.intrinsics is not None
                                           and not options.refine_intrinsics})
    return run


def _camera_estimator(settings: AnnotateSettings, sfm_threads: int):
    if settings.cameras == "sfm":
        return _sfm_cameras(SfmOptions(mapper=settings.mapper, refine_intrinsics=settings.refine_intrinsics,
                                       num_threads=sfm_threads))
    if settings.cameras == "gt":
        return _gt_cameras
    return est.load_plugin(settings.cameras, "--cameras")


def _check_estimators(settings: AnnotateSettings, gt_root: Path | None) -> None:
    """Fail fast (before any clip) on estimators that cannot run."""
    for opt, spec, names in (("--depth", settings.depth, est.DEPTH_ESTIMATORS),
                             ("--cameras", settings.cameras, est.CAMERA_ESTIMATORS)):
        if spec == "gt" and gt_root is None:
            raise EstimatorError(f"{opt} gt: no ground-truth dataset; give --gt-root (a seed-layout dataset "
                                 f"holding these clips)")
        if spec not in names and ":" not in spec:
            raise EstimatorError(f"{opt} {spec!r}: unknown estimator (built in: {', '.join(names)}; "
                                 f"or module:function)")
        if ":" in spec:
            est.load_plugin(spec, opt)
    if settings.cameras == "sfm":
        try:
            import pycolmap  # noqa: F401
        except ImportError:
            raise EstimatorError("--cameras sfm needs pycolmap: pip install -e \".[annotate]\"") from None
    if settings.depth in ("depth-anything", "depth-pro"):
        from fantasyworld.data.annotate.depth import check_model_dir

        check_model_dir(settings.depth, settings.depth_model)


def _depth_estimator(settings: AnnotateSettings, device: str):
    if settings.depth in ("depth-anything", "depth-pro"):
        from fantasyworld.data.annotate.depth import TransformersDepth

        return TransformersDepth(settings.depth, settings.depth_model, device=device, batch_size=settings.batch_size)
    if settings.depth == "gt":
        return _gt_depth
    return est.load_plugin(settings.depth, "--depth")


# ----------------------------------------------------------------------------------------
# stage A: decode + cameras (worker processes)
_WORKER: dict[str, Any] = {}


def _worker_init(settings: AnnotateSettings, gt_root: str | None, sfm_threads: int, one_thread: bool) -> None:
    if one_thread:
        import torch

        torch.set_num_threads(1)
    _WORKER["settings"] = settings
    _WORKER["gt"] = GroundTruthSource(gt_root) if gt_root else None
    _WORKER["cameras"] = _camera_estimator(settings, sfm_threads)


def _prior_intrinsics(settings: AnnotateSettings, plan, gt_k: np.ndarray | None) -> np.ndarray | None:
    h, w = plan.src_hw
    if settings.intrinsics is not None:
        k = make_intrinsics(*settings.intrinsics)
    elif settings.fov_deg is not None:
        f = 0.5 * w / math.tan(math.radians(settings.fov_deg) / 2)
        k = make_intrinsics(f, f, w / 2.0, h / 2.0)
    elif settings.cameras == "gt" and gt_k is not None:
        return np.asarray(gt_k[0])
    else:
        return None
    return plan.intrinsics(k)


def _prepare(job: tuple[str, str, str]) -> dict[str, Any]:
    """Decode, sample and estimate the cameras of one clip (any process)."""
    clip_id, video, scratch = job
    settings: AnnotateSettings = _WORKER["settings"]
    out: dict[str, Any] = {"clip_id": clip_id, "seconds": {}}
    t0 = time.perf_counter()
    try:
        try:
            clip = sample_clip(Path(video), settings.num_frames, settings.stride, settings.size)
        except DataError as err:
            code = "too_few_frames" if err.kind == FRAME_COUNT else "unreadable_video"
            raise Rejected(code, err.message) from None
        out.update(frames=clip.frames, indices=clip.indices, fps=clip.fps, plan=clip.plan)
        out["seconds"]["decode"] = time.perf_counter() - t0
        gt = None
        if _WORKER["gt"] is not None:
            try:
                gt = _WORKER["gt"].clip(clip_id, Path(video), clip.indices, clip.plan)
            except DataError as err:
                if "gt" in (settings.depth, settings.cameras):
                    raise Rejected("ground_truth_missing", err.message) from None
        out["gt"] = gt
        context = est.ClipContext(clip_id, Path(video), clip.indices, clip.fps,
                                  _prior_intrinsics(settings, clip.plan, None if gt is None else gt.K),
                                  gt=gt, work_dir=Path(scratch))
        out["context"] = context
        t1 = time.perf_counter()
        t, h, w = clip.frames.shape[:3]
        try:
            cams = est.check_camera_output(_WORKER["cameras"](clip.frames, context), t, h, w)
        except est.EstimatorOutputError as err:
            raise Rejected("estimator_output", f"camera estimator {settings.cameras}: {err}") from None
        out["cameras"] = cams
        out["seconds"]["cameras"] = time.perf_counter() - t1
    except Rejected as rej:
        out["rejected"] = (rej.code, rej.reason)
    except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
        out["rejected"] = ("error", f"{type(exc).__name__}: {exc}")
        out["traceback"] = traceback.format_exc()
    return out


# ----------------------------------------------------------------------------------------
# stage B: checks, depth, alignment, writing (main process)
def _check_cameras(cams: est.CameraEstimate, settings: AnnotateSettings, width: int, fixed_k: bool) -> None:
    reg = cams.registered
    t = len(reg)
    if not reg.any():
        raise Rejected("sfm_failed", f"no frame registered ({cams.message or 'no reconstruction'})")
    frac = float(reg.mean())
    if frac < settings.min_registered:
        raise Rejected("too_few_registered", f"{int(reg.sum())}/{t} frames registered ({frac:.0%} < "
                                             f"{settings.min_registered:.0%})")
    if not reg[0] or not reg[-1]:
        idx = np.flatnonzero(reg)
        ends = [f"0-{idx[0] - 1}" if not reg[0] else "", f"{idx[-1] + 1}-{t - 1}" if not reg[-1] else ""]
        raise Rejected("unregistered_ends", f"frames {' and '.join(e for e in ends if e)} are not registered and "
                                            f"lie outside the registered span (never extrapolated)")
    if math.isfinite(cams.reprojection_error) and cams.reprojection_error > settings.max_reprojection:
        raise Rejected("reprojection_error", f"mean reprojection error {cams.reprojection_error:.2f} px > "
                                             f"{settings.max_reprojection:g}")
    if not fixed_k:
        turn = float(rotation_angle_deg(relative_to_first(cams.w2c[reg])[:, :3, :3]).max())
        if turn < settings.min_rotation_deg:
            raise Rejected("focal_length", f"the camera turns by {turn:.1f} deg at most (< "
                                           f"{settings.min_rotation_deg:g}): without rotation the focal length is "
                                           f"not observable; give --fov or --intrinsics")
        fov = math.degrees(2 * math.atan(0.5 * width / float(np.median(cams.K[:, 0, 0]))))
        lo, hi = settings.fov_range
        if not lo <= fov <= hi:
            raise Rejected("focal_length", f"estimated horizontal field of view {fov:.1f} deg is outside "
                                           f"[{lo:g}, {hi:g}]: the focal length was not observable (no rotation "
                                           f"in the clip?); give --fov or --intrinsics")


def _finish_clip(prep: dict[str, Any], settings: AnnotateSettings, depth_fn, prompt: str, video: Path,
                 device: str) -> tuple[dict, dict[str, Path]]:
    """Stage B of one clip; returns ``(report entry, files written to scratch)``."""
    clip_id = prep["clip_id"]
    frames, cams, context = prep["frames"], prep["cameras"], prep["context"]
    t, h, w = frames.shape[:3]
    fixed_k = context.intrinsics is not None and not settings.refine_intrinsics and settings.cameras == "sfm"
    _check_cameras(cams, settings, w, fixed_k or settings.cameras != "sfm")
    w2c, interpolated = interpolate_unregistered(cams.w2c, cams.registered)
    context.device = device
    t0 = time.perf_counter()
    try:
        pred = est.check_depth_output(depth_fn(frames, context), t, h, w)
    except est.EstimatorOutputError as err:
        raise Rejected("estimator_output", f"depth estimator {settings.depth}: {err}") from None
    t1 = time.perf_counter()
    try:
        aligned = align_depth(pred.values, pred.kind, cams.sparse, settings.align, pred.confidence)
    except ValueError as err:
        raise Rejected("depth_alignment", str(err)) from None
    if aligned.residual > settings.align.max_residual:
        raise Rejected("depth_alignment", f"median depth-alignment residual {aligned.residual:.3f} > "
                                          f"{settings.align.max_residual:g}")
    if not aligned.valid.any():
        raise Rejected("no_valid_depth", "no pixel has a valid depth after the alignment")
    scales = np.array([f.scale for f in aligned.fits if f.source == "frame" and np.isfinite(f.scale)])
    passthrough = settings.cameras == "gt" and settings.depth == "gt" and prep.get("gt") is not None
    if passthrough:
        world_scale, units = 1.0, "the ground truth's (pass-through)"
    elif pred.metric and pred.kind == "depth" and len(scales):
        world_scale, units = 1.0 / float(np.median(scales)), "metres (metric depth estimator)"
    else:
        z_all = np.concatenate([s[:, 2] for s in cams.sparse if len(s)])
        world_scale, units = 1.0 / float(np.median(z_all)), "median depth of the SfM points = 1"
    w2c = w2c.copy()
    w2c[:, :3, 3] *= world_scale
    depth = (aligned.depth * world_scale).astype(np.float32)
    if passthrough:  # the dataset's own points (nearest-sampled like the depth), not re-unprojected ones
        points = np.where((depth > 0)[..., None], prep["gt"].points, 0.0).astype(np.float32)
    else:
        points = world_points(depth, w2c, cams.K)
    t2 = time.perf_counter()

    scratch = context.work_dir
    written = {"video": scratch / "video.mp4", "depth": scratch / "depth.npy", "points": scratch / "points.npy",
               "cameras": scratch / "cameras.txt", "depth_png": scratch / "depth.png",
               "trajectory_png": scratch / "trajectory.png"}
    write_video(written["video"], frames, fps=prep["fps"])
    np.save(written["depth"], depth)
    np.save(written["points"], points)
    write_seed_cameras(written["cameras"], w2c)
    depth_strip(frames, depth).save(written["depth_png"])
    trajectory_top_view(w2c, cams.registered, interpolated).save(written["trajectory_png"])
    t3 = time.perf_counter()

    files = clip_files(clip_id)
    k = cams.K
    same_k = np.allclose(k, k[:1])
    intr = [float(k[0, 0, 0]), float(k[0, 1, 1]), float(k[0, 0, 2]), float(k[0, 1, 2])] if same_k else \
        [[float(r[0, 0]), float(r[1, 1]), float(r[0, 2]), float(r[1, 2])] for r in k]
    frame_scales = [f.scale for f in aligned.fits]
    spread = None
    if pred.kind == "depth" and len(scales) >= 2:
        spread = float(np.percentile(scales, 90) / np.percentile(scales, 10))
    seconds = {**prep["seconds"], "depth": t1 - t0, "align": t2 - t1, "write": t3 - t2}
    entry = {
        "clip_id": clip_id, "status": "ok", "video": str(video), "num_frames": t, "height": h, "width": w,
        "frame_indices": {"start": int(prep["indices"][0]), "stride": settings.stride},
        "camera_estimator": settings.cameras, "depth_estimator": settings.depth, "depth_kind": pred.kind,
        "registered_fraction": float(cams.registered.mean()),
        "registered": [int(i) for i in np.flatnonzero(cams.registered)],
        "interpolated": [int(i) for i in np.flatnonzero(interpolated)],
        "reprojection_error": _num(cams.reprojection_error),
        "fov_deg": math.degrees(2 * math.atan(0.5 * w / float(np.median(k[:, 0, 0])))),
        "num_points3d": cams.num_points3d,
        "depth_residual": _num(aligned.residual),
        "frame_residuals": [_num(f.residual) for f in aligned.fits],
        "frame_fit_sources": [f.source for f in aligned.fits],
        "scale": _num(float(np.median(scales))) if len(scales) else None,
        "frame_scales": [_num(s) for s in frame_scales],
        "scale_spread": spread,
        "masked_frames": aligned.masked_frames,
        "world_scale": world_scale, "units": units,
        "valid_fraction": float(aligned.valid.mean()),
        "camera_details": cams.details,
        "thumbnails": {"depth": files["depth_png"], "trajectory": files["trajectory_png"]},
        "seconds": seconds, "seconds_total": float(sum(seconds.values())),
    }
    record = {
        "clip_id": clip_id, "prompt": prompt, "fps": float(prep["fps"]), "video": files["video"],
        "depth": files["depth"], "points": files["points"], "cameras": files["cameras"], "camera_format": "seed",
        "intrinsics": intr, "height": h, "width": w, "num_frames": t,
        "source": {"video": str(video), "frame_indices": [int(i) for i in prep["indices"]]},
        "annotation": {"cameras": settings.cameras, "depth": settings.depth, "units": units,
                       "interpolated_frames": entry["interpolated"]},
    }
    entry["record"] = record
    return entry, written


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _summary_line(entry: dict) -> str:
    if entry["status"] != "ok":
        return f"{entry['clip_id']}: rejected [{entry['reason_code']}] {entry['reason']}"
    res = entry["depth_residual"]
    rep = entry["reprojection_error"]
    return (f"{entry['clip_id']}: ok, {len(entry['registered'])}/{entry['num_frames']} frames registered "
            f"({len(entry['interpolated'])} interpolated), reprojection "
            f"{'-' if rep is None else f'{rep:.2f}'} px, depth residual {'-' if res is None else f'{res:.3f}'}, "
            f"valid {entry['valid_fraction']:.0%}, {entry['seconds_total']:.1f} s")


def _settings_dict(settings: AnnotateSettings) -> dict[str, Any]:
    d = asdict(settings)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def annotate_videos(videos: str | Path, out: str | Path, settings: AnnotateSettings | None = None,
                    prompts: str | Path | None = None, progress: bool = True, log=print) -> dict[str, Any]:
    """Annotate every video of ``videos`` (a folder or a glob) into the seed layout at ``out``.

    Returns the report summary (counts, medians). Clips already committed in ``out`` are
    skipped (``settings.overwrite`` redoes them, ``settings.retry_rejected`` redoes the
    rejected ones).

    Raises:
        DataError: no video found, a malformed prompts file, duplicate clip ids.
        EstimatorError: an estimator that cannot run (before anything is written).
        OutputError: ``out`` cannot be written or holds another dataset.
    """
    settings = settings or AnnotateSettings()
    say = log or (lambda _msg: None)
    items = find_videos(videos)
    prompt_map = load_prompts(prompts)
    gt_root = Path(settings.gt_root) if settings.gt_root else None
    if gt_root is None and "gt" in (settings.depth, settings.cameras):
        gt_root = GroundTruthSource.default_root(videos)
    _check_estimators(settings, gt_root)
    if gt_root is not None:
        GroundTruthSource(gt_root)  # readable metadata, else DataError now
    store = AnnotationStore(out)
    import torch

    device = settings.device if settings.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    todo = []
    for clip_id, path in items:
        marker = None if settings.overwrite else store.marker(clip_id)
        if marker is not None and (marker.get("status") == "ok" or not settings.retry_rejected):
            continue
        todo.append((clip_id, path))
    workers = max(1, min(int(settings.workers), len(todo) or 1))
    sfm_threads = settings.sfm_threads or max(1, (os.cpu_count() or 1) // workers)
    jobs = [(cid, str(p), str(store.scratch(cid))) for cid, p in todo]
    paths = dict(items)
    say(f"annotate: {len(items)} video(s), {len(items) - len(todo)} already done, {len(todo)} to do; "
        f"{settings.num_frames} frames at stride {settings.stride}, cameras {settings.cameras}, depth "
        f"{settings.depth} on {device}, {workers} worker(s)")
    pool = None
    init_args = (settings, str(gt_root) if gt_root else None, sfm_threads, workers > 1)
    if workers > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, initializer=_worker_init, initargs=init_args)
        results = pool.imap(_prepare, jobs)
    else:
        _worker_init(*init_args)
        results = map(_prepare, jobs)
    bar = None
    try:
        depth_fn = _depth_estimator(settings, device) if todo else None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="annotate", unit="clip")
            say = bar.write if log is print else say
        for prep in results:
            clip_id = prep["clip_id"]
            video = paths[clip_id]
            prompt = prompt_for(prompt_map, clip_id, video)
            written: dict[str, Path] = {}
            try:
                if "rejected" in prep:
                    raise Rejected(*prep["rejected"])
                entry, written = _finish_clip(prep, settings, depth_fn, prompt or "", video, device)
                entry["prompt_given"] = prompt is not None
            except Rejected as rej:
                entry = {"clip_id": clip_id, "status": "rejected", "reason_code": rej.code, "reason": rej.reason,
                         "video": str(video), "num_frames": settings.num_frames, "seconds": prep.get("seconds", {}),
                         "seconds_total": float(sum(prep.get("seconds", {}).values()))}
                if "traceback" in prep:
                    entry["traceback"] = prep["traceback"]
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                entry = {"clip_id": clip_id, "status": "rejected", "reason_code": "error",
                         "reason": f"{type(exc).__name__}: {exc}", "video": str(video),
                         "num_frames": settings.num_frames, "traceback": traceback.format_exc(),
                         "seconds": prep.get("seconds", {}), "seconds_total": 0.0}
            record = entry.pop("record", None)
            marker = {"clip_id": clip_id, "status": entry["status"], "record": record, "report": entry,
                      "settings": _settings_dict(settings)}
            store.commit(clip_id, written if entry["status"] == "ok" else {}, marker)
            if entry["status"] == "ok":
                store.write_metadata()
            say(_summary_line(entry))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        for cid, _, _ in jobs:  # scratch of clips never reached (an error stopped the run)
            if store.marker(cid) is None:
                shutil.rmtree(store.scratch_root / cid, ignore_errors=True)
        store.finish()
    count = store.write_metadata()
    entries = [m["report"] for m in store.markers_all()]  # the whole dataset, earlier runs included
    _, html_path = write_report(store.root, entries, _settings_dict(settings))
    summary = summarize(entries)
    say(f"annotate: {summary['ok']} clip(s) in {store.root / 'metadata.json' if count else '(no metadata.json)'}, "
        f"{summary['rejected']} rejected; report {html_path}")
    return summary
