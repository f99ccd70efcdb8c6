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
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fantasyworld.errors import CAMERA_COLUMNS, MISSING_FILE, NON_FINITE, NON_ORTHONORMAL, DataError
from fantasyworld.geometry.cameras import (
    as_homogeneous,
    c2w_to_w2c,
    make_intrinsics,
    normalized_to_pixel_intrinsics,
    pixel_to_normalized_intrinsics,
    resize_intrinsics,
    rotation_orthonormality_error,
    w2c_to_c2w,
)
from fantasyworld.geometry.rotation import mat_to_quat, quat_to_mat, wxyz_to_xyzw, xyzw_to_wxyz

#: Tolerance of :func:`check_rotations`: files written with 6 decimals reach ~1e-6.
ROTATION_TOLERANCE = 1e-3

_SPLIT = re.compile(r"[,\s]+")


@dataclass
class CameraSequence:
    """Cameras of one clip in the internal convention.

    Attributes:
        w2c: ``(T, 4, 4)`` float64 world-to-camera, OpenCV axes.
        K: ``(T, 3, 3)`` float64 pixel intrinsics (corner convention) or ``None`` when the
            file has none (seed rows, TUM).
        timestamps: ``(T,)`` float64 or ``None``.
        names: per-frame names (COLMAP image names) or ``None``.
    """

    w2c: np.ndarray
    K: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.w2c.shape[0])


def _missing(path: Path) -> None:
    if not path.exists():
        raise DataError(path, MISSING_FILE, "file does not exist")


def _parse_rows(path: Path, ncols: int, skip_header: bool = False) -> tuple[np.ndarray, int]:
    """Numeric rows of a text file; blank and ``#`` lines skipped. Returns rows and the
    number of leading lines skipped as a header."""
    _missing(path)
    lines = path.read_text().splitlines()
    rows: list[list[float]] = []
    skipped = 0
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p for p in _SPLIT.split(text) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            if skip_header and not rows and skipped == 0:
                skipped = lineno
                continue
            raise DataError(path, CAMERA_COLUMNS, f"line {lineno}: not numeric: {text[:60]!r}") from None
        if len(values) != ncols:
            raise DataError(
                path, CAMERA_COLUMNS, f"line {lineno}: expected {ncols} columns, found {len(values)}"
            )
        rows.append(values)
    if not rows:
        raise DataError(path, CAMERA_COLUMNS, f"no camera rows (expected {ncols} numbers per line)")
    arr = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise DataError(path, NON_FINITE, f"row {bad + 1}: NaN or inf in camera values")
    return arr, skipped


def check_rotations(path: str | Path, w2c: np.ndarray, tol: float = ROTATION_TOLERANCE) -> None:
    """Raise :class:`DataError` if any rotation block of ``(T, 4, 4)`` is not orthonormal
    with determinant +1 within ``tol`` (max-abs entry of ``R R^T - I`` and ``|det - 1|``)."""
    err = rotation_orthonormality_error(w2c[:, :3, :3])
    if np.any(err > tol):
        idx = int(np.argmax(err))
        raise DataError(
            path, NON_ORTHONORMAL, f"row {idx + 1}: rotation not orthonormal (error {err[idx]:.3g} > {tol})"
        )


# ----------------------------------------------------------------------------------------
# seed rows
def read_seed_cameras(path: str | Path, check: bool = True) -> np.ndarray:
    """Seed ``camera_params/<clip>.txt``: one line per frame with 12 numbers, the row-major
    3x4 **world-to-camera** matrix ``[R | t]`` in OpenCV axes (commas or spaces).

    Returns:
        ``(T, 4, 4)`` float64 w2c.
    """
    path = Path(path)
    rows, _ = _parse_rows(path, 12)
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
    rows, skipped = _parse_rows(path, 19, skip_header=True)
    w2c = as_homogeneous(rows[:, 7:].reshape(-1, 3, 4))
    if check:
        check_rotations(path, w2c)
    k_norm = make_intrinsics(rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4])
    header = path.read_text().splitlines()[skipped - 1].strip() if skipped else ""
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
    _missing(path)
    data = json.loads(path.read_text())
    c2w = np.asarray(data["cameras_interp"], dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise DataError(path, CAMERA_COLUMNS, f"cameras_interp has shape {c2w.shape}, expected (N, 4, 4)")
    if not np.isfinite(c2w).all():
        raise DataError(path, NON_FINITE, "NaN or inf in cameras_interp")
    c2w = as_homogeneous(c2w[:, :3, :4])
    if check:
        check_rotations(path, c2w)
    focal = float(data.get("focal_length", 500.0))
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
    rows, _ = _parse_rows(path, 8)
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
# COLMAP text model
_COLMAP_PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8,
                  "FULL_OPENCV": 12, "SIMPLE_RADIAL_FISHEYE": 4, "RADIAL_FISHEYE": 5, "OPENCV_FISHEYE": 8}


