"""The evaluation report: PNG figures drawn by :mod:`fantasyworld.inference.plots` (matplotlib) and
one HTML page linking them.

Files written into the evaluation folder by :func:`write_eval_report`:

=======================  =====================================================================
``report.html``          verdict, metric table, the figures, per-clip scores, links
``metrics_table.png``    model vs trivial baseline per metric and mode, with the ratio, and
                         the token-resolution depth oracle's AbsRel (the ratio's ceiling)
``depth_samples.png``    per sample clip, three frames (first, middle, last): input frames,
                         ground-truth depth, predicted depth (``latents`` mode), and for the
                         ``generation`` mode the generated frames and their depth. Depth is
                         Turbo-coloured inverse depth (near red, far blue); each prediction
                         is median-aligned to the ground truth and shares its colour range.
``trajectories.png``     per sample clip, a top view (camera 0's x right, z up the page) of the
                         ground-truth camera centres (blue) and the predicted ones (red,
                         Sim(3)-aligned to the ground truth), ticks along viewing directions
=======================  =====================================================================
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fantasyworld.data.colormap import turbo
from fantasyworld.eval.metrics import align_depth_median, apply_sim3, camera_centers, umeyama_alignment
from fantasyworld.inference import plots

__all__ = ["depth_figure", "metrics_table_figure", "trajectory_figure", "write_eval_report"]

_LOWER_IS_BETTER = {"abs_rel_median", "abs_rel_scale_shift", "rot_err", "trans_err", "ate", "rpe_trans", "rpe_rot",
                    "accuracy", "completeness", "chamfer"}
_TABLE_KEYS = ("abs_rel_median", "delta_1_25_median", "abs_rel_scale_shift", "delta_1_25_scale_shift", "rot_err",
               "trans_err", "rra@15", "rta@15", "auc@30", "ate", "rpe_trans", "rpe_rot", "accuracy", "completeness",
               "chamfer")
_UNITS = {"rot_err": "deg", "trans_err": "deg", "rpe_rot": "deg"}


def _inv_depth_rgb(depth: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Turbo inverse depth ``(..., H, W, 3)`` normalised by the 2nd/98th percentiles of ``ref``."""
    ok = np.isfinite(ref) & (ref > 0)
    inv_ref = 1.0 / ref[ok] if ok.any() else np.ones(1)
    lo, hi = np.percentile(inv_ref, [2, 98])
    good = np.isfinite(depth) & (depth > 0)
    inv = np.where(good, 1.0 / np.where(good, depth, 1.0), np.nan)
    rgb = turbo(0.1 + 0.9 * ((inv - lo) / max(hi - lo, 1e-12)).clip(0, 1))
    rgb[~good] = 0
    if valid is not None:
        rgb[~valid] = 0
    return rgb


