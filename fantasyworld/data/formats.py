"""The seed dataset layout: metadata records, path resolution, video and array readers.

Layout (paths relative to the dataset root ``ROOT``)::

    ROOT/metadata.json
    ROOT/videos/<clip>.mp4                  RGB video, T frames, H x W
    ROOT/depth/<clip>/frame_0000.npy ...    per-frame [H, W] z-depth
                                            (or depth/<clip>.npy|.npz holding [T, H, W])
    ROOT/points/<clip>/frame_0000.npy ...   per-frame [H, W, 3] world points
                                            (or points/<clip>.npy|.npz holding [T, H, W, 3])
    ROOT/camera_params/<clip>.txt           T rows x 12: row-major 3x4 world-to-camera, OpenCV

``metadata.json`` is ``{"version": 1, "clips": [record, ...]}`` (a bare list of records,
or a dict ``{clip_id: record}``, is accepted too). A record::

    {"clip_id": "clip_0000", "prompt": "...", "fps": 16,
     "video": "videos/clip_0000.mp4", "depth": "depth/clip_0000.npy",
     "points": "points/clip_0000.npy", "cameras": "camera_params/clip_0000.txt",
     "camera_format": "seed",
     "intrinsics": [fx, fy, cx, cy]}

Only ``clip_id`` is required; paths default to the layout above. **Intrinsics live in the
record** (the seed does not say where): ``[fx, fy, cx, cy]`` for all frames or a list of T
such rows, in pixels at the stored video resolution with the corner pixel convention
(pixel centre at ``u + 0.5``; centred ``cx = W / 2``). Without them the loader assumes a
centred pinhole with a 60 degree horizontal field of view (``DEFAULT_FOV_DEG``).
``camera_format`` may name any format of :func:`fantasyworld.geometry.camera_io.read_cameras`
(default ``seed``); formats with their own intrinsics override the record's.

Depth is z-depth along the optical axis; pixels with non-positive depth are invalid.
Depth/points must be float arrays at the video resolution.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from fantasyworld.errors import (
    BAD_DTYPE,
    BAD_INTRINSICS,
    BAD_METADATA,
    BAD_SHAPE,
    CORRUPT_VIDEO,
    DUPLICATE_ID,
    FRAME_COUNT,
    MISSING_FILE,
    NON_FINITE,
    PATH_ESCAPE,
    DataError,
)
from fantasyworld.geometry.camera_io import CAMERA_FORMATS

DEFAULT_FOV_DEG = 60.0
METADATA_NAME = "metadata.json"
_FRAME_RE = re.compile(r"(\d+)")


class Reporter:
    """Either raises each problem (loader) or collects it (validator)."""

    def __init__(self, collect: bool = False):
        self.collect = collect
        self.problems: list = []

    def __call__(self, err: DataError) -> None:
        if not self.collect:
            raise err
        self.problems.append(err.problem)


@dataclass
class ClipRecord:
    """One clip of the seed layout; paths are absolute (already checked to stay in root)."""

    clip_id: str
    prompt: str
    video: Path
    depth: Path
    points: Path
    cameras: Path
    camera_format: str = "seed"
    fps: float = 16.0
    intrinsics: np.ndarray | None = None  # (4,) or (T, 4) fx fy cx cy, pixels at video res
    extra: dict = field(default_factory=dict)


def resolve_in_root(root: Path, rel: str, meta_path: Path, report: Reporter) -> Path | None:
    """``root / rel`` normalised; reports ``path_escapes_root`` if it leaves ``root``
    (absolute paths, ``..``, or a symlink whose target lies outside) and returns ``None`` then.

    The check is on the resolved path (``os.path.realpath``), so a link inside the dataset
    that points at a file elsewhere is refused before anything reads it."""
    root_abs = os.path.abspath(root)
    full = os.path.normpath(os.path.join(root_abs, rel))
    if os.path.commonpath([root_abs, full]) != root_abs:
        report(DataError(meta_path, PATH_ESCAPE, f"path {rel!r} escapes the dataset root"))
        return None
    if not inside_root(root, Path(full)):
        report(DataError(meta_path, PATH_ESCAPE, f"path {rel!r} is a symlink that resolves outside the dataset root"))
        return None
    return Path(full)


def inside_root(root: Path, path: Path) -> bool:
    """Whether ``path`` resolved (symlinks followed, ``os.path.realpath``) lies inside the
    resolved ``root``; a path that does not exist counts by the part that does."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _default_array_path(root: Path, folder: str, clip_id: str) -> str:
    for suffix in (".npy", ".npz"):
        if (root / folder / f"{clip_id}{suffix}").exists():
            return f"{folder}/{clip_id}{suffix}"
    return f"{folder}/{clip_id}"


