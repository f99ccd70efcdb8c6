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