_SINGLE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def K(self) -> np.ndarray:
        """Pinhole part as ``(3, 3)`` pixel intrinsics (COLMAP already uses the corner
        convention: the centre of the top-left pixel is ``(0.5, 0.5)``). Distortion
        parameters are ignored."""
        p = self.params
        if self.model in _SINGLE_FOCAL:
            return make_intrinsics(p[0], p[0], p[1], p[2])
        return make_intrinsics(p[0], p[1], p[2], p[3])


@dataclass
class ColmapImage:
    image_id: int
    qvec_wxyz: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray  # (N, 2) keypoints, corner convention
    point3d_ids: np.ndarray  # (N,) int64, -1 for none

    def w2c(self) -> np.ndarray:
        """``(4, 4)`` world-to-camera (COLMAP stores w2c with OpenCV axes)."""
        out = np.eye(4)
        out[:3, :3] = quat_to_mat(wxyz_to_xyzw(torch.from_numpy(self.qvec_wxyz))).numpy()
        out[:3, 3] = self.tvec
        return out


@dataclass
class ColmapModel:
    """A COLMAP text model: cameras by id, images by id, points3D by id
    (``xyz (3,)``, ``rgb (3,) uint8``, ``error``, ``track`` ``(M, 2)`` image_id/point2D_idx)."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points3d: dict[int, dict]

    def to_sequence(self, height: int | None = None, width: int | None = None) -> CameraSequence:
        """Images sorted by name -> :class:`CameraSequence` (w2c, pixel K, names).

        With ``height, width`` the intrinsics are rescaled from each camera's own
        resolution to ``(height, width)``; otherwise they stay at the camera's resolution.
        """
        imgs = sorted(self.images.values(), key=lambda im: im.name)
        w2c = np.stack([im.w2c() for im in imgs])
        ks = []
        for im in imgs:
            cam = self.cameras[im.camera_id]
            k = cam.K()
            if height is not None and width is not None:
                k = resize_intrinsics(k, (cam.height, cam.width), (height, width))
            ks.append(k)
        k = np.stack(ks)
        return CameraSequence(w2c=w2c, K=k, names=[im.name for im in imgs])


def _colmap_lines(path: Path) -> list[str]:
    _missing(path)
    return [ln.rstrip("\n") for ln in path.read_text().splitlines() if not ln.startswith("#")]


def read_colmap_text(model_dir: str | Path) -> ColmapModel:
    """Read ``cameras.txt``, ``images.txt`` and (if present) ``points3D.txt``.

    File convention: ``images.txt`` holds ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``
    (world-to-camera, scalar-first quaternion, OpenCV axes) followed by a line of
    ``X Y POINT3D_ID`` triplets; pixel coordinates use the corner convention.
    """
    model_dir = Path(model_dir)
    cameras: dict[int, ColmapCamera] = {}
    cam_path = model_dir / "cameras.txt"
    for ln in _colmap_lines(cam_path):
        parts = ln.split()
        if not parts:
            continue
        model = parts[1]
        params = np.asarray([float(x) for x in parts[4:]])
        expected = _COLMAP_PARAMS.get(model)
        if expected is not None and len(params) != expected:
            raise DataError(cam_path, CAMERA_COLUMNS, f"camera {parts[0]}: {model} needs {expected} params")
        cameras[int(parts[0])] = ColmapCamera(int(parts[0]), model, int(parts[2]), int(parts[3]), params)
    images: dict[int, ColmapImage] = {}
    img_path = model_dir / "images.txt"
    lines = _colmap_lines(img_path)
    i = 0
    while i < len(lines):
        parts = lines[i].split()
        if not parts:
            i += 1
            continue
        if len(parts) < 10:
            raise DataError(img_path, CAMERA_COLUMNS, f"image line has {len(parts)} fields, expected 10")
        pts = lines[i + 1].split() if i + 1 < len(lines) else []
        arr = np.asarray([float(x) for x in pts]).reshape(-1, 3) if pts else np.zeros((0, 3))
        image = ColmapImage(
            image_id=int(parts[0]),
            qvec_wxyz=np.asarray([float(x) for x in parts[1:5]]),
            tvec=np.asarray([float(x) for x in parts[5:8]]),
            camera_id=int(parts[8]),
            name=" ".join(parts[9:]),
            xys=arr[:, :2],
            point3d_ids=arr[:, 2].astype(np.int64),
        )
        images[image.image_id] = image
        i += 2
    points: dict[int, dict] = {}
    pts_path = model_dir / "points3D.txt"
    if pts_path.exists():
        for ln in _colmap_lines(pts_path):
            parts = ln.split()
            if not parts:
                continue
            track = np.asarray([int(x) for x in parts[8:]], dtype=np.int64).reshape(-1, 2)
            points[int(parts[0])] = {
                "xyz": np.asarray([float(x) for x in parts[1:4]]),
                "rgb": np.asarray([int(x) for x in parts[4:7]], dtype=np.uint8),
                "error": float(parts[7]),
                "track": track,
            }
    return ColmapModel(cameras, images, points)


_COLMAP_CAMERAS_HEADER = ("# Camera list with one line of data per camera:\n"
                          "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                          "# Number of cameras: {n}\n")
_COLMAP_IMAGES_HEADER = ("# Image list with two lines of data per image:\n"
                         "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                         "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                         "# Number of images: {n}, mean observations per image: 0\n")
_COLMAP_POINTS_HEADER = ("# 3D point list with one line of data per point:\n"
                         "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                         "# Number of points: {n}, mean track length: 0\n")


def write_colmap_text(
    model_dir: str | Path,
    w2c: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    names: list[str] | None = None,
    points: np.ndarray | None = None,
    colors: np.ndarray | None = None,
) -> None:
    """Write a COLMAP text model (one PINHOLE camera per frame, empty 2D tracks).

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera, OpenCV axes. K: ``(T, 3, 3)`` or ``(3, 3)`` pixel
            intrinsics (corner convention, which COLMAP shares); camera ``i+1`` belongs to
            image ``i+1``.
        names: image names (default ``frame_0000.png`` ...).
        points, colors: optional ``(N, 3)`` world points and uint8 colours for points3D.txt
            (point ids ``1..N``, reprojection error 0, empty tracks; grey without colours).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    w2c = np.asarray(w2c, dtype=np.float64)
    t = len(w2c)
    k = np.broadcast_to(np.asarray(K, dtype=np.float64), (t, 3, 3))
    names = names or [f"frame_{i:04d}.png" for i in range(t)]
    quat = xyzw_to_wxyz(mat_to_quat(torch.from_numpy(w2c[:, :3, :3]))).numpy()  # (T, 4) wxyz, qw >= 0
    cams = [f"{i + 1} PINHOLE {width} {height} {k[i, 0, 0]:.12g} {k[i, 1, 1]:.12g} {k[i, 0, 2]:.12g} "
            f"{k[i, 1, 2]:.12g}\n" for i in range(t)]
    (model_dir / "cameras.txt").write_text(_COLMAP_CAMERAS_HEADER.format(n=t) + "".join(cams))
    imgs = []
    for i in range(t):
        vals = " ".join(f"{v:.12g}" for v in (*quat[i], *w2c[i, :3, 3]))
        imgs.append(f"{i + 1} {vals} {i + 1} {names[i]}\n\n")  # empty POINTS2D line
    (model_dir / "images.txt").write_text(_COLMAP_IMAGES_HEADER.format(n=t) + "".join(imgs))
    pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = 0 if pts is None else len(pts)
    with open(model_dir / "points3D.txt", "w") as fh:
        fh.write(_COLMAP_POINTS_HEADER.format(n=n))
        if n:
            cols = np.full((n, 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8).reshape(-1, 3)
            ids = np.arange(1, n + 1, dtype=np.float64)
            rows = np.column_stack([ids, pts, cols.astype(np.float64), np.zeros(n)])
            np.savetxt(fh, rows, fmt=["%d", "%.9g", "%.9g", "%.9g", "%d", "%d", "%d", "%g"])  # vectorised


# ----------------------------------------------------------------------------------------
def read_cameras(
    path: str | Path, height: int, width: int, fmt: str = "auto", default_fov_deg: float = 60.0
) -> CameraSequence:
    """Read any supported camera file into w2c + pixel K at ``(height, width)``.

    ``fmt``: ``seed``, ``re10k``, ``official_json``, ``colmap`` (a directory), ``tum`` or
    ``auto`` (``.json`` -> official, directory -> COLMAP, else by the column count of the
    last line: 12 seed, 19 RealEstate10K, 8 TUM). Formats without intrinsics get a
    centred pinhole with horizontal field of view ``default_fov_deg``.
    """
    path = Path(path)
    _missing(path)
    if fmt == "auto":
        if path.is_dir():
            fmt = "colmap"
        elif path.suffix.lower() == ".json":
            fmt = "official_json"
        else:
            last = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            ncols = len([p for p in _SPLIT.split(last[-1].strip()) if p]) if last else 0
            fmt = {12: "seed", 19: "re10k", 8: "tum"}.get(ncols, "")
            if not fmt:
                raise DataError(path, CAMERA_COLUMNS, f"cannot tell the format from {ncols} columns")
    if fmt == "seed":
        seq = CameraSequence(w2c=read_seed_cameras(path))
    elif fmt == "re10k":
        seq = read_re10k_cameras(path, height, width)
    elif fmt == "official_json":
        seq = read_official_json(path, height, width)
    elif fmt == "colmap":
        seq = read_colmap_text(path).to_sequence(height, width)
    elif fmt == "tum":
        seq = read_tum(path)
    else:
        raise ValueError(f"unknown camera format {fmt!r}")
    if seq.K is None:
        f = 0.5 * width / math.tan(math.radians(default_fov_deg) / 2)
        seq.K = np.broadcast_to(make_intrinsics(f, f, width / 2, height / 2), (len(seq), 3, 3)).copy()
    return seq
