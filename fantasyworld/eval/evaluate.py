"""``fantasyworld evaluate``: geometry of a trained checkpoint on held-out clips, against
ground truth and trivial baselines.

Two ways of getting geometry out of the model, per clip (letters: T pixel frames, H x W):

``latents`` (reconstruction)
    The clip is encoded with the VAE (normalised latent ``x0``), noised to
    ``x = (1 - sigma) x0 + sigma eps`` with seeded ``eps`` and one forward with every head
    runs at ``timestep = 1000 sigma`` with the clip's prompt. By default no camera
    conditioning is given (``camera_conditioning="none"``: the cameras must be read from the
    video); ``"gt"`` feeds the clip's own cameras as Plücker rays (stage-2 checkpoints).
``generation``
    Stage-2 checkpoints only: the inference pipeline generates a clip from the prompt along
    the clip's own cameras (relative to frame 0, metric translations as in training, the
    clip's intrinsics) and its geometry (heads on the final latent) is scored. Cameras are
    compared with the requested ones; depth and points are compared with the clip's ground
    truth although the generated world is only the prompt's and the cameras' version of it,
    so those two numbers measure layout agreement, not reconstruction.

Two-expert (Wan2.2 variant) directories are evaluated too: the latents mode reads the
low-noise expert (a sigma on the high-noise side is refused), generation runs both experts
(:mod:`fantasyworld.eval.checkpoints`).

Scores (:func:`score_clip`, per clip, then means over clips; see
:mod:`fantasyworld.eval.metrics` for the definitions and alignments):

* depth: ``abs_rel_median``, ``delta_1_25_median`` (median-ratio scale per clip),
  ``abs_rel_scale_shift``, ``delta_1_25_scale_shift`` (least-squares scale and shift);
* cameras: ``rot_err`` and ``trans_err`` (mean over all frame pairs of VGGT's relative
  rotation / translation-direction angle error, degrees), ``rra@15``, ``rta@15``, ``auc@30``,
  ``ate`` (Sim(3)-aligned RMSE, ground-truth units), ``rpe_trans``, ``rpe_rot``;
* points: ``accuracy``, ``completeness``, ``chamfer`` after Umeyama Sim(3) alignment
  (ground-truth units);
* with ``reestimate_cameras`` (``generation`` mode): structure from motion on each
  generated video, its cameras scored against the requested ones as camera-control papers
  do (``RotErr``, ``TransErr``, ``CamMC``, the SfM failure rate), next to the same sums for
  the model's own predicted cameras (:mod:`fantasyworld.eval.camera_accuracy`).

Every mode is scored for the model and for the trivial baselines of
:mod:`fantasyworld.eval.baselines` (constant depth, identity poses, one plane), and the
depth of the token-resolution oracle there (``token_depth``, ground truth averaged over the
geometry tokens' pixel cells: the ceiling of the depth ratio) as a third method, ``oracle``,
outside the acceptance check. That check compares, in the ``latents`` mode,
``abs_rel_median`` with the constant depth and ``rot_err`` with the identity poses: the
model passes a bar when the baseline's mean is at least :data:`ACCEPTANCE_FACTOR` times the
model's.

Outputs in ``out_dir``: ``metrics.json`` (layout in docs/evaluation.md), the report
(:mod:`fantasyworld.eval.report`) and, with it, the sample clips' scenes for the viewer
(``scenes/<clip>.npz``, :mod:`fantasyworld.eval.scenes`). They are written into a temporary
sibling and swapped in at the end (:func:`fantasyworld.errors.staged_output_dir`): a failed
run leaves ``out_dir`` as it was, a repeated one leaves no file of the earlier run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasyworld.data.loader import RawClipDataset
from fantasyworld.data.split import HELD_OUT_FRACTION, select_split
from fantasyworld.errors import staged_output_dir
from fantasyworld.eval import baselines
from fantasyworld.eval.camera_accuracy import (
    camera_control_errors,
    reestimated_camera_accuracy,
    summarize_camera_accuracy,
)
from fantasyworld.eval.checkpoints import check_latents_sigma, default_size, inspect_checkpoint, load_pipeline
from fantasyworld.eval.metrics import ate_rmse, depth_metrics, pairwise_pose_errors, pointmap_metrics, pose_auc, rpe
from fantasyworld.geometry.camera_sequence import CameraSequence
from fantasyworld.models import inputs

__all__ = ["ACCEPTANCE_FACTOR", "EvalSettings", "MODES", "acceptance", "baseline_prediction", "evaluate",
           "predict_from_generation", "predict_from_latents", "reference_scores", "score_clip", "summarize"]

#: A bar is met when ``baseline / model >= ACCEPTANCE_FACTOR``.
ACCEPTANCE_FACTOR = 2.0
MODES = ("latents", "generation")
METRICS_VERSION = 1
DEPTH_KEYS = ("abs_rel_median", "delta_1_25_median", "abs_rel_scale_shift", "delta_1_25_scale_shift")
CAMERA_KEYS = ("rot_err", "trans_err", "rra@15", "rta@15", "auc@30", "ate", "rpe_trans", "rpe_rot")
POINT_KEYS = ("accuracy", "completeness", "chamfer")
#: ``(mode, metric, model key, baseline name)`` of the acceptance bars.
ACCEPTANCE_BARS = (
    ("depth_abs_rel", "abs_rel_median", "constant_depth"),
    ("rotation_error", "rot_err", "identity_poses"),
)


@dataclass
class EvalSettings:
    """What ``evaluate`` runs.

    Attributes:
        split: ``held-out`` (default), ``train`` or ``all`` (:mod:`fantasyworld.data.split`).
        held_out_fraction: share of clips in the held-out split.
        max_clips: evaluate at most this many clips of the split (``None``: all).
        num_frames, height, width: clip size (``None``: the checkpoint's training run
            config ``train_config.yaml`` if found, else the stored clip size rounded down to
            ``4k + 1`` frames and multiples of 16 pixels).
        sigma: noise level of the ``latents`` mode, in ``[0, 1)``.
        camera_conditioning: ``none`` or ``gt`` (``latents`` mode, stage-2 checkpoints).
        modes: which of :data:`MODES` to run (``generation`` is skipped for stage 1).
        num_steps, guidance_scale, shift: sampler settings of the ``generation`` mode.
        seed: noise seed (clip ``i`` uses ``seed + i``).
        sample_clips: how many clips get figures in the report.
        reestimate_cameras: ``generation`` mode: run structure from motion on each
            generated video and score the recovered cameras against the requested ones
            (RotErr, TransErr, CamMC and the SfM failure rate,
            :mod:`fantasyworld.eval.camera_accuracy`).
        reestimate_min_registered: a generated clip with fewer registered frames is an
            SfM failure.
    """

    split: str = "held-out"
    held_out_fraction: float = HELD_OUT_FRACTION
    max_clips: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    sigma: float = 0.1
    camera_conditioning: str = "none"
    modes: tuple[str, ...] = MODES
    num_steps: int = 20
    guidance_scale: float = 1.0
    shift: float = 5.0
    seed: int = 0
    sample_clips: int = 3
    reestimate_cameras: bool = False
    reestimate_min_registered: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma < 1.0:
            raise ValueError(f"sigma must be in [0, 1), got {self.sigma}")
        if self.camera_conditioning not in ("none", "gt"):
            raise ValueError(f"camera_conditioning must be 'none' or 'gt', got {self.camera_conditioning!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")


# ----------------------------------------------------------------------------- scoring
def _camera_scores(pred_w2c: np.ndarray, gt_w2c: np.ndarray) -> dict[str, float]:
    rot_err, trans_err = pairwise_pose_errors(pred_w2c, gt_w2c)
    out = {
        "rot_err": float(np.mean(rot_err)),
        "trans_err": float(np.mean(trans_err)),
        "rra@15": float(np.mean(rot_err < 15.0)),
        "rta@15": float(np.mean(trans_err < 15.0)),
        "auc@30": pose_auc(rot_err, trans_err, 30),
        "ate": ate_rmse(pred_w2c, gt_w2c),
    }
    out.update(rpe(pred_w2c, gt_w2c))
    return out


def score_clip(pred: dict[str, np.ndarray], gt: dict[str, np.ndarray], max_points: int = 20_000
               ) -> dict[str, float]:
    """Scores of one clip's prediction against its ground truth.

    Args:
        pred: any of ``depth`` ``(T, H, W)``, ``w2c`` ``(T, 4, 4)``, ``world_points``
            ``(T, H, W, 3)`` (each in the prediction's own frame and scale).
        gt: ``depth`` ``(T, H, W)``, ``valid`` ``(T, H, W)`` bool, ``w2c`` ``(T, 4, 4)``,
            ``points`` ``(T, H, W, 3)``.
        max_points: subsample size of each cloud for the nearest-neighbour search.

    Returns:
        The keys of :data:`DEPTH_KEYS`, :data:`CAMERA_KEYS` and :data:`POINT_KEYS` for the
        predictions given.
    """
    out: dict[str, float] = {}
    valid = np.asarray(gt["valid"], dtype=bool)
    if pred.get("depth") is not None:
        d = depth_metrics(pred["depth"], gt["depth"], valid)
        out.update({k: d[k] for k in DEPTH_KEYS})
    if pred.get("w2c") is not None:
        out.update(_camera_scores(pred["w2c"], gt["w2c"]))
    if pred.get("world_points") is not None:
        p = pointmap_metrics(pred["world_points"], gt["points"], valid, max_points=max_points)
        out.update({k: p[k] for k in POINT_KEYS})
    return out


def baseline_prediction(gt: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trivial predictions of :mod:`fantasyworld.eval.baselines` for one clip."""
    t, h, w = np.asarray(gt["depth"]).shape
    return {
        "depth": baselines.constant_depth((t, h, w)),
        "w2c": baselines.identity_poses(t),
        "world_points": baselines.plane_points(gt["intrinsics"], h, w),
    }


def reference_scores(gt: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{"baseline": scores of baseline_prediction(gt), "oracle": depth scores of the
    token-resolution oracle}`` (:func:`fantasyworld.eval.baselines.token_depth`) of one clip."""
    oracle = {"depth": baselines.token_depth(gt["depth"], gt["valid"])}
    return {"baseline": score_clip(baseline_prediction(gt), gt), "oracle": score_clip(oracle, gt)}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(per_clip: dict[str, dict[str, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Means over clips: ``{mode: {"model": {...}, "baseline": {...}, "oracle": {...}}}`` from
    ``per_clip[clip][mode][method]``."""
    out: dict[str, Any] = {}
    for mode in MODES:
        for method in ("model", "baseline", "oracle"):
            rows = [c[mode][method] for c in per_clip.values() if mode in c and method in c[mode]]
            if not rows:
                continue
            keys = [k for k in (*DEPTH_KEYS, *CAMERA_KEYS, *POINT_KEYS) if any(k in r for r in rows)]
            out.setdefault(mode, {})[method] = {k: _nanmean([r.get(k, float("nan")) for r in rows]) for k in keys}
            out[mode]["num_clips"] = len(rows)
    return out


def acceptance(summary: dict[str, Any], factor: float = ACCEPTANCE_FACTOR, mode: str = "latents"
               ) -> dict[str, Any]:
    """The issue's bars on ``summary[mode]``: each ``{model, baseline, ratio, passed}``
    plus ``passed`` (all bars) and a one-line ``verdict``."""
    res: dict[str, Any] = {"mode": mode, "factor": factor}
    oks = []
    for name, key, baseline in ACCEPTANCE_BARS:
        model_v = summary.get(mode, {}).get("model", {}).get(key, float("nan"))
        base_v = summary.get(mode, {}).get("baseline", {}).get(key, float("nan"))
        ratio = base_v / model_v if model_v > 0 else (math.inf if base_v > 0 else float("nan"))
        ok = bool(math.isfinite(base_v) and math.isfinite(model_v) and ratio >= factor)
        oks.append(ok)
        res[name] = {"metric": key, "baseline": baseline, "model_value": model_v, "baseline_value": base_v,
                     "ratio": ratio, "passed": ok}
    res["passed"] = all(oks)
    parts = [f"{n}: baseline/model = {res[n]['ratio']:.2f} ({'met' if res[n]['passed'] else 'MISSED'})"
             for n, *_ in ACCEPTANCE_BARS]
    res["verdict"] = (f"{'PASS' if res['passed'] else 'FAIL'}: the model must be at least {factor:g}x better "
                      f"than the trivial baselines; " + "; ".join(parts))
    return res


# ----------------------------------------------------------------------------- prediction
def _cameras(pose_enc: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    from fantasyworld.inference.pipeline import cameras_from_pose_enc

    w2c, _ = cameras_from_pose_enc(pose_enc.detach().cpu().double().numpy(), hw)
    return w2c


@torch.no_grad()
def predict_from_latents(pipe, sample: dict[str, Any], sigma: float, seed: int, stage: int,
                         camera_conditioning: str = "none") -> dict[str, np.ndarray]:
    """Geometry from the clip's own latents at noise level ``sigma`` (module docstring).

    Args:
        pipe: a :class:`~fantasyworld.inference.pipeline.FantasyWorldPipeline` (two experts:
            its ``model`` is the low-noise expert, the one whose heads are read).
        sample: one :class:`~fantasyworld.data.loader.RawClipDataset` item.
        stage: forward stage (1: PCBs + geometry only).

    Returns:
        ``depth`` ``(T, H, W)``, ``depth_conf``, ``world_points`` ``(T, H, W, 3)``,
        ``w2c`` ``(T, 4, 4)`` float64 (relative to the first predicted camera), ``pose_enc``.
    """
    model, device, dtype = pipe.model, pipe.device, pipe.dtype
    video = sample["video"][None]  # (1, 3, T, H, W)
    _, _, _, h, w = video.shape
    clean = inputs.clean_inputs({"video": video}, device, pipe.config.is_i2v, pipe,
                                text_emb=pipe.encode_prompt(sample["prompt"]), clip=pipe.config.uses_clip)
    x0 = clean.pop("x0")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    sig = torch.full((1,), float(sigma), device=device)
    latents, timestep = inputs.noisy_latents(x0, noise, sig)
    plucker = None
    if camera_conditioning == "gt" and stage == 2:
        plucker = inputs.camera_rays(sample["w2c"][None], sample["intrinsics"][None], h, w, torch.float64)
        plucker = plucker.to(device, dtype)
    kwargs = {k: v.to(dtype) for k, v in clean.items()}
    text = kwargs.pop("text_emb")
    out = model(latents.to(dtype), timestep.to(dtype), text, plucker=plucker, stage=stage, **kwargs)
    res = {k: out[k][0].float().cpu().numpy() for k in ("depth", "depth_conf", "world_points", "pose_enc")}
    res["w2c"] = _cameras(out["pose_enc"][0], (h, w))
    return res


def predict_from_generation(pipe, sample: dict[str, Any], seed: int, num_steps: int, guidance_scale: float,
                            shift: float, progress: bool = False):
    """Generate along the clip's cameras (module docstring); returns the
    :class:`~fantasyworld.inference.result.GenerationResult`."""
    w2c = sample["w2c"].double().numpy()
    k = sample["intrinsics"].double().numpy()
    _, t, h, w = sample["video"].shape
    traj = CameraSequence(w2c, k, h, w, source=f"clip:{sample['clip_id']}")
    image = sample["video"][:, 0] if pipe.config.is_i2v else None
    return pipe(sample["prompt"], image=image, camera=traj, num_frames=t, height=h, width=w, num_steps=num_steps,
                guidance_scale=guidance_scale, shift=shift, seed=seed, negative_prompt="", progress=progress)


def _ground_truth(sample: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        "depth": sample["depth"].double().numpy(),
        "valid": sample["valid"].numpy().astype(bool),
        "w2c": sample["w2c"].double().numpy(),
        "points": sample["points"].double().numpy(),
        "intrinsics": sample["intrinsics"].double().numpy(),
    }


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    settings: EvalSettings | None = None,
    *,
    backbone: str | None = None,
    vae: str | None = None,
    text_encoder: str | None = None,
    device: str = "cpu",
    report: bool = True,
    log: Callable[[str], None] | None = print,
    pipe=None,
    high_lora: str | None = None,
    low_lora: str | None = None,
    baseline_scores: dict[tuple[str, int, int, int], dict[str, dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """Score ``checkpoint`` on the ``settings.split`` clips of ``data_root``; write
    ``out_dir/metrics.json`` (and the report); return the metrics dict.

    ``checkpoint``: one model's checkpoint, or a two-expert directory with ``high/`` and
    ``low/`` (:mod:`fantasyworld.eval.checkpoints` says how each mode reads it; a ``latents``
    sigma on the high-noise side is an :class:`~fantasyworld.errors.UnsupportedModeError`).
    ``backbone``, ``vae``, ``text_encoder`` (and, for two experts, ``high_lora`` / ``low_lora``)
    are passed to the pipeline's ``from_pretrained`` (defaults: beside the checkpoint, else the
    tiny presets' seeded random ones); ``pipe`` reuses an already loaded pipeline.
    ``baseline_scores``: a dict shared by several evaluations of the same clips (e.g. of two
    checkpoints): the baselines' and the oracle's scores of a clip at a size
    (:func:`reference_scores`), keyed ``(clip_id, T, H, W)``, are computed once and read from
    it afterwards (they depend on the ground truth alone).
    """
    settings = settings or EvalSettings()
    start = time.perf_counter()
    say = log or (lambda _msg: None)
    out = Path(out_dir)
    data_root = Path(data_root)
    ckpt = inspect_checkpoint(checkpoint)
    weights, config, stage = ckpt.path, ckpt.config, ckpt.stage
    if "latents" in settings.modes:
        check_latents_sigma(ckpt, settings.sigma)  # before anything is loaded
    if pipe is None:
        pipe = load_pipeline(ckpt, backbone=backbone, vae=vae, text_encoder=text_encoder, device=device,
                             high_lora=high_lora, low_lora=low_lora)
    t, h, w = default_size(ckpt, data_root, settings.num_frames, settings.height, settings.width)
    dataset = RawClipDataset(data_root, num_frames=t, height=h, width=w)
    all_ids = [r.clip_id for r in dataset.records]
    chosen = select_split(all_ids, settings.split, settings.held_out_fraction)
    if settings.max_clips is not None:
        chosen = chosen[: settings.max_clips]
    if not chosen:
        raise ValueError(f"{data_root}: split {settings.split!r} holds no clip")
    modes = [m for m in settings.modes if m != "generation" or stage == 2]
    skipped = [m for m in settings.modes if m not in modes]
    say(f"evaluate: {len(chosen)} {settings.split} clip(s) of {data_root} ({len(all_ids)} in all), {t}x{h}x{w}, "
        f"stage-{stage} checkpoint {weights}, modes {', '.join(modes)}"
        + (f" (skipped {', '.join(skipped)}: needs a stage-2 checkpoint)" if skipped else "")
        + (f", experts {' + '.join(ckpt.experts)} (geometry from the low-noise expert)" if ckpt.two_expert else ""))

    per_clip: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    index_of = {c: i for i, c in enumerate(all_ids)}
    for n, clip_id in enumerate(chosen):
        t0 = time.perf_counter()
        sample = dataset[index_of[clip_id]]
        gt = _ground_truth(sample)
        refs = None if baseline_scores is None else baseline_scores.get((clip_id, t, h, w))
        if refs is None:
            refs = reference_scores(gt)
            if baseline_scores is not None:
                baseline_scores[(clip_id, t, h, w)] = refs
        clip_res: dict[str, Any] = {}
        fig: dict[str, Any] = {"clip_id": clip_id, "gt": gt, "frames": _frames_uint8(sample["video"])}
        seed = settings.seed + index_of[clip_id]
        if "latents" in modes:
            pred = predict_from_latents(pipe, sample, settings.sigma, seed, stage, settings.camera_conditioning)
            clip_res["latents"] = {"model": score_clip(pred, gt), **refs}
            fig["latents"] = pred
        if "generation" in modes:
            res = predict_from_generation(pipe, sample, seed, settings.num_steps, settings.guidance_scale,
                                          settings.shift)
            pred = {"depth": res.depth, "w2c": res.w2c, "world_points": res.world_points}
            clip_res["generation"] = {"model": score_clip(pred, gt), **refs}
            if settings.reestimate_cameras:
                clip_res["generation"].update(_camera_control(res, settings))
            fig["generation"] = {**pred, "video": res.video}
        per_clip[clip_id] = clip_res
        if len(samples) < settings.sample_clips:
            samples.append(fig)
        lat = clip_res.get("latents", {}).get("model", {})
        re_est = clip_res.get("generation", {}).get("reestimated")
        say(f"  [{n + 1}/{len(chosen)}] {clip_id}: " + (
            f"abs_rel {lat.get('abs_rel_median', float('nan')):.3f} (baseline {refs['baseline']['abs_rel_median']:.3f}"
            f", oracle {refs['oracle']['abs_rel_median']:.3f}), rot_err {lat.get('rot_err', float('nan')):.2f} deg "
            f"(baseline {refs['baseline']['rot_err']:.2f}), " if lat else "") + (
            "" if re_est is None else
            f"re-estimated cameras: RotErr {re_est['RotErr']:.3f} TransErr {re_est['TransErr']:.3f} "
            f"CamMC {re_est['CamMC']:.3f}, " if re_est["status"] == "ok" else
            f"re-estimated cameras: {re_est['reason']}, ") + f"{time.perf_counter() - t0:.1f} s")

    summary = summarize(per_clip)
    if settings.reestimate_cameras and "generation" in summary:
        gen = [c["generation"] for c in per_clip.values() if "generation" in c]
        summary["generation"]["camera_control"] = {
            "reestimated": summarize_camera_accuracy([g["reestimated"] for g in gen]),
            "model": summarize_camera_accuracy([g["model_camera_control"] for g in gen]),
            "protocol": CAMERA_CONTROL_PROTOCOL,
        }
    accept = acceptance(summary) if "latents" in summary else None
    metrics = {
        "version": METRICS_VERSION,
        "checkpoint": str(weights),
        "preset": config.name,
        **({"experts": list(ckpt.experts)} if ckpt.two_expert else {}),
        "stage": stage,
        "data": str(data_root),
        "split": settings.split,
        "clips": chosen,
        "settings": {**asdict(settings), "modes": list(modes), "num_frames": t, "height": h, "width": w},
        "baselines": baselines.BASELINE_DESCRIPTIONS,
        "oracles": baselines.ORACLE_DESCRIPTIONS,
        "summary": summary,
        "acceptance": accept,
        "per_clip": per_clip,
        "seconds": time.perf_counter() - start,
    }
    with staged_output_dir(out) as tmp:  # out is replaced as a whole: no file of an earlier evaluation stays
        (tmp / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1) + "\n")
        if report:
            from fantasyworld.eval.report import write_eval_report

            write_eval_report(tmp, metrics, samples)
            from fantasyworld.eval.scenes import write_scene

            for fig in samples:  # for `fantasyworld view OUT`
                write_scene(tmp, fig)
    if accept is not None:
        say(accept["verdict"])
    say(f"evaluate: wrote {out / 'metrics.json'}" + (f" and {out / 'report.html'}" if report else "")
        + f" in {time.perf_counter() - start:.1f} s")
    return metrics


CAMERA_CONTROL_PROTOCOL = (
    "CamI2V/CameraCtrl: SfM (pycolmap, requested intrinsics fixed) on the generated frames; both trajectories "
    "relative to their first (registered) frame, translations divided by each trajectory's largest distance "
    "from that frame; RotErr = sum of rotation angles (radians), TransErr = sum of translation distances, "
    "CamMC = sum of Frobenius norms of the [R|t] differences; means over the clips SfM did not fail on")


def _camera_control(res, settings: EvalSettings) -> dict[str, Any]:
    """RotErr / TransErr / CamMC of the re-estimated and of the model's own cameras."""
    req = res.requested_w2c
    return {"reestimated": reestimated_camera_accuracy(res.video, req, res.requested_intrinsics[0],
                                                       settings.reestimate_min_registered),
            "model_camera_control": {"status": "ok", **camera_control_errors(res.w2c, req)}}


def _frames_uint8(video: torch.Tensor) -> np.ndarray:
    """``(3, T, H, W)`` in [-1, 1] -> ``(T, H, W, 3)`` uint8."""
    return ((video.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def _jsonable(x: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x

