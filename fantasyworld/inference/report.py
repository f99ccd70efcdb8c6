"""``report.html``: the video, the depth video and a top-down trajectory plot.

The plot is inline SVG drawn by :mod:`fantasyworld.inference.plots` (matplotlib). Top-down view
of the first camera's frame: x (right) horizontal, z (forward) pointing up the page, y (down)
dropped. Both
trajectories are relative to their own first camera; the predicted one is scaled to the
requested path length when both move (the model's scene scale is arbitrary), and the
scale factor is printed in the legend. Short ticks show each camera's viewing direction.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from fantasyworld.geometry.cameras import invert_se3, relative_to_first
from fantasyworld.inference import plots

_COLORS = {"requested": plots.BLUE, "predicted": plots.RED}


def _relative_c2w(w2c: np.ndarray) -> np.ndarray:
    """Camera-to-world ``(T, 4, 4)`` of a trajectory expressed relative to its first camera."""
    return invert_se3(relative_to_first(np.asarray(w2c, dtype=np.float64)))


def _path_length(centres: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(centres, axis=0), axis=-1).sum()) if len(centres) > 1 else 0.0


def trajectory_svg(requested_w2c: np.ndarray | None, predicted_w2c: np.ndarray | None, size: int = 360) -> str:
    """Inline ``<svg>`` of the top-down camera paths (see the module docstring); the track
    lines carry the ids ``track-0`` (requested) and ``track-1`` (predicted)."""
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
    fig = plots.new_figure(size, size + 40)
    ax = fig.add_axes((0.14, 0.2, 0.82, 0.76))
    plots.top_view(ax, [plots.Track(name + (scale_note if name == "predicted" else ""), c2w[:, :3, 3][:, [0, 2]],
                                    c2w[:, :3, 2][:, [0, 2]], _COLORS[name]) for name, c2w in tracks.items()])
    return plots.to_svg(fig)


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
