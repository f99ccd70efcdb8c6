"""Input side of ``data annotate``: finding the videos, their prompts, and sampling frames.

* ``--videos`` is a folder (every file with a video suffix in it, not recursive) or a glob
  pattern (``"raw/**/*.mp4"``, recursive ``**`` allowed). The clip id is the file name
  without its suffix, with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``; two
  videos with the same id are an error.
* ``--prompts FILE``: a JSON object ``{name: prompt}`` (name = clip id, file name or file
  stem), a JSON list of ``{"video"|"clip_id": ..., "prompt": ...}`` records, or a text
  file of ``name<TAB>prompt`` lines. Clips without a prompt get ``""``.
* Frames ``start + stride * arange(frames)`` (start 0) are decoded with PyAV, then brought
  to ``--size HxW`` by :class:`~fantasyworld.data.transforms.CropResize` (scale to cover,
  centre crop; the loader's transform) or, without ``--size``, kept at the stored size
  with an odd last row/column dropped (H.264 4:2:0 needs even sizes).
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from fantasyworld.data.formats import read_video
from fantasyworld.data.transforms import CropResize, sample_frame_indices
from fantasyworld.errors import BAD_METADATA, CORRUPT_VIDEO, FRAME_COUNT, MISSING_FILE, DataError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def clip_id_for(path: Path) -> str:
    """Clip id of a video file: its stem with unsafe characters replaced by ``_``."""
    return _BAD_ID_CHARS.sub("_", path.stem) or "clip"


def find_videos(spec: str | Path) -> list[tuple[str, Path]]:
    """``(clip_id, path)`` of every video named by ``spec`` (a folder or a glob), sorted by id.

    Raises:
        DataError: ``missing_file`` when nothing matches, ``duplicate_clip_id`` (as
            ``bad_metadata``) when two files give the same id.
    """
    spec = str(spec)
    root = Path(spec)
    if root.is_dir():
        paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    else:
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not paths:
        raise DataError(spec, MISSING_FILE, "no video found (a folder of videos or a glob such as 'raw/*.mp4')")
    seen: dict[str, Path] = {}
    for p in paths:
        cid = clip_id_for(p)
        if cid in seen:
            raise DataError(p, BAD_METADATA, f"clip id {cid!r} is also the id of {seen[cid]}; rename one")
        seen[cid] = p
    return sorted(seen.items())


def load_prompts(path: str | Path | None) -> dict[str, str]:
    """Prompts by name (see the module docstring); ``{}`` without a file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DataError(path, MISSING_FILE, "prompts file does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, BAD_METADATA, f"not valid JSON ({exc})") from None
        if isinstance(data, dict):
            items = data.items()
        elif isinstance(data, list):
            items = []
            for i, rec in enumerate(data):
                name = rec.get("clip_id", rec.get("video")) if isinstance(rec, dict) else None
                if name is None or not isinstance(rec.get("prompt"), str):
                    raise DataError(path, BAD_METADATA, f"record {i} needs 'clip_id' (or 'video') and a string "
                                                        "'prompt'")
                items.append((name, rec["prompt"]))
        else:
            raise DataError(path, BAD_METADATA, "expected an object {name: prompt} or a list of records")
        out = {}
        for name, prompt in items:
            if not isinstance(prompt, str):
                raise DataError(path, BAD_METADATA, f"prompt of {name!r} is not a string")
            out[str(name)] = prompt
        return out
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" not in line:
            raise DataError(path, BAD_METADATA, f"line {lineno}: expected 'name<TAB>prompt'")
        name, prompt = line.split("\t", 1)
        out[name.strip()] = prompt.strip()
    return out


def prompt_for(prompts: dict[str, str], clip_id: str, path: Path) -> str | None:
    """The prompt of a clip by id, file name or stem (``None`` if absent)."""
    for key in (clip_id, path.name, path.stem, str(path)):
        if key in prompts:
            return prompts[key]
    return None


def video_fps(path: Path) -> float:
    """Average frame rate of the first video stream (16 if the container does not say)."""
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else 16.0
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(path, CORRUPT_VIDEO, f"cannot open video ({type(exc).__name__}: {exc})") from None


@dataclass
class SampledClip:
    """Frames of one clip as annotated.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 at the output size.
        indices: ``(T,)`` source frame indices.
        plan: the crop/resize from the stored size to the output size (apply it to
            ground-truth depth and intrinsics).
        fps: frame rate of the sampled clip (source rate / stride).
    """

    frames: np.ndarray
    indices: np.ndarray
    plan: CropResize
    fps: float


def output_plan(src_hw: tuple[int, int], size: tuple[int, int] | None) -> CropResize:
    """The crop/resize to ``size`` (or to the stored size made even)."""
    if size is not None:
        if size[0] % 2 or size[1] % 2 or min(size) < 16:
            raise ValueError(f"--size must be even and at least 16x16, got {size[0]}x{size[1]}")
        return CropResize.plan(src_hw, size)
    h, w = src_hw
    out = (h - h % 2, w - w % 2)
    return CropResize(src_hw, src_hw, out, 0, 0)


def sample_clip(path: Path, num_frames: int, stride: int, size: tuple[int, int] | None) -> SampledClip:
    """Decode frames ``stride * arange(num_frames)`` and bring them to the output size.

    Raises:
        DataError: ``missing_file`` / ``corrupt_video`` for an unreadable video,
            ``frame_count_mismatch`` when it is shorter than ``(num_frames - 1) * stride + 1``.
    """
    import torch

    fps = video_fps(path)
    span = (num_frames - 1) * stride + 1
    indices = sample_frame_indices(span, num_frames, stride, start=0)
    assert indices is not None
    try:
        frames = read_video(path, indices)
    except DataError as err:
        if err.kind == FRAME_COUNT:
            raise DataError(path, FRAME_COUNT, f"{err.message}: {num_frames} frames at stride {stride} need "
                                               f"{span}") from None
        raise
    plan = output_plan(frames.shape[1:3], size)
    if plan.resized_hw != plan.src_hw:
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)
        frames = plan.frames(video).permute(0, 2, 3, 1).contiguous().numpy()
    else:
        frames = frames[:, plan.top:plan.top + plan.out_hw[0], plan.left:plan.left + plan.out_hw[1]]
    return SampledClip(np.ascontiguousarray(frames), indices, plan, fps / stride)
