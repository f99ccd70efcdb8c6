"""Writers for the per-generation files: videos, depth/point arrays and camera files.

Camera convention of every file written here: world = the first predicted camera's frame
(the model predicts poses relative to frame 0), OpenCV axes (x right, y down, z forward),
``w2c`` world-to-camera, pixel intrinsics at the video resolution with the corner pixel
convention (centre of pixel ``(u, v)`` at ``(u + 0.5, v + 0.5)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fantasyworld.data.formats import write_video
from fantasyworld.geometry.camera_io import write_re10k_cameras, write_tum
from fantasyworld.geometry.cameras import w2c_to_c2w

FLOAT16_MAX = float(np.finfo(np.float16).max)

# Turbo colormap, polynomial approximation (Mikhailov, Google AI, 2019), x in [0, 1].
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(x: np.ndarray) -> np.ndarray:
    """Values ``(...)`` in ``[0, 1]`` (clipped; NaN -> 0) -> RGB ``(..., 3)`` uint8 (Turbo:
    0 dark blue, 1 dark red)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    powers = np.stack([x**i for i in range(6)], -1)  # (..., 6)
    rgb = np.stack([powers @ np.asarray(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], -1)
    return (rgb.clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Depth ``(T, H, W)`` -> Turbo-coloured inverse depth ``(T, H, W, 3)`` uint8, near dark
    red, far blue (Turbo's ``[0.1, 1]`` range), normalised by the ``low``/``high``
    percentiles of the whole clip (so colours are comparable across frames). Non-finite or
    non-positive depth is black."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan)
    if valid.any():
        lo, hi = np.percentile(inv[valid], [low, high])
    else:
        lo, hi = 0.0, 1.0
    norm = ((inv - lo) / max(hi - lo, 1e-12)).clip(0.0, 1.0)
    rgb = turbo(0.1 + 0.9 * norm)  # the polynomial's bottom 10% is a muddy grey, skip it
    rgb[~valid] = 0
    return rgb


def save_video(path: str | Path, frames: np.ndarray, fps: float = 16.0) -> None:
    """``(T, H, W, 3)`` uint8 -> H.264 mp4 (odd sizes are padded by one edge pixel)."""
    frames = np.asarray(frames)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    write_video(Path(path), frames, fps=fps)


def _f16(x: np.ndarray) -> np.ndarray:
    """float16 with saturation at +-65504 instead of overflow to inf (NaN kept)."""
    return np.clip(np.asarray(x, dtype=np.float32), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


#: array casts of the head archives (a head's ``archive_dtype`` in the heads registry)
ARCHIVE_DTYPES = {"float16": _f16, "float32": lambda x: np.asarray(x, dtype=np.float32)}


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], dtype: str = "float32") -> None:
    """One head's archive (``depth.npz`` ...): each array under its output key, cast to
    ``dtype`` (``float16`` saturates at +-65504 instead of overflowing)."""
    if dtype not in ARCHIVE_DTYPES:
        raise ValueError(f"archive dtype must be one of {tuple(ARCHIVE_DTYPES)}, got {dtype!r}")
    np.savez(path, **{k: ARCHIVE_DTYPES[dtype](v) for k, v in arrays.items()})


def save_depth(path: str | Path, depth: np.ndarray, depth_conf: np.ndarray) -> None:
    """``depth.npz``: ``depth`` ``(T, H, W)`` float16 z-depth and ``depth_conf`` ``(T, H, W)``
    float16 (values beyond float16's range saturate at 65504)."""
    save_arrays(path, {"depth": depth, "depth_conf": depth_conf}, "float16")


def cameras_payload(
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    height: int,
    width: int,
    pose_enc: np.ndarray | None = None,
    requested_w2c: np.ndarray | None = None,
    requested_intrinsics: np.ndarray | None = None,
) -> dict:
    """The content of ``cameras.json`` (nested lists, float64 precision)."""
    payload = {
        "convention": "w2c: world-to-camera; c2w: camera-to-world; OpenCV axes (x right, y down, z forward); "
                      "world = first predicted camera; intrinsics in pixels at height x width, pixel centre "
                      "of (u, v) at (u + 0.5, v + 0.5)",
        "height": int(height), "width": int(width), "num_frames": int(len(w2c)),
        "w2c": np.asarray(w2c, dtype=np.float64).tolist(),
        "c2w": w2c_to_c2w(np.asarray(w2c, dtype=np.float64)).tolist(),
        "intrinsics": np.asarray(intrinsics, dtype=np.float64).tolist(),
    }
    if pose_enc is not None:
        payload["pose_enc"] = np.asarray(pose_enc, dtype=np.float64).tolist()
        payload["pose_enc_layout"] = "VGGT absT_quaR_FoV: tx ty tz qx qy qz qw fov_h fov_w (radians)"
    if requested_w2c is not None:
        payload["requested"] = {
            "note": "the trajectory that conditioned generation, relative to its first camera",
            "w2c": np.asarray(requested_w2c, dtype=np.float64).tolist(),
            "intrinsics": None if requested_intrinsics is None
            else np.asarray(requested_intrinsics, dtype=np.float64).tolist(),
        }
    return payload


def save_cameras(
    out_dir: str | Path,
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    height: int,
    width: int,
    pose_enc: np.ndarray | None = None,
    requested_w2c: np.ndarray | None = None,
    requested_intrinsics: np.ndarray | None = None,
    fps: float = 16.0,
) -> dict[str, Path]:
    """Write ``cameras.json``, ``cameras_re10k.txt`` (RealEstate10K rows, intrinsics
    normalised by W/H, timestamps in microseconds at ``fps``), ``cameras_tum.txt`` (TUM,
    camera-to-world, timestamps in seconds) and, if given, ``cameras_requested_re10k.txt``."""
    out_dir = Path(out_dir)
    paths = {"cameras.json": out_dir / "cameras.json", "cameras_re10k.txt": out_dir / "cameras_re10k.txt",
             "cameras_tum.txt": out_dir / "cameras_tum.txt"}
    payload = cameras_payload(w2c, intrinsics, height, width, pose_enc, requested_w2c, requested_intrinsics)
    paths["cameras.json"].write_text(json.dumps(payload, indent=1))
    t = len(w2c)
    seconds = np.arange(t, dtype=np.float64) / fps
    write_re10k_cameras(paths["cameras_re10k.txt"], w2c, intrinsics, height, width,
                        timestamps=np.round(seconds * 1e6), url="fantasyworld generate (predicted cameras)")
    write_tum(paths["cameras_tum.txt"], w2c, timestamps=seconds)
    if requested_w2c is not None and requested_intrinsics is not None:
        path = out_dir / "cameras_requested_re10k.txt"
        write_re10k_cameras(path, requested_w2c, requested_intrinsics, height, width,
                            timestamps=np.round(seconds * 1e6), url="fantasyworld generate (requested cameras)")
        paths["cameras_requested_re10k.txt"] = path
    return paths