def depth_figure(samples: list[dict[str, Any]], panel: int = 128) -> Image.Image:
    """The ``depth_samples.png`` figure (module docstring) from evaluation samples."""
    blocks: list[tuple[str, list[tuple[str, list[np.ndarray]]]]] = []
    for s in samples:
        gt_depth, valid = s["gt"]["depth"], s["gt"]["valid"]
        t = gt_depth.shape[0]
        frames = sorted({0, t // 2, t - 1})
        rows = [("input frames", [s["frames"][i] for i in frames]),
                ("ground-truth depth", [_inv_depth_rgb(gt_depth[i], gt_depth, valid[i]) for i in frames])]
        for mode, label in (("latents", "predicted depth (from the clip's latents)"),
                            ("generation", "generated frames / their predicted depth")):
            pred = s.get(mode)
            if pred is None or pred.get("depth") is None:
                continue
            aligned, _ = align_depth_median(pred["depth"], gt_depth, valid)
            if mode == "generation" and pred.get("video") is not None:
                rows.append(("generated frames (same prompt and cameras)", [pred["video"][i] for i in frames]))
                label = "depth of the generated frames"
            rows.append((label, [_inv_depth_rgb(aligned[i], gt_depth) for i in frames]))
        blocks.append((f"{s['clip_id']}: frames {', '.join(str(i) for i in frames)}", rows))
    return Image.fromarray(plots.to_rgb(plots.image_rows(blocks, panel)))


def _top_view(c2w: np.ndarray, ref_w2c0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres and forward axes in camera 0's frame, as (x, z) pairs."""
    rot0, t0 = ref_w2c0[:3, :3], ref_w2c0[:3, 3]
    centres = c2w[:, :3, 3] @ rot0.T + t0
    fwd = c2w[:, :3, 2] @ rot0.T
    return centres[:, [0, 2]], fwd[:, [0, 2]]


def trajectory_figure(samples: list[dict[str, Any]], mode: str = "latents", size: int = 260) -> Image.Image:
    """The ``trajectories.png`` figure (module docstring): one panel per sample clip."""
    views: list[list[plots.Track]] = []
    titles: list[str] = []
    for s in samples:
        gt_w2c = s["gt"]["w2c"]
        pred = s.get(mode) or {}
        tracks = {"ground truth": (np.linalg.inv(gt_w2c), plots.BLUE)}
        if pred.get("w2c") is not None:
            pred_c2w = np.linalg.inv(pred["w2c"])
            scale, rot, trans = umeyama_alignment(camera_centers(pred["w2c"]), camera_centers(gt_w2c))
            aligned = pred_c2w.copy()
            aligned[:, :3, :3] = rot @ pred_c2w[:, :3, :3]
            aligned[:, :3, 3] = apply_sim3(pred_c2w[:, :3, 3], scale, rot, trans)
            tracks["predicted (Sim(3)-aligned)"] = (aligned, plots.RED)
        views.append([plots.Track(name, *_top_view(c2w, gt_w2c[0]), col) for name, (c2w, col) in tracks.items()])
        titles.append(s["clip_id"])
    if not views:
        return Image.fromarray(plots.to_rgb(plots.new_figure(size, 40)))
    width, height = len(views) * (size + 8) + 8, size + 84  # one panel per clip, legends below
    fig = plots.new_figure(width, height)
    for i, (view, title) in enumerate(zip(views, titles)):
        ax = fig.add_axes(((8 + i * (size + 8) + 52) / width, 88 / height, (size - 60) / width, (size - 24) / height))
        plots.top_view(ax, view, title=title)
    return Image.fromarray(plots.to_rgb(fig))


def _fmt(v: float | None) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _method_cells(summary: dict[str, Any], modes: list[str], key: str, method: str = "model"
                  ) -> tuple[list[str], list[float]]:
    """Per mode: ``method``'s mean of ``key``, the baseline's and how many times better; and the ratios."""
    cells: list[str] = []
    ratios: list[float] = []
    for m in modes:
        mv = summary[m].get(method, {}).get(key)
        bv = summary[m].get("baseline", {}).get(key)
        ratio = None
        if mv is not None and bv is not None and math.isfinite(mv) and math.isfinite(bv):
            if key in _LOWER_IS_BETTER and mv > 0:
                ratio = bv / mv
            elif key not in _LOWER_IS_BETTER and bv > 0:
                ratio = mv / bv
        cells += [_fmt(mv), _fmt(bv), "-" if ratio is None else f"{ratio:.2f}x"]
        ratios += [] if ratio is None else [ratio]
    return cells, ratios


def _table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Header + one row per metric: metric, then per mode model / baseline / ratio. After
    ``abs_rel_median``, the same for the token-resolution depth oracle (in the model's
    column; its ratio is the ceiling of the model's at that resolution), when scored."""
    modes = [m for m in ("latents", "generation") if m in summary]
    header = ["metric"]
    for m in modes:
        header += [f"{m}: model", f"{m}: baseline", f"{m}: better by"]
    rows = [header]
    for key in _TABLE_KEYS:
        if not any(key in summary[m].get("model", {}) for m in modes):
            continue
        unit = f" ({_UNITS[key]})" if key in _UNITS else ""
        arrow = " (lower better)" if key in _LOWER_IS_BETTER else " (higher better)"
        rows.append([key + unit + arrow, *_method_cells(summary, modes, key)[0]])
        if key == "abs_rel_median" and any(key in summary[m].get("oracle", {}) for m in modes):
            cells, ratios = _method_cells(summary, modes, key, "oracle")
            ceiling = f"{ratios[0]:.2f}x" if ratios else "-"
            rows.append([f"{key}: depth at token resolution from ground truth (oracle, ceiling of the ratio: "
                         f"{ceiling})", *cells])
    return rows


def metrics_table_figure(metrics: dict[str, Any]) -> Image.Image:
    """The ``metrics_table.png`` figure: the summary table and the verdict."""
    rows = _table_rows(metrics["summary"])
    acceptance = metrics.get("acceptance") or {}
    lines = [(f"{metrics.get('preset')} stage {metrics.get('stage')}, split {metrics.get('split')}, "
              f"{len(metrics.get('clips', []))} clips; means over clips", "black")]
    if acceptance.get("verdict"):
        lines.append((acceptance["verdict"], "#007800" if acceptance.get("passed") else "#b40000"))
    return Image.fromarray(plots.to_rgb(plots.table(rows, lines)))


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_clip_rows(metrics: dict[str, Any]) -> list[list[str]]:
    keys = ("abs_rel_median", "rot_err", "trans_err", "ate", "chamfer")
    rows = [["clip", "mode"] + [f"{k} model / baseline" for k in keys] + ["abs_rel_median oracle"]]
    for clip, res in metrics["per_clip"].items():
        for mode, methods in res.items():
            m, b = methods.get("model", {}), methods.get("baseline", {})
            rows.append([clip, mode] + [f"{_fmt(m.get(k))} / {_fmt(b.get(k))}" for k in keys]
                        + [_fmt(methods.get("oracle", {}).get("abs_rel_median"))])
    return rows


def _camera_control_html(summary: dict[str, Any]) -> str:
    """The ``--reestimate-cameras`` table (generation mode), or ``""``."""
    cc = summary.get("generation", {}).get("camera_control")
    if not cc:
        return ""
    keys = ("RotErr", "TransErr", "CamMC", "rot_err_deg")
    rows = [["cameras", *keys, "SfM failures"]]
    for name, label in (("reestimated", "re-estimated by SfM from the generated frames"),
                        ("model", "predicted by the model")):
        r = cc[name]
        fail = f"{r['num_failed']}/{r['num_clips']}" if name == "reestimated" else "-"
        rows.append([label, *(_fmt(r.get(k)) for k in keys), fail])
    return (f"<h2>Camera control (generated videos vs requested cameras)</h2>{_html_table(rows)}"
            f"<p>{html.escape(cc.get('protocol', ''))}. rot_err_deg: mean angle per frame (degrees).</p>")


def write_eval_report(out_dir: str | Path, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the figures and ``report.html`` into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("metrics_table.png", "depth_samples.png", "trajectories.png",
                                           "report.html")}
    metrics_table_figure(metrics).save(paths["metrics_table.png"])
    depth_figure(samples).save(paths["depth_samples.png"])
    mode = "latents" if any(s.get("latents") for s in samples) else "generation"
    trajectory_figure(samples, mode).save(paths["trajectories.png"])
    traj_gen = ""
    if mode == "latents" and any(s.get("generation") for s in samples):
        paths["trajectories_generation.png"] = out / "trajectories_generation.png"
        trajectory_figure(samples, "generation").save(paths["trajectories_generation.png"])
        traj_gen = ('<figure><img src="trajectories_generation.png"><figcaption>cameras predicted from the '
                    'generated videos vs the requested (ground-truth) cameras</figcaption></figure>')
    acc = metrics.get("acceptance") or {}
    if acc:
        color = "#060" if acc.get("passed") else "#b00"
        verdict = f'<p style="color:{color};font-weight:bold">{html.escape(acc["verdict"])}</p>'
        if not acc.get("passed"):
            verdict += ("<p><b>Not met.</b> At least one bar is missed: on these clips the model does not beat an "
                        "image-free guess by the required factor on that quantity (the ratios above say by how "
                        "much it does). docs/evaluation.md records the measured numbers and what limits them.</p>")
    else:
        verdict = "<p>No acceptance check (the latents mode was not run).</p>"
    camctrl = _camera_control_html(metrics["summary"])
    settings = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in metrics["settings"].items())
    base = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                   for k, v in {**metrics["baselines"], **metrics.get("oracles", {})}.items())
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>FantasyWorld evaluation</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{font-size:13px;padding:2px 8px;text-align:left;border-bottom:1px solid #eee}}
img{{image-rendering:pixelated;max-width:100%}} figure{{margin:10px 0}}</style></head><body>
<h1>FantasyWorld evaluation</h1>
<p>Checkpoint <code>{html.escape(str(metrics["checkpoint"]))}</code> ({html.escape(str(metrics["preset"]))}, stage
{metrics["stage"]}) on <code>{html.escape(str(metrics["data"]))}</code>, split <b>{html.escape(metrics["split"])}</b>
({len(metrics["clips"])} clips). Means over clips; definitions in docs/evaluation.md.</p>
{verdict}
<h2>Metrics: model vs trivial baselines</h2>
{_html_table(_table_rows(metrics["summary"]))}
<p>Baselines (and the oracle, which reads the ground truth):</p><ul>{base}</ul>
<figure><img src="metrics_table.png"><figcaption>metrics_table.png</figcaption></figure>
{camctrl}
<h2>Depth: ground truth vs predicted</h2>
<figure><img src="depth_samples.png"><figcaption>Turbo inverse depth (near red, far blue), predictions
median-aligned to the ground truth; black: invalid pixels</figcaption></figure>
<h2>Camera trajectories (top view)</h2>
<figure><img src="trajectories.png"><figcaption>camera 0's frame: x right, z (forward) up the page; blue ground
truth, red predicted (Sim(3)-aligned), ticks show viewing directions</figcaption></figure>
{traj_gen}
<h2>Per clip</h2>
{_html_table(_per_clip_rows(metrics))}
<h2>Settings</h2><table>{settings}</table>
<p>Files: <a href="metrics.json">metrics.json</a> <a href="metrics_table.png">metrics_table.png</a>
<a href="depth_samples.png">depth_samples.png</a> <a href="trajectories.png">trajectories.png</a></p>
</body></html>
"""
    paths["report.html"].write_text(doc)
    return paths