def load_metadata(root: str | Path, report: Reporter | None = None) -> list[ClipRecord]:
    """Parse ``ROOT/metadata.json`` into :class:`ClipRecord` s (see the module docstring).

    Problems (missing/corrupt metadata, duplicate ids, escaping paths, malformed
    intrinsics) go to ``report`` (default: raise :class:`DataError`).
    """
    report = report or Reporter()
    root = Path(root)
    meta_path = root / METADATA_NAME
    if not meta_path.exists():
        hint = ""
        if (root / "index.json").is_file():  # data.cache.INDEX_NAME (cache imports this module)
            hint = (f" (this folder is a latent cache written by `fantasyworld data cache`: train from it with "
                    f"data.cache_dir={root} data.root=null)")
        report(DataError(meta_path, MISSING_FILE, "file does not exist" + hint))
        return []
    try:
        data = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report(DataError(meta_path, BAD_METADATA, f"not valid JSON ({exc})"))
        return []
    if isinstance(data, dict) and "clips" in data:
        entries = data["clips"]
        where = "'clips'"
    elif isinstance(data, dict):
        entries = [{"clip_id": k, **v} if isinstance(v, dict) else v for k, v in data.items()]
        where = "the top-level object"
    else:
        entries = data
        where = "the top level"
    if not isinstance(entries, list):
        report(DataError(meta_path, BAD_METADATA,
                         f"{where} must be a list of clip records, got {_json_type(entries)}"))
        return []
    if not entries:
        report(DataError(meta_path, BAD_METADATA, f"{where} holds no clip records (an empty dataset)"))
        return []
    records: list[ClipRecord] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            report(DataError(meta_path, BAD_METADATA,
                             f"record {i} must be an object with a clip_id, got {_json_type(entry)}"))
            continue
        clip_id = entry.get("clip_id", entry.get("id", entry.get("video_id")))
        if clip_id is None:
            report(DataError(meta_path, BAD_METADATA, f"record {i} has no clip_id"))
            continue
        clip_id = str(clip_id)
        if clip_id in seen:
            report(DataError(meta_path, DUPLICATE_ID, f"clip id {clip_id!r} appears more than once"))
            continue
        seen.add(clip_id)
        rels = {
            "video": entry.get("video", f"videos/{clip_id}.mp4"),
            "depth": entry.get("depth", _default_array_path(root, "depth", clip_id)),
            "points": entry.get("points", _default_array_path(root, "points", clip_id)),
            "cameras": entry.get("cameras", f"camera_params/{clip_id}.txt"),
        }
        bad_paths = [k for k, v in rels.items() if not isinstance(v, str) or not v]
        if bad_paths:
            report(DataError(meta_path, BAD_METADATA, f"clip {clip_id!r}: {bad_paths[0]} must be a path string, "
                                                      f"got {_json_type(rels[bad_paths[0]])}"))
            continue
        paths = {k: resolve_in_root(root, str(v), meta_path, report) for k, v in rels.items()}
        if any(p is None for p in paths.values()):
            continue
        prompt = entry.get("prompt", entry.get("caption", ""))
        if not isinstance(prompt, str):
            report(DataError(meta_path, BAD_METADATA,
                             f"clip {clip_id!r}: prompt must be a string, got {_json_type(prompt)}"))
            continue
        fps = entry.get("fps", 16.0)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            report(DataError(meta_path, BAD_METADATA,
                             f"clip {clip_id!r}: fps must be a positive number, got {_json_type(fps)} {fps!r:.40}"))
            continue
        fmt = entry.get("camera_format", "seed")
        if not isinstance(fmt, str) or (fmt != "auto" and fmt not in CAMERA_FORMATS):
            report(DataError(meta_path, BAD_METADATA,
                             f"clip {clip_id!r}: unknown camera_format {fmt!r:.40} "
                             f"(known: auto, {', '.join(CAMERA_FORMATS)})"))
            continue
        intr = entry.get("intrinsics")
        if intr is not None:
            try:
                intr = np.asarray(intr, dtype=np.float64)
            except (TypeError, ValueError):
                report(DataError(meta_path, BAD_INTRINSICS,
                                 f"clip {clip_id!r}: intrinsics must be [fx, fy, cx, cy] numbers (or a list of such "
                                 f"rows), got {_json_type(intr)}"))
                continue
            bad = intr.shape[-1:] != (4,) or intr.ndim > 2
            if bad or not np.isfinite(intr).all() or (intr[..., :2] <= 0).any():
                report(DataError(meta_path, BAD_INTRINSICS,
                                 f"clip {clip_id!r}: intrinsics must be finite [fx, fy, cx, cy] rows "
                                 f"with positive focal lengths, got shape {intr.shape}"))
                continue
        records.append(ClipRecord(
            clip_id=clip_id,
            prompt=prompt,
            video=paths["video"], depth=paths["depth"], points=paths["points"], cameras=paths["cameras"],
            camera_format=fmt,
            fps=float(fps),
            intrinsics=intr,
            extra={k: v for k, v in entry.items() if k not in rels and k not in ("clip_id", "prompt")},
        ))
    return records


