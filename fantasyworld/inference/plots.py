"""The one plotting module (matplotlib): the figures of the generation report and of the
evaluation report and training validation.

Figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas (no ``pyplot``: no
global state, no display), sized in pixels at :data:`DPI`, and leave as inline SVG
(:func:`to_svg`, the generation report) or as RGB arrays (:func:`to_rgb`, PNG files and
TensorBoard images).

Top views (:func:`top_view`) share one convention: the reference camera's frame (camera 0 of
the trajectory or of the ground truth), OpenCV axes, x (right) along the page and z (forward)
up the page, y (down) dropped; each track is its camera centres as a line, a dot at its first
camera and short ticks along the viewing directions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

__all__ = ["BLUE", "DPI", "RED", "Track", "image_rows", "new_figure", "table", "to_rgb", "to_svg", "top_view"]

DPI = 100
BLUE, RED = "#1f77b4", "#d62728"
_MAX_TICKS = 12


def new_figure(width_px: int, height_px: int) -> Figure:
    """A white figure of ``width_px x height_px`` pixels on an Agg canvas."""
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def to_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as ``(H, W, 3)`` uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def to_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (XML prologue dropped)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


@dataclass
class Track:
    """One camera path of a top view: ``centres`` and ``forward`` ``(T, 2)`` as (x, z) in the
    reference frame (non-finite rows are skipped), a legend ``name`` and a ``color``."""

    name: str
    centres: np.ndarray
    forward: np.ndarray
    color: str


def top_view(ax, tracks: list[Track], title: str | None = None, tick: float = 0.12) -> None:
    """Draw ``tracks`` on ``ax`` (module docstring); ticks are ``tick`` x the extent long.

    Each track's line carries the SVG id ``track-<i>``. A view without finite points shows an
    empty unit square.
    """
    pts = np.concatenate([t.centres for t in tracks]) if tracks else np.zeros((0, 2))
    pts = pts[np.isfinite(pts).all(-1)]
    lo, hi = (pts.min(0), pts.max(0)) if len(pts) else (np.zeros(2), np.ones(2))
    extent = max(float((hi - lo).max()), 1e-3)
    centre, half = (lo + hi) / 2, 0.5 * extent + 1.5 * tick * extent
    for i, t in enumerate(tracks):
        ok = np.isfinite(t.centres).all(-1) & np.isfinite(t.forward).all(-1)
        c, f = t.centres[ok], t.forward[ok]
        if not len(c):
            continue
        ax.plot(c[:, 0], c[:, 1], color=t.color, lw=2, label=t.name, gid=f"track-{i}")
        ax.plot(c[:1, 0], c[:1, 1], "o", color=t.color, ms=5)
        step = max(1, len(c) // _MAX_TICKS)
        norm = np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-9)
        ends = c + tick * extent * f / norm
        segments = np.stack([c, ends], 1)[::step]  # (K, 2, 2)
        ax.add_collection(LineCollection(segments, colors=t.color, linewidths=1, alpha=0.7))
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal")
    ax.set_facecolor("#fafafa")
    ax.set_xlabel("x (right)", fontsize=9, color="#666666")
    ax.set_ylabel("z (forward)", fontsize=9, color="#666666")
    ax.tick_params(labelsize=7, colors="#999999")
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False, ncol=1)


def image_rows(blocks: list[tuple[str, list[tuple[str, list[np.ndarray]]]]], panel: int = 128,
               min_width: int = 420) -> Figure:
    """A figure of titled blocks, each a list of labelled rows of ``(h, w, 3)`` uint8 panels.

    Panels are enlarged by an integer factor (nearest neighbour) to about ``panel`` pixels on
    their long side; every row is as tall as the first panel. An empty ``blocks`` gives a blank
    ``min_width x 40`` figure.
    """
    if not blocks:
        return new_figure(min_width, 40)
    first = blocks[0][1][0][1][0]
    scale = max(1, panel // max(first.shape[:2]))
    ph, pw = first.shape[0] * scale, first.shape[1] * scale
    title_h, label_h, gap = 22, 16, 6
    ncols = max(len(panels) for _, rows in blocks for _, panels in rows)
    width = max(ncols * (pw + gap) + gap, min_width)
    height = sum(title_h + len(rows) * (label_h + ph + gap) for _, rows in blocks) + gap
    fig = new_figure(width, height)
    y = gap  # pixels from the top
    for title, rows in blocks:
        fig.text(gap / width, 1 - (y + 14) / height, title, fontsize=10)
        y += title_h
        for label, panels in rows:
            fig.text(gap / width, 1 - (y + 12) / height, label, fontsize=8, color="#3c3c3c")
            y += label_h
            for j, arr in enumerate(panels):
                ax = fig.add_axes((((gap + j * (pw + gap)) / width), 1 - (y + ph) / height, pw / width, ph / height))
                ax.imshow(np.ascontiguousarray(arr), interpolation="nearest")
                ax.set_axis_off()
            y += ph + gap
    return fig


def table(rows: list[list[str]], lines: list[tuple[str, str]], char_px: float = 7.5, row_px: int = 20) -> Figure:
    """A figure of text ``lines`` (``(text, color)``) above a table: ``rows[0]`` is the header,
    alternate body rows are shaded; the size follows the longest cell of each column."""
    widths = [max(len(r[j]) for r in rows) * char_px + 16 for j in range(len(rows[0]))]
    text_h = 18 * len(lines) + 8
    width = int(max(sum(widths) + 16, max((len(t) for t, _ in lines), default=0) * char_px + 16))
    height = int(text_h + row_px * len(rows) + 16)
    fig = new_figure(width, height)
    for i, (text, color) in enumerate(lines):
        fig.text(8 / width, 1 - (6 + 18 * i + 13) / height, text, fontsize=10, color=color)
    ax = fig.add_axes((8 / width, 8 / height, sum(widths) / width, row_px * len(rows) / height))
    ax.set_axis_off()
    cells = ax.table(cellText=rows[1:], colLabels=rows[0], colWidths=[w / sum(widths) for w in widths],
                     cellLoc="left", loc="upper left", bbox=(0, 0, 1, 1))
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    for (r, _), cell in cells.get_celld().items():
        cell.set_edgecolor("white")
        cell.set_facecolor("#e6e6e6" if r == 0 else ("#f6f6f6" if r % 2 == 0 else "white"))
    return fig
