"""``report.html``: the video, the depth video and a top-down trajectory plot.

The plot is inline SVG (no plotting library). Top-down view of the first camera's frame:
x (right) horizontal, z (forward) pointing up the page, y (down) dropped. Both
trajectories are relative to their own first camera; the predicted one is scaled to the
requested path length when both move (the model's scene scale is arbitrary), and the
scale factor is printed in the legend. Short ticks show each camera's viewing direction.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from fantasyworld.geometry.cameras import invert_se3, relative_to_first

_COLORS = {"requested": "#1f77b4", "predicted": "#d62728"}


def _relative_c2w(w2c: np.ndarray) -> np.ndarray:
    """Camera-to-world ``(T, 4, 4)`` of a trajectory expressed relative to its first camera."""
    return invert_se3(relative_to_first(np.asarray(w2c, dtype=np.float64)))


def _path_length(centres: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(centres, axis=0), axis=-1).sum()) if len(centres) > 1 else 0.0


def trajectory_svg(requested_w2c: np.ndarray | None, predicted_w2c: np.ndarray | None, size: int = 360) -> str:
    """Inline ``<svg>`` of the top-down camera paths (see the module docstring)."""
    tracks: dict[str, np.ndarray] = {}
    if requested_w2c is not None:
        tracks["requested"] = _relative_c2w(requested_w2c)
    scale_note = ""
    if predicted_w2c is not None:
        pred = _relative_c2w(predicted_w2c)
        if "requested" in tracks:
            lr, lp = _path_length(tracks["requested"][:, :3, 3]), _path_length(pred[:, :3, 3])
            if lr > 1e-9 and lp > 1e-9 and np.isfinite(lp):
                pred[:, :3, 3] *= lr / lp
                scale_note = f" (scaled x{lr / lp:.3g})"
        tracks["predicted"] = pred
    pts = [c[:, :3, 3][:, [0, 2]] for c in tracks.values()]
    allp = np.concatenate(pts) if pts else np.zeros((1, 2))
    allp = allp[np.isfinite(allp).all(-1)] if np.isfinite(allp).any() else np.zeros((1, 2))
    lo, hi = allp.min(0), allp.max(0)
    extent = max(float((hi - lo).max()), 1e-3)
    tick = 0.12 * extent
    centre = (lo + hi) / 2
    half = 0.5 * extent + tick * 1.5
    pad = 30

    def to_px(p: np.ndarray) -> tuple[float, float]:
        x = pad + (p[0] - centre[0] + half) / (2 * half) * (size - 2 * pad)
        y = size - pad - (p[1] - centre[1] + half) / (2 * half) * (size - 2 * pad)
        return float(x), float(y)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 40}" '
             f'viewBox="0 0 {size} {size + 40}" font-family="sans-serif" font-size="12">',
             f'<rect width="{size}" height="{size}" fill="#fafafa" stroke="#ccc"/>',
             f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" fill="#666">x (right)</text>',
             f'<text x="12" y="{size / 2}" fill="#666" transform="rotate(-90 12 {size / 2})" '
             'text-anchor="middle">z (forward)</text>']
    legend_y = size + 16
    for j, (name, c2w) in enumerate(tracks.items()):
        color = _COLORS[name]
        centres = c2w[:, :3, 3][:, [0, 2]]
        fwd = c2w[:, :3, 2][:, [0, 2]]
        ok = np.isfinite(centres).all(-1) & np.isfinite(fwd).all(-1)
        px = [to_px(p) for p in centres[ok]]
        if px:
            poly = " ".join(f"{x:.1f},{y:.1f}" for x, y in px)
            parts.append(f'<polyline points="{poly}" fill="none" stroke="{color}" stroke-width="2"/>')
            step = max(1, len(centres) // 12)
            for i in np.flatnonzero(ok)[::step]:
                a, b = to_px(centres[i]), to_px(centres[i] + tick * fwd[i] / max(np.linalg.norm(fwd[i]), 1e-9))
                parts.append(f'<line x1="{a[0]:.1f}" y1="{a[1]:.1f}" x2="{b[0]:.1f}" y2="{b[1]:.1f}" '
                             f'stroke="{color}" stroke-width="1" opacity="0.7"/>')
            parts.append(f'<circle cx="{px[0][0]:.1f}" cy="{px[0][1]:.1f}" r="4" fill="{color}"/>')
        label = name + (scale_note if name == "predicted" else "")
        parts.append(f'<rect x="{10 + 180 * j}" y="{legend_y - 9}" width="12" height="3" fill="{color}"/>'
                     f'<text x="{26 + 180 * j}" y="{legend_y}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_report(
    path: str | Path,
    settings: dict,
    requested_w2c: np.ndarray | None,
    predicted_w2c: np.ndarray | None,
    files: list[str],
    timings: dict[str, float] | None = None,
) -> None:
    """Write ``report.html`` next to ``video.mp4`` and ``depth.mp4`` (linked relatively)."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in settings.items())
    trows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.2f} s</td></tr>" for k, v in (timings or {}).items())
    links = " ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>' for f in files)
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>FantasyWorld generation</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1100px}} .row{{display:flex;gap:16px;flex-wrap:wrap}}
figure{{margin:0}} video{{max-width:520px;width:100%;image-rendering:pixelated}}
th{{text-align:left;padding-right:12px}}
td,th{{font-size:13px;vertical-align:top}}</style></head><body>
<h1>FantasyWorld generation</h1>
<p>{html.escape(str(settings.get("prompt", "")))}</p>
<div class="row">
<figure><video src="video.mp4" controls autoplay loop muted playsinline></video>
<figcaption>video.mp4</figcaption></figure>
<figure><video src="depth.mp4" controls autoplay loop muted playsinline></video>
<figcaption>depth.mp4 (inverse depth, Turbo: near red, far blue)</figcaption></figure>
</div>
<h2>Camera trajectory (top view)</h2>
<div class="row"><figure>{trajectory_svg(requested_w2c, predicted_w2c)}
<figcaption>first-camera frame; requested vs predicted; ticks show viewing directions</figcaption></figure>
<table>{rows}</table></div>
<h2>Timings</h2><table>{trows}</table>
<h2>Files</h2><p>{links}</p>
</body></html>
"""
    Path(path).write_text(doc)
