"""The numbers and files of ``benchmarks/learn_gpu.py``: the diffusion-loss comparison, the
acceptance bars, the held-out table (JSON + markdown) and the learning curves (PNG).

Acceptance (:data:`BARS`, on the held-out worlds, ``latents`` mode of ``fantasyworld
evaluate``, the final stage-2 model): depth AbsRel (median-aligned) at least 4x below the
constant depth's, relative rotation error at least 4x below the identity poses', the
translation-direction error and the Chamfer distance each at least 2x below their baselines
(identity poses, one plane); stage 2's diffusion loss below the frozen backbone's on the
same held-out latents, noise and noise levels; and every one of those four geometry errors
after stage 2 at most 10% above its value after stage 1 (:data:`KEPT_FACTOR`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: ``(name, metric key, baseline, factor)``: the model must be ``factor`` x better (``baseline / model``)
BARS = (
    ("depth AbsRel", "abs_rel_median", "constant depth", 4.0),
    ("rotation error", "rot_err", "identity poses", 4.0),
    ("translation direction", "trans_err", "identity poses", 2.0),
    ("Chamfer", "chamfer", "one plane", 2.0),
)
#: stage-2 geometry errors may be at most this factor of stage 1's
KEPT_FACTOR = 1.10
#: scores where higher is better (the table's last column is then model / baseline)
HIGHER_IS_BETTER = ("delta_1_25_median", "delta_1_25_scale_shift", "rra@15", "rta@15", "auc@30")
#: the loss curves drawn per stage
CURVE_KEYS = ("objective", "loss_depth", "loss_pmap", "loss_camera", "loss_R", "loss_T", "loss_diff")


@torch.no_grad()
def diffusion_losses(pipe: Any, backbone_dir: str | Path, data_root: str | Path, clip_ids: list[str],
                     sigmas: tuple[float, ...], seed: int, num_frames: int, size: int) -> dict[str, Any]:
    """Flow-matching MSE on held-out clips of the stage-2 model (with the clip's cameras, and
    without), and of the frozen Wan backbone loaded afresh from ``backbone_dir``.

    Each clip ``n`` is VAE-encoded (``x0`` (1, 16, F, h, w)), noised at every level of ``sigmas``
    with the noise of seed ``seed + 1000 n + j`` (the same for the three models), and scored
    against the velocity target ``eps - x0``; the cameras enter as in training (Plucker rays of
    the clip's world-to-camera matrices).

    Returns:
        ``{"stage2_camera", "stage2_no_camera", "frozen_backbone"}``: mean MSE over clips and
        levels, ``per_sigma`` (each model's mean per level), ``sigmas``, ``clips``.
    """
    from fantasyworld.data.loader import RawClipDataset
    from fantasyworld.models import encoders
    from fantasyworld.models.flow_matching import flow_target
    from fantasyworld.models.inputs import camera_rays, noisy_latents
    from fantasyworld.models.wan_loading import load_wan_transformer

    device = pipe.device
    frozen = load_wan_transformer(backbone_dir, torch.float32, device, expected_config=pipe.config.wan).eval()
    dataset = RawClipDataset(data_root, num_frames=num_frames, height=size, width=size)
    where = {r.clip_id: i for i, r in enumerate(dataset.records)}
    names = ("stage2_camera", "stage2_no_camera", "frozen_backbone")
    losses = {name: np.zeros((len(clip_ids), len(sigmas))) for name in names}
    for n, clip_id in enumerate(clip_ids):
        sample = dataset[where[clip_id]]
        x0 = encoders.encode_video(pipe.vae, sample["video"][None].to(device))
        text = pipe.encode_prompt(sample["prompt"])
        plucker = camera_rays(sample["w2c"][None], sample["intrinsics"][None], size, size).to(device)
        for j, sigma in enumerate(sigmas):
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1000 * n + j)).to(device)
            x, t = noisy_latents(x0, noise, torch.full((1,), float(sigma), device=device))
            target = flow_target(x0, noise)
            flows = {
                "stage2_camera": pipe.model(x, t, text, plucker=plucker, stage=2, heads=None)["flow"],
                "stage2_no_camera": pipe.model(x, t, text, stage=2, heads=None)["flow"],
                "frozen_backbone": frozen(x, t, text, return_dict=False)[0],
            }
            for name, flow in flows.items():
                losses[name][n, j] = float((flow.float() - target).square().mean())
    out: dict[str, Any] = {name: float(v.mean()) for name, v in losses.items()}
    out["per_sigma"] = {name: [float(x) for x in v.mean(0)] for name, v in losses.items()}
    out.update(sigmas=list(sigmas), clips=list(clip_ids))
    return out


def _ratio(baseline: float, model: float) -> float:
    if not (math.isfinite(baseline) and math.isfinite(model)):
        return float("nan")
    return baseline / model if model > 0 else math.inf


def acceptance(stage1: dict[str, Any], stage2: dict[str, Any], diffusion: dict[str, Any] | None) -> dict[str, Any]:
    """The bars of the module docstring from the two evaluations' ``summary["latents"]`` and
    :func:`diffusion_losses`; ``passed`` is all of them, ``lines`` the printed verdict."""
    model2, base = stage2["model"], stage2["baseline"]
    model1 = stage1["model"]
    bars: list[dict[str, Any]] = []
    for name, key, baseline, factor in BARS:
        ratio = _ratio(base.get(key, float("nan")), model2.get(key, float("nan")))
        bars.append({"bar": name, "metric": key, "baseline": baseline, "model": model2.get(key), "baseline_value":
                     base.get(key), "ratio": ratio, "stage1_ratio": _ratio(base.get(key, float("nan")),
                                                                           model1.get(key, float("nan"))),
                     "need": f">= {factor:g}x", "passed": bool(ratio >= factor)})
    if diffusion is not None:
        s2, frozen = diffusion["stage2_camera"], diffusion["frozen_backbone"]
        bars.append({"bar": "diffusion loss", "metric": "flow MSE", "model": s2, "baseline": "frozen backbone",
                     "baseline_value": frozen, "ratio": _ratio(frozen, s2), "need": "stage 2 < frozen backbone",
                     "passed": bool(s2 < frozen)})
    kept = {key: model2.get(key, float("nan")) / model1.get(key, float("nan")) if model1.get(key) else float("nan")
            for _, key, _, _ in BARS}
    bars.append({"bar": "geometry kept in stage 2", "metric": "stage 2 / stage 1 error", "model": kept,
                 "need": f"each <= {KEPT_FACTOR:g}", "passed": all(v <= KEPT_FACTOR for v in kept.values())})
    passed = all(b["passed"] for b in bars)
    lines = [f"{'PASS' if passed else 'FAIL'}: held-out worlds, latents mode, stage-2 model"]
    for b in bars:
        state = "met" if b["passed"] else "MISSED"
        if isinstance(b["model"], dict):
            parts = ", ".join(f"{k} {v:.3f}" for k, v in b["model"].items())
            lines.append(f"  {b['bar']:26s} {parts} (need {b['need']}): {state}")
        else:
            lines.append(f"  {b['bar']:26s} model {b['model']:.4g} vs {b['baseline']} {b['baseline_value']:.4g}: "
                         f"{b['ratio']:.2f}x (need {b['need']}): {state}")
    return {"passed": passed, "bars": bars, "lines": lines}


def _better(key: str, model: float, baseline: float) -> float:
    """> 1: the model is better (baseline / model for errors, model / baseline for accuracies)."""
    return _ratio(model, baseline) if key in HIGHER_IS_BETTER else _ratio(baseline, model)


def write_tables(out: Path, stage1: dict[str, Any], stage2: dict[str, Any], verdict: dict[str, Any],
                 diffusion: dict[str, Any] | None, run: dict[str, Any],
                 train_stage2: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``OUT/held_out.json`` (everything) and ``OUT/held_out.md`` (the table and the verdict; after
    ``abs_rel_median``, the token-resolution depth oracle's, when the evaluation scored it). With
    ``train_stage2`` (the stage-2 model's summary on training clips) two more columns: its score
    there and its ratio to that split's baseline, beside the held-out ones (not a bar)."""
    keys = [k for k in stage2["model"] if k in stage2["baseline"]]
    head = "| metric | stage 1 | stage 2 | baseline | stage 2 better by |"
    if train_stage2 is not None:
        head += f" stage 2, {train_stage2.get('num_clips', '?')} training clips | better by |"
    rows = [head, "|---|---:|---:|---:|---:|" + ("---:|---:|" if train_stage2 is not None else "")]

    def train_cells(key: str, part: str = "model") -> str:
        if train_stage2 is None:
            return ""
        m, b = train_stage2.get(part, {}).get(key, float("nan")), train_stage2["baseline"].get(key, float("nan"))
        return f" {m:.4g} | {_better(key, m, b):.2f}x |"

    for key in keys:
        m1, m2, b = stage1["model"].get(key, float("nan")), stage2["model"][key], stage2["baseline"][key]
        rows.append(f"| {key} | {m1:.4g} | {m2:.4g} | {b:.4g} | {_better(key, m2, b):.2f}x |" + train_cells(key))
        if key == "abs_rel_median" and key in stage2.get("oracle", {}):  # ground truth only: the same both stages
            o1, o2 = stage1.get("oracle", {}).get(key, float("nan")), stage2["oracle"][key]
            rows.append(f"| {key}: depth at token resolution from ground truth (oracle, ceiling of the ratio: "
                        f"{_ratio(b, o2):.2f}x) | {o1:.4g} | {o2:.4g} | {b:.4g} | {_ratio(b, o2):.2f}x |"
                        + train_cells(key, "oracle"))
    text = [f"# Held-out geometry ({stage2.get('num_clips', '?')} worlds)", "",
            "`latents` mode of `fantasyworld evaluate`; the last column is baseline / model for errors and "
            "model / baseline for accuracies (" + ", ".join(HIGHER_IS_BETTER) + ")"
            + ("; the training-clip columns score the stage-2 model on worlds it trained on (not a bar: held-out far "
               "below them says too few worlds, both alike too few steps)" if train_stage2 is not None else "")
            + ".", "", *rows, ""]
    if diffusion is not None:
        text += ["## Diffusion loss on held-out clips (flow MSE, same noise)", "",
                 "| model | mean | " + " | ".join(f"sigma {s:g}" for s in diffusion["sigmas"]) + " |",
                 "|---|---:|" + "---:|" * len(diffusion["sigmas"])]
        tables = [("", diffusion)]
        train = diffusion.get("training_clips")
        if train is not None:  # reported beside the bar: training clips tell over-fitting from too few steps
            tables.append((f", {len(train['clips'])} training clips", train))
        for label, losses in tables:
            for name in ("stage2_camera", "stage2_no_camera", "frozen_backbone"):
                text.append(f"| {name}{label} | {losses[name]:.4f} | "
                            + " | ".join(f"{v:.4f}" for v in losses["per_sigma"][name]) + " |")
        text.append("")
    text += ["## Verdict", "", "```", *verdict["lines"], "```", ""]
    md = out / "held_out.md"
    md.write_text("\n".join(text))
    js = out / "held_out.json"
    js.write_text(json.dumps({"stage1": stage1, "stage2": stage2, "stage2_training_clips": train_stage2,
                              "diffusion": diffusion, "acceptance": verdict, "run": run},
                             indent=1, default=_jsonable) + "\n")
    return js, md


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON: {type(x).__name__}")


def plot_curves(out: Path, histories: dict[str, list[dict[str, Any]]]) -> Path:
    """``OUT/learning_curves.png``: the logged losses against the step, one panel per stage
    (log scale; each point is the mean over a log row's steps)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(histories), 4.2))
    FigureCanvasAgg(fig)
    for i, (stage, rows) in enumerate(histories.items()):
        ax = fig.add_subplot(1, len(histories), i + 1)
        steps = [r["step"] for r in rows]
        for key in CURVE_KEYS:
            values = [r.get(key) for r in rows]
            if any(v is not None and v > 0 for v in values):
                ax.plot(steps, [v if v is not None and v > 0 else np.nan for v in values], label=key, lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(stage)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    return path
