"""The quality report of an annotated dataset: ``report.json`` and ``report.html`` (PIL only).

Per clip (``report.json["clips"]``, one entry per video, in clip-id order):

=========================  ================================================================
``status``                 ``ok`` or ``rejected`` (with ``reason_code`` and ``reason``)
``registered_fraction``    share of sampled frames the camera estimator recovered
``interpolated``           frames filled by interpolation between registered neighbours
``reprojection_error``     mean SfM reprojection error (pixels)
``fov_deg``                horizontal field of view of the shared camera (degrees)
``depth_residual``         median over frames of the per-frame alignment residual
                           ``median |z_fit - z| / z`` at the SfM points (relative)
``scale``                  median per-frame depth scale (SfM units per estimator unit)
``scale_spread``           ``p90 / p10`` of the per-frame scales (``depth`` predictions;
                           1 = one scale for the whole clip)
``world_scale``            factor from SfM units to the written units (``units``)
``valid_fraction``         share of pixels with a valid depth
``masked_frames``          frames whose depth was dropped (alignment residual too high)
``seconds``                time per stage (decode, cameras, depth, align, write)
=========================  ================================================================

Thumbnails per clip: ``report/<clip>_depth.png`` (six frames over the aligned depth, Turbo
inverse depth, one colour range per clip) and ``report/<clip>_trajectory.png`` (top view
of the camera centres in the first camera's frame, x to the right, z up the page;
registered frames blue, interpolated orange, first camera circled).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fantasyworld.data.colormap import colorize_depth
from fantasyworld.geometry.cameras import invert_se3, relative_to_first

_BLUE, _ORANGE, _GREY = (31, 119, 180), (255, 127, 14), (170, 170, 170)


def depth_strip(frames: np.ndarray, depth: np.ndarray, count: int = 6, height: int = 96) -> Image.Image:
    """Frames over their aligned depth, ``count`` evenly spaced frames."""
    t = len(frames)
    idx = np.unique(np.linspace(0, t - 1, min(count, t)).round().astype(int))
    colour = colorize_depth(depth[idx])
    h, w = frames.shape[1:3]
    tw = max(1, int(round(w * height / h)))
    strip = Image.new("RGB", (len(idx) * (tw + 2), 2 * height + 2), "white")
    for j, i in enumerate(idx):
        strip.paste(Image.fromarray(frames[i]).resize((tw, height), Image.Resampling.BILINEAR), (j * (tw + 2), 0))
        strip.paste(Image.fromarray(colour[j]).resize((tw, height), Image.Resampling.NEAREST),
                    (j * (tw + 2), height + 2))
    return strip


def trajectory_top_view(w2c: np.ndarray, registered: np.ndarray, interpolated: np.ndarray,
                        size: int = 200) -> Image.Image:
    """Top view (x, z) of the camera centres in the first camera's frame."""
    img = Image.new("RGB", (size, size), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size - 1, size - 1], outline=(200, 200, 200))
    ok = np.isfinite(w2c).all(axis=(1, 2))
    if ok.sum() == 0:
        return img
    frames = np.flatnonzero(ok)
    c2w = invert_se3(relative_to_first(w2c[frames]))
    xz = c2w[:, [0, 2], 3]
    fwd = c2w[:, [0, 2], 2]
    lo, hi = xz.min(0), xz.max(0)
    extent = max(float((hi - lo).max()), 1e-6)
    centre, half, pad = (lo + hi) / 2, 0.6 * extent, 12

    def px(p: np.ndarray) -> tuple[float, float]:
        return (pad + (p[0] - centre[0] + half) / (2 * half) * (size - 2 * pad),
                size - pad - (p[1] - centre[1] + half) / (2 * half) * (size - 2 * pad))

    pts = [px(p) for p in xz]
    if len(pts) > 1:
        draw.line(pts, fill=_GREY, width=1)
    for k, (p, f, i) in enumerate(zip(xz, fwd, frames)):
        col = _ORANGE if interpolated[i] else _BLUE
        x, y = pts[k]
        n = max(float(np.linalg.norm(f)), 1e-9)
        draw.line([pts[k], px(p + 0.08 * extent * f / n)], fill=col, width=1)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=col)
    x0, y0 = pts[0]
    draw.ellipse([x0 - 5, y0 - 5, x0 + 5, y0 + 5], outline=(0, 0, 0))
    return img


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def summarize(entries: list[dict]) -> dict[str, Any]:
    """Dataset-level counts and medians over the clips."""
    ok = [e for e in entries if e.get("status") == "ok"]
    reasons: dict[str, int] = {}
    for e in entries:
        if e.get("status") != "ok":
            reasons[e.get("reason_code", "unknown")] = reasons.get(e.get("reason_code", "unknown"), 0) + 1

    def med(key: str) -> float | None:
        vals = [e[key] for e in ok if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
        return float(np.median(vals)) if vals else None

    return {"clips": len(entries), "ok": len(ok), "rejected": len(entries) - len(ok), "rejection_reasons": reasons,
            "median_registered_fraction": med("registered_fraction"),
            "median_reprojection_error": med("reprojection_error"), "median_depth_residual": med("depth_residual"),
            "median_valid_fraction": med("valid_fraction"), "median_seconds_per_clip": med("seconds_total")}


def write_report(root: Path, entries: list[dict], settings: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` for ``entries`` (one per clip)."""
    from fantasyworld.data.annotate.writer import write_json_atomic

    summary = summarize(entries)
    json_path = root / "report.json"
    write_json_atomic(json_path, {"version": 1, "settings": settings, "summary": summary, "clips": entries})
    rows = []
    for e in entries:
        ok = e.get("status") == "ok"
        thumbs = ""
        if ok:
            thumbs = "".join(f'<img src="{html.escape(e["thumbnails"][k])}" style="height:120px;margin-right:4px">'
                             for k in ("depth", "trajectory") if e.get("thumbnails", {}).get(k))
        status = "ok" if ok else f'<b style="color:#b00">rejected</b>: {html.escape(e.get("reason", ""))}'
        rows.append(
            f"<tr><td>{html.escape(e['clip_id'])}</td><td>{status}</td>"
            f"<td>{_fmt(e.get('registered_fraction'))}</td><td>{_fmt(len(e.get('interpolated') or []))}</td>"
            f"<td>{_fmt(e.get('reprojection_error'))}</td><td>{_fmt(e.get('fov_deg'))}</td>"
            f"<td>{_fmt(e.get('depth_residual'))}</td><td>{_fmt(e.get('scale'))}</td>"
            f"<td>{_fmt(e.get('scale_spread'))}</td><td>{_fmt(e.get('valid_fraction'))}</td>"
            f"<td>{_fmt(e.get('seconds_total'), 3)}</td><td>{thumbs}</td></tr>")
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["rejection_reasons"].items()) or "none"
    settings_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                            for k, v in settings.items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>annotation report</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}}</style></head><body>
<h1>Annotation report</h1>
<p>{summary['ok']} of {summary['clips']} clip(s) annotated, {summary['rejected']} rejected ({html.escape(reasons)}).
Median registered fraction {_fmt(summary['median_registered_fraction'])}, reprojection error
{_fmt(summary['median_reprojection_error'])} px, depth-alignment residual {_fmt(summary['median_depth_residual'])},
{_fmt(summary['median_seconds_per_clip'])} s per clip.</p>
<table><tr><th>clip</th><th>status</th><th>registered</th><th>interpolated</th><th>reproj. px</th>
<th>FoV deg</th><th>depth residual</th><th>scale</th><th>scale spread</th><th>valid</th><th>seconds</th>
<th>depth / trajectory (top view, first camera circled)</th></tr>
{''.join(rows)}</table>
<h2>Settings</h2><table>{settings_rows}</table>
<p>Field definitions: fantasyworld/data/annotate/report.py and docs/data.md.</p></body></html>
"""
    html_path = root / "report.html"
    tmp = html_path.with_name("report.html.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(html_path)
    return json_path, html_path
