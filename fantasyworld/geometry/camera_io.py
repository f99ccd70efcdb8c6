"""Readers and writers for camera files found in the wild.

Every reader returns the internal convention of :mod:`fantasyworld.geometry.cameras`:
``w2c`` ``(T, 4, 4)`` float64 world-to-camera with OpenCV axes (x right, y down,
z forward) and, where the format has intrinsics, ``K`` ``(T, 3, 3)`` float64 pixel
intrinsics with the corner pixel convention (pixel centre at ``u + 0.5``). Each function
states the convention of its file. Problems raise :class:`~fantasyworld.errors.DataError`
naming the file and the line.

Formats (file conventions):

* seed ``camera_params/<clip>.txt``: T rows x 12 numbers, row-major 3x4 **w2c**, OpenCV.
* RealEstate10K / CameraCtrl / Wan-Fun txt: optional first line (URL or blank), then rows
  of 19 numbers ``timestamp fx fy cx cy k1 k2`` + row-major 3x4 **w2c**; intrinsics
  normalised by W (fx, cx) and H (fy, cy).
* official FantasyWorld JSON: ``focal_length`` (pixels), ``cameras_interp`` N x 4x4
  **c2w**, OpenCV axes; principal point ``cx=(W-1)/2, cy=(H-1)/2``.
* COLMAP text model: ``cameras.txt``, ``images.txt`` (``QW QX QY QZ TX TY TZ``: **w2c**,
  scalar-first quaternion), ``points3D.txt``.
* TUM: ``timestamp tx ty tz qx qy qz qw``: **c2w**, scalar-last quaternion.

The formats form a registry, :data:`CAMERA_FORMATS` (name -> :class:`CameraFormat`: reader,
whether the files carry intrinsics, how ``auto`` recognises them); :func:`read_cameras` and the
data loader go through it, so a new format is one :func:`register_camera_format` call. The
COLMAP reader and writer live in :mod:`fantasyworld.geometry.colmap`, the shared sequence type
and row parsing in :mod:`fantasyworld.geometry.camera_sequence` (both re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fantasyworld.errors import BAD_METADATA, CAMERA_COLUMNS, NON_FINITE, DataError
from fantasyworld.geometry.camera_sequence import (
    ROTATION_TOLERANCE,
    CameraSequence,
    check_rotations,
    missing,
    parse_rows,
    read_text,
    split_row,
)
from fantasyworld.geometry.cameras import (
    as_homogeneous,
    c2w_to_w2c,
    intrinsics_from_fov,
    make_intrinsics,
    normalized_to_pixel_intrinsics,
    pixel_to_normalized_intrinsics,
    w2c_to_c2w,
)
from fantasyworld.geometry.colmap import ColmapCamera, ColmapImage, ColmapModel, read_colmap_text, write_colmap_text
from fantasyworld.geometry.rotation import mat_to_quat, quat_to_mat

__all__ = [
    "CAMERA_FORMATS", "ROTATION_TOLERANCE", "CameraFormat", "CameraSequence", "ColmapCamera", "ColmapImage",
    "ColmapModel", "camera_format", "check_rotations", "read_cameras", "read_colmap_text", "read_official_json",
    "read_re10k_cameras", "read_seed_cameras", "read_tum", "register_camera_format", "sniff_camera_format",
    "write_colmap_text", "write_official_json", "write_re10k_cameras", "write_seed_cameras", "write_tum",
]

# ----------------------------------------------------------------------------------------
# seed rows
def read_seed_cameras(path: str | Path, check: bool = True) -> np.ndarray:
    """Seed ``camera_params/<clip>.txt``: one line per frame with 12 numbers, the row-major
    3x4 **world-to-camera** matrix ``[R | t]`` in OpenCV axes (commas or spaces).

    Returns:
        ``(T, 4, 4)`` float64 w2c.
    """
    path = Path(path)
    rows, _ = parse_rows(path, 12)
    w2c = as_homogeneous(rows.reshape(-1, 3, 4))
    if check:
        check_rotations(path, w2c)
    return w2c


def write_seed_cameras(path: str | Path, w2c: np.ndarray) -> None:
    """Write ``(T, 4, 4)`` (or ``(T, 3, 4)``) w2c as seed rows (12 numbers, ``%.9g``)."""
    w2c = np.asarray(w2c, dtype=np.float64)
    rows = w2c[:, :3, :4].reshape(-1, 12)
    Path(path).write_text("".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in rows))


# ----------------------------------------------------------------------------------------
# RealEstate10K / CameraCtrl / Wan-Fun
def read_re10k_cameras(path: str | Path, height: int, width: int, check: bool = True) -> CameraSequence:
    """RealEstate10K / CameraCtrl / Wan-Fun pose txt.

    File convention: the first line may be a URL (or blank, or any non-numeric text) and is
    skipped; each further line has 19 numbers ``timestamp fx fy cx cy k1 k2`` followed by
    the row-major 3x4 **world-to-camera** matrix (OpenCV axes). ``fx, cx`` are divided by
    the image width and ``fy, cy`` by the height; ``k1, k2`` (distortion) are ignored.

    Args:
        height, width: the resolution the returned pixel intrinsics refer to.

    Returns:
        :class:`CameraSequence` with w2c, pixel K and timestamps
        (``extra['url']`` holds the header line).
    """
    path = Path(path)
    rows, skipped = parse_rows(path, 19, skip_header=True)
    w2c = as_homogeneous(rows[:, 7:].reshape(-1, 3, 4))
    if check:
        check_rotations(path, w2c)
    k_norm = make_intrinsics(rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4])
    header = read_text(path).splitlines()[skipped - 1].strip() if skipped else ""
    return CameraSequence(
        w2c=w2c,
        K=normalized_to_pixel_intrinsics(k_norm, height, width),
        timestamps=rows[:, 0].copy(),
        extra={"url": header},
    )


def write_re10k_cameras(
    path: str | Path,
    w2c: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    timestamps: np.ndarray | None = None,
    url: str = "",
) -> None:
    """Write RealEstate10K rows (see :func:`read_re10k_cameras`); ``K`` in pixels at
    ``(height, width)`` is normalised on the way out. Timestamps default to the frame index
    (RealEstate10K uses microseconds; any number is accepted on read)."""
    w2c = np.asarray(w2c, dtype=np.float64)
    k_norm = pixel_to_normalized_intrinsics(np.asarray(K, dtype=np.float64), height, width)
    if k_norm.ndim == 2:
        k_norm = np.broadcast_to(k_norm, (len(w2c), 3, 3))
    ts = np.arange(len(w2c), dtype=np.float64) if timestamps is None else np.asarray(timestamps)
    lines = [url.strip()]
    for i in range(len(w2c)):
        vals = [ts[i], k_norm[i, 0, 0], k_norm[i, 1, 1], k_norm[i, 0, 2], k_norm[i, 1, 2], 0.0, 0.0]
        vals += list(w2c[i, :3, :4].reshape(-1))
        lines.append(" ".join(f"{v:.12g}" for v in vals))
    Path(path).write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# official FantasyWorld JSON
def read_official_json(path: str | Path, height: int, width: int, check: bool = True) -> CameraSequence:
    """Official FantasyWorld camera JSON (``examples/cameras/*.json``).

    File convention: ``{"focal_length": f, "cameras_interp": [N x 4x4]}`` where each matrix
    is **camera-to-world** with OpenCV axes and ``f`` is in pixels at the generation
    resolution (default 500 if absent, as the official code does). The official code puts
    the principal point at ``cx = (W - 1) / 2, cy = (H - 1) / 2`` and we keep exactly those
    numbers (half a pixel off-centre in our corner convention) so that cameras and Plücker
    rays match the official ones.

    Returns:
        :class:`CameraSequence` with w2c and pixel K at ``(height, width)``.
    """
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, CAMERA_COLUMNS, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or "cameras_interp" not in data:
        raise DataError(path, CAMERA_COLUMNS, "expected a JSON object with a 'cameras_interp' list")
    try:
        c2w = np.asarray(data["cameras_interp"], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, CAMERA_COLUMNS, "cameras_interp is not a numeric (N, 4, 4) array") from None
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise DataError(path, CAMERA_COLUMNS, f"cameras_interp has shape {c2w.shape}, expected (N, 4, 4)")
    if not np.isfinite(c2w).all():
        raise DataError(path, NON_FINITE, "NaN or inf in cameras_interp")
    c2w = as_homogeneous(c2w[:, :3, :4])
    if check:
        check_rotations(path, c2w)
    try:
        focal = float(data.get("focal_length", 500.0))
    except (TypeError, ValueError):
        raise DataError(path, CAMERA_COLUMNS, f"focal_length {data['focal_length']!r} is not a number") from None
    k = make_intrinsics(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)
    return CameraSequence(w2c=c2w_to_w2c(c2w), K=np.broadcast_to(k, (len(c2w), 3, 3)).copy())


def write_official_json(path: str | Path, w2c: np.ndarray, focal_length: float) -> None:
    """Write the official JSON (``cameras_interp`` as c2w, ``focal_length`` in pixels).
    The format has a single focal length and an implied principal point."""
    c2w = w2c_to_c2w(np.asarray(w2c, dtype=np.float64))
    payload = {"focal_length": float(focal_length), "cameras_interp": c2w.tolist()}
    Path(path).write_text(json.dumps(payload, indent=1))


# ----------------------------------------------------------------------------------------
# TUM
def read_tum(path: str | Path) -> CameraSequence:
    """TUM RGB-D trajectory: lines ``timestamp tx ty tz qx qy qz qw`` (``#`` comments).

    File convention: the pose of the camera's optical frame in the world, i.e.
    **camera-to-world**, quaternion scalar-last; the optical frame has OpenCV axes.
    """
    path = Path(path)
    rows, _ = parse_rows(path, 8)
    rot = quat_to_mat(torch.from_numpy(rows[:, 4:8])).numpy()
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = rows[:, 1:4]
    return CameraSequence(w2c=c2w_to_w2c(c2w), timestamps=rows[:, 0].copy())


def write_tum(path: str | Path, w2c: np.ndarray, timestamps: np.ndarray | None = None) -> None:
    """Write w2c ``(T, 4, 4)`` as a TUM trajectory (c2w, xyzw quaternion)."""
    c2w = w2c_to_c2w(np.asarray(w2c, dtype=np.float64))
    quat = mat_to_quat(torch.from_numpy(c2w[:, :3, :3])).numpy()
    ts = np.arange(len(c2w), dtype=np.float64) if timestamps is None else np.asarray(timestamps)
    lines = ["# timestamp tx ty tz qx qy qz qw (camera-to-world, OpenCV optical frame)"]
    for i in range(len(c2w)):
        vals = [ts[i], *c2w[i, :3, 3], *quat[i]]
        lines.append(" ".join(f"{v:.12g}" for v in vals))
    Path(path).write_text("\n".join(lines) + "\n")



# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraFormat:
    """One camera-file format of the registry :data:`CAMERA_FORMATS`.

    Attributes:
        name: the ``fmt`` value (``camera_format`` in a dataset's metadata).
        read: ``(path, height, width) -> CameraSequence``, w2c in OpenCV axes and, if the
            format carries them, pixel intrinsics at ``(height, width)`` (else ``K=None``).
        has_intrinsics: whether the files carry intrinsics; the loader keeps a record's own
            intrinsics for formats that do not.
        columns: ``auto`` sniffing: the column count of a file's last line, or None.
        suffix: ``auto`` sniffing: a file suffix (lower case, with the dot), or None.
        directory: ``auto`` sniffing: the format is a directory.
    """

    name: str
    read: Callable[[Path, int, int], CameraSequence]
    has_intrinsics: bool
    columns: int | None = None
    suffix: str | None = None
    directory: bool = False


#: name -> format; :func:`read_cameras` and ``auto`` sniffing go through it, in this order.
CAMERA_FORMATS: dict[str, CameraFormat] = {}


def register_camera_format(fmt: CameraFormat) -> CameraFormat:
    """Add (or replace) a format of :data:`CAMERA_FORMATS`; returns it."""
    CAMERA_FORMATS[fmt.name] = fmt
    return fmt


for _fmt in (
    CameraFormat("seed", lambda p, h, w: CameraSequence(w2c=read_seed_cameras(p)), False, columns=12),
    CameraFormat("re10k", read_re10k_cameras, True, columns=19),
    CameraFormat("official_json", read_official_json, True, suffix=".json"),
    CameraFormat("colmap", lambda p, h, w: read_colmap_text(p).to_sequence(h, w), True, directory=True),
    CameraFormat("tum", lambda p, h, w: read_tum(p), False, columns=8),
):
    register_camera_format(_fmt)


def camera_format(name: str, path: str | Path | None = None) -> CameraFormat:
    """The registered format ``name``; ``auto`` sniffs it from ``path`` (:func:`sniff_camera_format`)."""
    if name == "auto":
        if path is None:
            raise ValueError("camera format 'auto' needs the file to sniff")
        name = sniff_camera_format(path)
    if name not in CAMERA_FORMATS:
        raise DataError(path if path is not None else name, BAD_METADATA,
                        f"unknown camera format {name!r} (known: auto, {', '.join(CAMERA_FORMATS)})")
    return CAMERA_FORMATS[name]


def sniff_camera_format(path: str | Path) -> str:
    """``auto``: a directory format for a directory, else a suffix format by suffix, else by
    the column count of the last non-comment line."""
    path = Path(path)
    if path.is_dir():
        return next(f.name for f in CAMERA_FORMATS.values() if f.directory)
    for fmt in CAMERA_FORMATS.values():
        if fmt.suffix is not None and path.suffix.lower() == fmt.suffix:
            return fmt.name
    last = [ln for ln in read_text(path).splitlines() if ln.strip() and not ln.startswith("#")]
    ncols = len([p for p in split_row.split(last[-1].strip()) if p]) if last else 0
    by_columns = {f.columns: f.name for f in CAMERA_FORMATS.values() if f.columns is not None}
    if ncols not in by_columns:
        raise DataError(path, CAMERA_COLUMNS, f"cannot tell the format from {ncols} columns")
    return by_columns[ncols]


def read_cameras(
    path: str | Path, height: int, width: int, fmt: str = "auto", default_fov_deg: float = 60.0
) -> CameraSequence:
    """Read any registered camera file (:data:`CAMERA_FORMATS`) into w2c + pixel K at ``(height, width)``.

    ``fmt``: ``seed``, ``re10k``, ``official_json``, ``colmap`` (a directory), ``tum``, any
    registered format, or ``auto`` (``.json`` -> official, directory -> COLMAP, else by the
    column count of the last line: 12 seed, 19 RealEstate10K, 8 TUM). Formats without
    intrinsics get a centred pinhole with horizontal field of view ``default_fov_deg``.
    """
    path = Path(path)
    missing(path)
    seq = camera_format(fmt, path).read(path, height, width)
    if seq.K is None:
        seq.K = np.broadcast_to(intrinsics_from_fov(default_fov_deg, height, width), (len(seq), 3, 3)).copy()
    return seq
