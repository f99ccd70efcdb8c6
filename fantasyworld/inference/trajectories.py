"""Camera trajectories that condition generation: named paths, camera files, checks.

Convention (that of :mod:`fantasyworld.geometry.cameras`): ``w2c`` ``(T, 4, 4)`` float64
world-to-camera with **OpenCV axes** (x right, y down, z forward) and pixel intrinsics
``K`` ``(T, 3, 3)`` at the generation resolution (corner pixel convention, centred
principal point ``(W/2, H/2)``). The model sees poses **relative to frame 0** (the Plücker
rays are built that way), so only the motion matters, not where the world origin is.

Named paths are written in the first camera's frame (frame 0 is the identity) with a
constant speed; ``s = t / (T - 1)`` runs from 0 to 1 over the clip. Units: the model is
trained on scenes normalised so that the mean distance of the points to the first camera
is 1 (SPEC section 4), so a translation of 0.5 moves half the typical scene depth.

=================  =============================================  =====================
name               motion (in the first camera's axes)            magnitude (default)
=================  =============================================  =====================
``static``         none                                           -
``dolly-in``       centre moves along +z (forward)                distance (0.5)
``dolly-out``      centre moves along -z (backward)               distance (0.5)
``truck-left``     centre moves along -x                          distance (0.5)
``truck-right``    centre moves along +x                          distance (0.5)
``pedestal-up``    centre moves along -y (image up)               distance (0.5)
``pedestal-down``  centre moves along +y                          distance (0.5)
``pan-left``       rotates about its y axis, view turns to -x     degrees (30)
``pan-right``      rotates about its y axis, view turns to +x     degrees (30)
``tilt-up``        rotates about its x axis, view turns to -y     degrees (20)
``tilt-down``      rotates about its x axis, view turns to +y     degrees (20)
``roll-cw``        rotates about its z axis, x towards y          degrees (30)
``roll-ccw``       rotates about its z axis, y towards x          degrees (30)
``turn-left``      drives forward on an arc while yawing left     degrees (45)
``turn-right``     drives forward on an arc while yawing right    degrees (45)
``orbit-left``     circles a target at (0, 0, radius) moving to   degrees (60)
                   -x, always looking at the target
``orbit-right``    same, moving to +x                             degrees (60)
``orbit``          alias of ``orbit-left``                        degrees (60)
``zoom-in``        focal length grows to ``(1 + m) f`` (no move)  factor m (0.5)
``zoom-out``       focal length shrinks to ``f / (1 + m)``        factor m (0.5)
=================  =============================================  =====================

A name may carry its magnitude after a colon: ``orbit:90``, ``dolly-in:1.2``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fantasyworld.errors import DataError, TrajectoryError
from fantasyworld.geometry.camera_io import read_cameras
from fantasyworld.geometry.camera_sequence import CameraSequence
from fantasyworld.geometry.cameras import (
    as_homogeneous,
    c2w_to_w2c,
    interpolate_c2w,
    intrinsics_from_fov,
)

#: Default horizontal field of view (degrees) for named paths and files without intrinsics.
DEFAULT_FOV_DEG = 60.0
#: Default distance of the orbit target in front of the first camera (scene units).
DEFAULT_ORBIT_RADIUS = 1.0
#: Forward path length of ``turn-left``/``turn-right`` (scene units).
DEFAULT_TURN_DISTANCE = 0.5


# ----------------------------------------------------------------------------------------
# named paths
def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


#: name -> (kind, direction, default magnitude). Kinds: translate (unit axis), rotate
#: (axis function, sign), turn, orbit, zoom.
NAMED_PATHS: dict[str, tuple[str, object, float]] = {
    "static": ("static", None, 0.0),
    "dolly-in": ("translate", (0.0, 0.0, 1.0), 0.5),
    "dolly-out": ("translate", (0.0, 0.0, -1.0), 0.5),
    "truck-left": ("translate", (-1.0, 0.0, 0.0), 0.5),
    "truck-right": ("translate", (1.0, 0.0, 0.0), 0.5),
    "pedestal-up": ("translate", (0.0, -1.0, 0.0), 0.5),
    "pedestal-down": ("translate", (0.0, 1.0, 0.0), 0.5),
    # R_y(a) turns the forward axis to (sin a, 0, cos a): left is a < 0
    "pan-left": ("rotate", (_rot_y, -1.0), 30.0),
    "pan-right": ("rotate", (_rot_y, 1.0), 30.0),
    # R_x(a) turns the forward axis to (0, -sin a, cos a): up (-y) is a > 0
    "tilt-up": ("rotate", (_rot_x, 1.0), 20.0),
    "tilt-down": ("rotate", (_rot_x, -1.0), 20.0),
    "roll-cw": ("rotate", (_rot_z, 1.0), 30.0),
    "roll-ccw": ("rotate", (_rot_z, -1.0), 30.0),
    "turn-left": ("turn", -1.0, 45.0),
    "turn-right": ("turn", 1.0, 45.0),
    "orbit-left": ("orbit", 1.0, 60.0),
    "orbit-right": ("orbit", -1.0, 60.0),
    "orbit": ("orbit", 1.0, 60.0),
    "zoom-in": ("zoom", 1.0, 0.5),
    "zoom-out": ("zoom", -1.0, 0.5),
}


def parse_camera_name(spec: str) -> tuple[str, float | None] | None:
    """``"orbit"`` -> ``("orbit", None)``, ``"orbit:90"`` -> ``("orbit", 90.0)``; ``None`` if
    ``spec`` is not a named path."""
    name, _, mag = spec.strip().lower().partition(":")
    if name not in NAMED_PATHS:
        return None
    if not mag:
        return name, None
    try:
        return name, float(mag)
    except ValueError:
        raise TrajectoryError(f"{spec}: magnitude after ':' must be a number") from None


def named_trajectory(
    name: str,
    num_frames: int,
    height: int,
    width: int,
    magnitude: float | None = None,
    fov_deg: float = DEFAULT_FOV_DEG,
    orbit_radius: float = DEFAULT_ORBIT_RADIUS,
    turn_distance: float = DEFAULT_TURN_DISTANCE,
) -> CameraSequence:
    """Generate a named camera path (see the module table) as w2c matrices.

    Args:
        name: one of :data:`NAMED_PATHS`.
        num_frames: ``T``.
        height, width: resolution of the returned intrinsics.
        magnitude: distance (translations), total angle in degrees (rotations, turns,
            orbits) or zoom factor; ``None`` uses the default of the table.
        fov_deg: horizontal field of view of frame 0 (square pixels, centred principal point).
        orbit_radius: distance of the orbit target in front of the first camera.
        turn_distance: path length of the turn paths.

    Returns:
        :class:`CameraSequence` with ``w2c[0]`` the identity.
    """
    if name not in NAMED_PATHS:
        raise TrajectoryError(f"{name}: unknown camera path; named paths: {', '.join(NAMED_PATHS)}")
    if num_frames < 1:
        raise TrajectoryError(f"{name}: num_frames must be >= 1, got {num_frames}")
    kind, arg, default = NAMED_PATHS[name]
    mag = float(default if magnitude is None else magnitude)
    s = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    k0 = intrinsics_from_fov(fov_deg, height, width)
    ks = np.tile(k0, (num_frames, 1, 1))
    if kind == "translate":
        c2w[:, :3, 3] = s[:, None] * mag * np.asarray(arg)[None]
    elif kind == "rotate":
        fn, sign = arg  # type: ignore[misc]
        for i, si in enumerate(s):
            c2w[i, :3, :3] = fn(sign * math.radians(mag) * si)
    elif kind == "turn":
        # constant yaw rate k along an arc of length d: heading a(s) = k s, centre =
        # d * integral of (sin a, 0, cos a)
        k = float(arg) * math.radians(mag)  # type: ignore[arg-type]
        d = turn_distance
        for i, si in enumerate(s):
            a = k * si
            c2w[i, :3, :3] = _rot_y(a)
            if abs(k) < 1e-9:
                c2w[i, :3, 3] = (0.0, 0.0, d * si)
            else:
                c2w[i, :3, 3] = (d * (1 - math.cos(a)) / k, 0.0, d * math.sin(a) / k)
    elif kind == "orbit":
        # target T = (0, 0, r); centre = T + R_y(a) (0, 0, -r); looking at T means the
        # camera rotation is R_y(a). a > 0 moves the camera to -x (left).
        target = np.array([0.0, 0.0, orbit_radius])
        for i, si in enumerate(s):
            a = float(arg) * math.radians(mag) * si  # type: ignore[arg-type]
            rot = _rot_y(a)
            c2w[i, :3, :3] = rot
            c2w[i, :3, 3] = target + rot @ np.array([0.0, 0.0, -orbit_radius])
    elif kind == "zoom":
        factor = (1.0 + mag) ** (float(arg) * s)  # type: ignore[arg-type]
        ks[:, 0, 0] *= factor
        ks[:, 1, 1] *= factor
    label = name if magnitude is None else f"{name}:{magnitude:g}"
    return CameraSequence(c2w_to_w2c(c2w), ks, height, width, source=label,
                            extra={"name": name, "magnitude": mag})


# ----------------------------------------------------------------------------------------
# resampling and loading
def resample_trajectory(traj: CameraSequence, num_frames: int) -> CameraSequence:
    """Resample to ``num_frames`` at evenly spaced times: camera centres and intrinsics
    linearly, rotations by quaternion slerp (camera-to-world, shortest arc)."""
    n = len(traj)
    if n == num_frames:
        return traj
    pos = np.linspace(0.0, n - 1, num_frames) if num_frames > 1 else np.zeros(1)
    out = interpolate_c2w(traj.c2w, np.arange(n, dtype=np.float64), pos)
    lo = np.clip(np.floor(pos).astype(int), 0, max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    k = (1 - frac)[:, None, None] * traj.K[lo] + frac[:, None, None] * traj.K[hi]
    return CameraSequence(c2w_to_w2c(out), k, traj.height, traj.width, traj.source,
                            dict(traj.extra, resampled_from=n))


def _check_length(traj: CameraSequence, num_frames: int, resample: bool) -> CameraSequence:
    if len(traj) == num_frames:
        return traj
    if resample:
        return resample_trajectory(traj, num_frames)
    hint = f" or num_frames={len(traj)}" if (len(traj) - 1) % 4 == 0 else ""
    raise TrajectoryError(
        f"{traj.source}: the trajectory has {len(traj)} cameras but num_frames={num_frames}; "
        f"give one camera per generated frame, pass resample=True (--resample-camera){hint}"
    )


def load_trajectory(
    camera: CameraSequence | np.ndarray | str | Path,
    num_frames: int,
    height: int,
    width: int,
    *,
    magnitude: float | None = None,
    fmt: str = "auto",
    fov_deg: float = DEFAULT_FOV_DEG,
    resample: bool = False,
) -> CameraSequence:
    """Resolve any camera specification into a :class:`CameraSequence` of ``num_frames``.

    Args:
        camera: a :class:`CameraSequence`; a ``(T, 4, 4)`` w2c array (OpenCV axes);
            a named path (``"orbit"``, ``"dolly-in:1.0"``, see the module table); or a
            camera file/dir in any format :func:`~fantasyworld.geometry.camera_io.read_cameras`
            reads (seed rows, RealEstate10K, official JSON, COLMAP text dir, TUM).
        num_frames, height, width: the generation's ``T, H, W``; intrinsics are returned at
            ``(H, W)`` (files with normalised intrinsics are rescaled, files without get a
            centred pinhole with horizontal field of view ``fov_deg``).
        magnitude: overrides a named path's magnitude.
        fmt: camera file format (``auto`` guesses, see ``read_cameras``).
        resample: resample a trajectory of another length instead of raising.

    Raises:
        TrajectoryError: unknown name, missing or unreadable file (the message names the
            file and the reason), or a wrong number of cameras.
    """
    if isinstance(camera, CameraSequence):
        traj = camera
        if (traj.height, traj.width) != (height, width):
            from fantasyworld.geometry.cameras import resize_intrinsics

            k = resize_intrinsics(traj.K, (traj.height, traj.width), (height, width))
            traj = CameraSequence(traj.w2c, k, height, width, traj.source, dict(traj.extra))
        return _check_length(traj, num_frames, resample)
    if isinstance(camera, (np.ndarray, torch.Tensor)):
        w2c = np.asarray(camera, dtype=np.float64)
        if w2c.ndim != 3 or w2c.shape[1:] not in ((4, 4), (3, 4)):
            raise TrajectoryError(f"array: expected (T, 4, 4) world-to-camera matrices, got {w2c.shape}")
        w2c = as_homogeneous(w2c)
        k = np.tile(intrinsics_from_fov(fov_deg, height, width), (len(w2c), 1, 1))
        return _check_length(CameraSequence(w2c, k, height, width, "array"), num_frames, resample)
    spec = str(camera)
    named = parse_camera_name(spec)
    if named is not None and not Path(spec).exists():
        name, mag = named
        return named_trajectory(name, num_frames, height, width, magnitude if mag is None else mag, fov_deg)
    path = Path(spec)
    if not path.exists():
        if path.suffix == "" and "/" not in spec and "\\" not in spec:
            raise TrajectoryError(f"{spec}: neither a named camera path ({', '.join(NAMED_PATHS)}) nor an "
                                  "existing camera file")
        raise TrajectoryError(f"{spec}: camera file does not exist")
    try:
        seq = read_cameras(path, height, width, fmt=fmt, default_fov_deg=fov_deg)
    except DataError as exc:
        raise TrajectoryError(f"{path}: cannot read camera file: {exc.message}") from exc
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise TrajectoryError(f"{path}: cannot read camera file ({type(exc).__name__}: {exc})") from exc
    traj = CameraSequence(np.asarray(seq.w2c, dtype=np.float64), np.asarray(seq.K, dtype=np.float64),
                            height, width, source=str(path))
    return _check_length(traj, num_frames, resample)