def _json_type(value: object) -> str:
    """The JSON name of ``value``'s type, for messages about malformed metadata."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def write_metadata(root: str | Path, records: list[dict]) -> None:
    """Write ``metadata.json`` with ``{"version": 1, "clips": records}`` (through a
    temporary file and a rename, so a reader never sees it half-written)."""
    path = Path(root, METADATA_NAME)
    tmp = path.with_name(METADATA_NAME + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "clips": records}, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# videos
def _pyav() -> ModuleType:
    """PyAV, imported when a video is first read or written (a latent cache needs none)."""
    import av
    import av.video.reformatter  # noqa: F401  (the submodule read_video uses)

    return av


def probe_video(path: Path) -> tuple[int, int, int]:
    """``(num_frames_from_header, height, width)``; raises ``missing_file`` / ``corrupt_video``.
    The header count may be 0 when the container does not store it."""
    if not path.exists():
        raise DataError(path, MISSING_FILE, "file does not exist")
    av = _pyav()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return int(stream.frames or 0), int(stream.codec_context.height), int(stream.codec_context.width)
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(path, CORRUPT_VIDEO, f"cannot open video ({type(exc).__name__}: {exc})") from None


def read_video(path: Path, indices: np.ndarray | None = None) -> np.ndarray:
    """Decode RGB frames ``(N, H, W, 3)`` uint8 with PyAV.

    Args:
        indices: sorted frame indices to keep (decoding stops after the last one);
            ``None`` decodes every frame.

    Raises:
        DataError: ``missing_file``, ``corrupt_video`` (undecodable), or
            ``frame_count_mismatch`` when the video ends before the last index.
    """
    if not path.exists():
        raise DataError(path, MISSING_FILE, "file does not exist")
    wanted = None if indices is None else {int(i): None for i in indices}
    last = None if indices is None else int(max(indices))
    frames: list[np.ndarray] = []
    count = 0
    # one reformatter reuses its swscale context: ~4x faster than frame.to_ndarray("rgb24")
    # on small frames, identical pixels
    av = _pyav()
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if wanted is None:
                    frames.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
                elif count in wanted:
                    wanted[count] = reformatter.reformat(frame, format="rgb24").to_ndarray()
                count += 1
                if last is not None and count > last:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(path, CORRUPT_VIDEO, f"cannot decode video ({type(exc).__name__}: {exc})") from None
    if wanted is not None:
        if last is not None and count <= last:
            raise DataError(path, FRAME_COUNT,
                            f"video has {count} frames, frame {last} was requested")
        return np.stack([wanted[int(i)] for i in indices])
    if not frames:
        raise DataError(path, CORRUPT_VIDEO, "video has no decodable frames")
    return np.stack(frames)


def write_video(path: Path, frames: np.ndarray, fps: float = 16.0, crf: int = 18) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB as H.264 mp4 (yuv420p; H and W must be even)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    av = _pyav()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ----------------------------------------------------------------------------------------
# depth / point arrays
class ArraySource:
    """Per-frame arrays of one clip: a ``.npy`` ``(T, ...)`` (memory-mapped), a ``.npz``
    (key ``name`` or its only array), or a directory of ``frame_XXXX.npy`` files (sorted
    by the number in the name).

    Args:
        path: file or directory.
        name: ``"depth"`` (frames ``[H, W]``) or ``"points"`` (frames ``[H, W, 3]``).
        root: the dataset root; per-frame files that resolve outside it (symlinks) raise
            ``path_escapes_root`` before they are opened.
    """

    def __init__(self, path: Path, name: str, root: Path | None = None):
        self.path = path
        self.name = name
        self.files: list[Path] | None = None
        self.array: np.ndarray | None = None
        if path.is_dir():
            files = [p for p in path.iterdir() if p.suffix == ".npy"]
            if not files:
                raise DataError(path, MISSING_FILE, f"no per-frame .npy files in {name} folder")
            outside = [p for p in files if root is not None and not inside_root(root, p)]
            if outside:
                raise DataError(outside[0], PATH_ESCAPE, "is a symlink that resolves outside the dataset root")

            def key(p: Path) -> tuple[int, str]:
                nums = _FRAME_RE.findall(p.stem)
                return (int(nums[-1]) if nums else -1, p.name)

            self.files = sorted(files, key=key)
            first = self._load(self.files[0])
            self.frame_shape = tuple(first.shape)
            self.dtype = first.dtype
            self.num_frames = len(self.files)
        elif path.exists():
            self.array = self._load(path)
            self.frame_shape = tuple(self.array.shape[1:])
            self.dtype = self.array.dtype
            self.num_frames = int(self.array.shape[0]) if self.array.ndim else 0
        else:
            raise DataError(path, MISSING_FILE, "file or folder does not exist")
        self._check_layout()

    def _load(self, path: Path) -> np.ndarray:
        try:
            if path.suffix == ".npz":
                with np.load(path) as data:
                    keys = list(data.keys())
                    key = self.name if self.name in keys else keys[0] if len(keys) == 1 else None
                    if key is None:
                        raise DataError(path, BAD_SHAPE, f"npz has keys {keys}, expected {self.name!r}")
                    return data[key]
            return np.load(path, mmap_mode="r")
        except DataError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(path, BAD_DTYPE, f"cannot read array ({exc})") from None

    def _check_layout(self) -> None:
        where = self.files[0] if self.files else self.path
        want = 2 if self.name == "depth" else 3
        if len(self.frame_shape) != want or (self.name == "points" and self.frame_shape[-1] != 3):
            per = "[H, W]" if self.name == "depth" else "[H, W, 3]"
            raise DataError(where, BAD_SHAPE, f"{self.name} frames have shape {list(self.frame_shape)}, "
                                              f"expected {per}")
        if not np.issubdtype(self.dtype, np.floating):
            raise DataError(where, BAD_DTYPE, f"{self.name} has dtype {self.dtype}, expected float16/32/64")

    def read(self, indices: np.ndarray | None = None, allow_nonfinite: bool = False,
             rows_cols: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Frames ``(N, *frame_shape)`` float32 (all frames if ``indices`` is None).

        ``rows_cols``: optional source row/column index vectors (nearest resampling, see
        :meth:`fantasyworld.data.transforms.CropResize.index_maps`) applied while reading;
        the output is then ``(N, len(rows), len(cols), ...)`` and only it is checked.
        Raises ``non_finite`` on NaN/inf unless ``allow_nonfinite``; ``bad_shape`` if a
        per-frame file's shape differs from the first one's.
        """
        idx = np.arange(self.num_frames) if indices is None else np.asarray(indices)

        def pick(arr: np.ndarray) -> np.ndarray:
            if rows_cols is None:
                return arr
            rows, cols = rows_cols
            return arr[:, rows[:, None], cols[None, :]]

        if self.array is not None:
            out = pick(np.asarray(self.array[idx])).astype(np.float32, copy=False)
            where = self.path
        else:
            frames = []
            for i in idx:
                arr = self._load(self.files[int(i)])
                if tuple(arr.shape) != self.frame_shape:
                    raise DataError(self.files[int(i)], BAD_SHAPE,
                                    f"frame shape {list(arr.shape)} differs from {list(self.frame_shape)}")
                if not np.issubdtype(arr.dtype, np.floating):
                    raise DataError(self.files[int(i)], BAD_DTYPE, f"dtype {arr.dtype}, expected float")
                frames.append(np.asarray(arr, dtype=np.float32))
            out = pick(np.stack(frames))
            where = None
        if not allow_nonfinite:
            bad = ~np.isfinite(out)
            if bad.any():
                first = int(np.argwhere(bad)[0, 0])
                path = where if where is not None else self.files[int(idx[first])]
                raise DataError(path, NON_FINITE, f"{int(bad.sum())} NaN/inf values in {self.name} "
                                                  f"(frame {int(idx[first])}); mark invalid pixels with 0")
        return out
