"""Synthetic worlds: procedural rooms rendered by vectorised numpy ray casting.

Each clip is a room (textured floor and walls, sometimes open to the sky) holding 3-7
objects (spheres, boxes rotated about the vertical, cylinders) with solid procedural
textures (checker, stripes, value noise, tiles) and Lambert shading under a directional
light. A camera moves along one of several trajectories (dolly, orbit, pan, turn, crane,
dolly+turn, arc). Everything is ground truth:

* ``depth`` is the exact z-depth (along the optical axis) of the first surface hit through
  each pixel centre ``(u + 0.5, v + 0.5)`` (0 for sky pixels, which are invalid);
* ``points`` are the world coordinates of that hit (``eye + depth * R^T K^-1 [u, v, 1]``),
  so unprojecting ``depth`` with the cameras reproduces them up to float32 rounding;
* cameras are OpenCV world-to-camera, intrinsics in pixels (corner convention).

World frame: y up, floor at ``y = 0``. Output follows the seed layout
(:mod:`fantasyworld.data.formats`). Generation is deterministic in ``(seed, clip index)``
whatever the number of worker processes. The ray casting itself (materials, primitives,
rooms, :func:`~fantasyworld.data.synth_render.render_rays`) is :mod:`fantasyworld.data.synth_render`.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fantasyworld.data.formats import METADATA_NAME, write_metadata, write_video
from fantasyworld.data.synth_render import (
    PALETTE,
    TEXTURES,
    Material,
    Primitive,
    Room,
    Scene,
    render_rays,
)
from fantasyworld.geometry.camera_io import write_seed_cameras
from fantasyworld.geometry.cameras import intrinsics_from_fov, look_at_w2c


# ----------------------------------------------------------------------------------------
# scenes and trajectories
def _material(rng: np.random.Generator, kinds=TEXTURES, scale=(0.25, 0.8)) -> Material:
    names = list(PALETTE)
    a, b = rng.choice(len(names), size=2, replace=False)
    axis = rng.normal(size=3)
    return Material(str(rng.choice(kinds)), names[a], names[b], float(rng.uniform(*scale)),
                    int(rng.integers(0, 2**20)), axis / np.linalg.norm(axis))


def _ease(s: np.ndarray) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * s)


TRAJECTORIES = ("dolly", "orbit", "pan", "turn", "crane", "dolly_turn", "arc")


def make_trajectory(kind: str, rng: np.random.Generator, room: Room, num_frames: int
                    ) -> tuple[np.ndarray, np.ndarray, str]:
    """Eyes ``(T, 3)``, look-at targets ``(T, 3)`` and a phrase for the prompt."""
    s = _ease(np.linspace(0, 1, num_frames))[:, None]
    yaw0 = rng.uniform(0, 2 * np.pi)
    fwd = np.array([math.sin(yaw0), 0.0, math.cos(yaw0)])
    right = np.array([fwd[2], 0.0, -fwd[0]])
    height = rng.uniform(1.0, 1.9)
    start = np.array([rng.uniform(-0.4, 0.4) * room.half_x, height, rng.uniform(-0.4, 0.4) * room.half_z])
    start = start - fwd * rng.uniform(0.5, 1.5)
    tilt = np.array([0.0, rng.uniform(-0.8, 0.2), 0.0])
    dist = rng.uniform(1.2, 2.5)
    sign = rng.choice([-1.0, 1.0])
    side = "left" if sign < 0 else "right"
    if kind == "dolly":
        back = rng.random() < 0.3
        eyes = start + (-1 if back else 1) * s * dist * fwd
        targets = eyes + 4 * fwd + tilt
        phrase = "pulls back" if back else "moves forward"
    elif kind == "orbit":
        centre = start + fwd * rng.uniform(2.0, 3.0)
        centre[1] = rng.uniform(0.4, 1.0)
        radius = np.linalg.norm((start - centre)[[0, 2]])
        angle0 = math.atan2(start[0] - centre[0], start[2] - centre[2])
        ang = angle0 + sign * s[:, 0] * np.deg2rad(rng.uniform(40, 90))
        eyes = np.stack([centre[0] + radius * np.sin(ang), np.full(num_frames, height),
                         centre[2] + radius * np.cos(ang)], 1)
        targets = np.broadcast_to(centre, eyes.shape).copy()
        phrase = f"orbits to the {side} around the centre of the scene"
    elif kind == "pan":
        eyes = start + sign * s * dist * right
        targets = eyes + 4 * fwd + tilt
        phrase = f"slides sideways to the {side}"
    elif kind == "turn":
        ang = yaw0 + sign * s[:, 0] * np.deg2rad(rng.uniform(40, 100))
        eyes = np.broadcast_to(start, (num_frames, 3)).copy()
        targets = eyes + 4 * np.stack([np.sin(ang), np.zeros(num_frames), np.cos(ang)], 1) + tilt
        phrase = f"turns to the {side}"
    elif kind == "crane":
        up = rng.random() < 0.5
        dh = rng.uniform(0.5, 1.0) * (1 if up else -1)
        eyes = start + s * np.array([0.0, dh, 0.0]) + s * 0.5 * fwd
        eyes[:, 1] = np.clip(eyes[:, 1], 0.4, room.height - 0.4)
        targets = eyes + 4 * fwd + tilt - s * np.array([0.0, 2.0 * dh, 0.0])
        phrase = "rises and tilts down" if up else "lowers and tilts up"
    elif kind == "dolly_turn":
        ang = yaw0 + sign * s[:, 0] * np.deg2rad(rng.uniform(30, 70))
        look = np.stack([np.sin(ang), np.zeros(num_frames), np.cos(ang)], 1)
        eyes = start + s * dist * fwd
        targets = eyes + 4 * look + tilt
        phrase = f"moves forward while turning {side}"
    elif kind == "arc":
        eyes = start + sign * s * dist * right + s * 0.6 * fwd
        focus = start + fwd * rng.uniform(3.0, 4.5)
        targets = np.broadcast_to(focus + tilt * 0.3, eyes.shape).copy()
        phrase = f"arcs to the {side} keeping the centre in view"
    else:
        raise ValueError(f"unknown trajectory {kind!r}")
    return eyes, targets, f"The camera {phrase}."


def make_scene(rng: np.random.Generator, eyes: np.ndarray, targets: np.ndarray, room: Room) -> Scene:
    """3-7 objects placed near the viewing direction of frame 0 and elsewhere, kept at
    least 0.5 m from every camera position."""
    objects: list[Primitive] = []
    fwd0 = targets[0] - eyes[0]
    fwd0[1] = 0
    fwd0 /= max(np.linalg.norm(fwd0), 1e-6)
    right0 = np.array([fwd0[2], 0.0, -fwd0[0]])
    want = int(rng.integers(3, 8))
    tries = 0
    while len(objects) < want and tries < 200:
        tries += 1
        kind = str(rng.choice(["sphere", "box", "cylinder"]))
        if len(objects) < want // 2 + 1:
            base = eyes[0] + fwd0 * rng.uniform(2.0, 5.5) + right0 * rng.uniform(-2.0, 2.0)
        else:
            base = np.array([rng.uniform(-1, 1) * room.half_x, 0.0, rng.uniform(-1, 1) * room.half_z])
        base[1] = 0.0
        mat = _material(rng, scale=(0.12, 0.4))
        if kind == "sphere":
            r = rng.uniform(0.25, 0.7)
            prim = Primitive(kind, base + np.array([0, r + rng.uniform(0, 0.6), 0]), np.array([r]), 0.0, mat)
        elif kind == "box":
            half = rng.uniform([0.2, 0.2, 0.2], [0.7, 0.8, 0.7])
            prim = Primitive(kind, base, half, float(rng.uniform(0, np.pi)), mat)
        else:
            prim = Primitive(kind, base, np.array([rng.uniform(0.15, 0.5), rng.uniform(0.6, 2.5)]), 0.0, mat)
        fp = prim.footprint
        if abs(base[0]) + fp > room.half_x - 0.05 or abs(base[2]) + fp > room.half_z - 0.05:
            continue
        if np.min(np.linalg.norm((eyes - base)[:, [0, 2]], axis=1)) < fp + 0.5:
            continue
        if any(np.linalg.norm((o.center - base)[[0, 2]]) < o.footprint + fp for o in objects):
            continue
        objects.append(prim)
    if not objects:  # degenerate placement: one small ball far ahead
        base = eyes[0] + fwd0 * 2.0
        objects.append(Primitive("sphere", np.array([base[0], 0.3, base[2]]), np.array([0.25]), 0.0,
                                 _material(rng)))
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.6, 0.6)])
    return Scene(room, objects, light / np.linalg.norm(light))


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    depth: np.ndarray  # (T, H, W) float32
    points: np.ndarray  # (T, H, W, 3) float32
    w2c: np.ndarray  # (T, 4, 4) float64
    K: np.ndarray  # (3, 3) float64
    prompt: str
    trajectory: str
    window_start: int = 0  # first frame of the clip in its trajectory (``trajectory_frames``)


def render_clip(seed: int, index: int, num_frames: int, height: int, width: int,
                trajectory: str | None = None, detail: float = 0.0,
                trajectory_frames: int | None = None) -> Clip:
    """Render clip ``index`` of the dataset with base ``seed`` (deterministic).

    Args:
        trajectory: one of :data:`TRAJECTORIES` instead of the seeded choice.
        detail: high-frequency texture on every surface (:class:`Scene`), e.g. 0.6 for
            structure from motion at 128-512 px; 0 renders exactly as before the option.
        trajectory_frames: the camera path spans this many frames and the clip is a window
            of ``num_frames`` consecutive ones at a seeded start (``Clip.window_start``), as a
            short clip cut from a longer video. Each trajectory turns by up to ~70 degrees over
            its whole length; over 9 frames that is more than a field of view, so frames
            late in the clip share nothing with frame 0. ``None`` (or ``num_frames``) renders
            exactly as before the option.
    """
    total = max(num_frames, trajectory_frames or num_frames)
    rng = np.random.default_rng([seed, index])
    room = Room(half_x=float(rng.uniform(3.0, 5.5)), half_z=float(rng.uniform(3.0, 5.5)),
                height=float(rng.uniform(2.8, 4.0)), open_sky=bool(rng.random() < 0.25),
                floor=_material(rng, ("checkered", "tiled", "mottled", "striped"), (0.4, 1.0)),
                walls=_material(rng, ("striped", "mottled", "tiled", "checkered"), (0.3, 0.9)),
                ceiling=_material(rng, ("plain", "mottled"), (0.5, 1.0)))
    kind = trajectory or str(rng.choice(TRAJECTORIES))
    for _ in range(50):
        eyes, targets, phrase = make_trajectory(kind, rng, room, total)
        margin_x = np.abs(eyes[:, 0]) < room.half_x - 0.4
        margin_z = np.abs(eyes[:, 2]) < room.half_z - 0.4
        if margin_x.all() and margin_z.all():
            break
    else:
        eyes = np.clip(eyes, [-room.half_x + 0.4, 0.3, -room.half_z + 0.4],
                       [room.half_x - 0.4, room.height - 0.3, room.half_z - 0.4])
    start = 0
    if total > num_frames:  # its own stream: the scene's draws stay those of the full path
        start = int(np.random.default_rng([seed, index, 1]).integers(0, total - num_frames + 1))
        eyes, targets = eyes[start:start + num_frames], targets[start:start + num_frames]
    scene = make_scene(rng, eyes, targets, room)
    scene.detail = float(detail)
    fov = float(rng.uniform(50.0, 75.0))
    K = intrinsics_from_fov(fov, height, width)
    u = (np.arange(width) + 0.5 - K[0, 2]) / K[0, 0]
    v = (np.arange(height) + 0.5 - K[1, 2]) / K[1, 1]
    uu, vv = np.meshgrid(u, v, indexing="xy")
    dirs_cam = np.stack([uu, vv, np.ones_like(uu)], -1).reshape(-1, 3)  # z component 1
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    depth = np.empty((num_frames, height, width), np.float32)
    points = np.empty((num_frames, height, width, 3), np.float32)
    w2c = np.empty((num_frames, 4, 4))
    for i in range(num_frames):
        w2c[i] = look_at_w2c(eyes[i], targets[i])
        dirs = dirs_cam @ w2c[i, :3, :3]  # R^T d for each row: camera -> world directions
        t, pts, color = render_rays(scene, eyes[i], dirs)
        depth[i] = t.reshape(height, width)
        points[i] = pts.reshape(height, width, 3)
        frames[i] = np.round(np.power(color, 1 / 2.2).reshape(height, width, 3) * 255).astype(np.uint8)
    return Clip(frames, depth, points, w2c, K, f"{scene.describe()} {phrase}", kind, start)


def _write_clip(args: tuple) -> dict:
    out_dir, index, seed, num_frames, height, width, per_frame, fps, detail, trajectories, trajectory_frames = args
    trajectory = trajectories[index % len(trajectories)] if trajectories else None
    clip = render_clip(seed, index, num_frames, height, width, trajectory=trajectory, detail=detail,
                       trajectory_frames=trajectory_frames)
    clip_id = f"clip_{index:05d}"
    write_video(out_dir / "videos" / f"{clip_id}.mp4", clip.frames, fps=fps)
    (out_dir / "camera_params").mkdir(parents=True, exist_ok=True)
    write_seed_cameras(out_dir / "camera_params" / f"{clip_id}.txt", clip.w2c)
    rec = {"clip_id": clip_id, "prompt": clip.prompt, "fps": fps, "trajectory": clip.trajectory,
           "video": f"videos/{clip_id}.mp4", "cameras": f"camera_params/{clip_id}.txt",
           "intrinsics": [clip.K[0, 0], clip.K[1, 1], clip.K[0, 2], clip.K[1, 2]],
           "height": height, "width": width, "num_frames": num_frames}
    if detail:
        rec["detail"] = float(detail)
    if trajectory_frames and trajectory_frames > num_frames:
        rec["trajectory_window"] = {"start": clip.window_start, "trajectory_frames": int(trajectory_frames)}
    for name, arr in (("depth", clip.depth), ("points", clip.points)):
        if per_frame:
            folder = out_dir / name / clip_id
            folder.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(arr):
                np.save(folder / f"frame_{i:04d}.npy", frame)
            rec[name] = f"{name}/{clip_id}"
        else:
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            np.save(out_dir / name / f"{clip_id}.npy", arr)
            rec[name] = f"{name}/{clip_id}.npy"
    return rec


def _worker_signals() -> None:
    """Pool workers: SIGTERM ends them quietly (``Pool.terminate``), whatever handler the parent
    had when it forked; Ctrl-C (sent to the whole process group) is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _remove_clip_files(out_dir: Path, clip_id: str) -> None:
    """Delete whatever a clip that was not finished left behind (a stopped render)."""
    import shutil

    for path in (out_dir / "videos" / f"{clip_id}.mp4", out_dir / "camera_params" / f"{clip_id}.txt",
                 out_dir / "depth" / f"{clip_id}.npy", out_dir / "points" / f"{clip_id}.npy"):
        path.unlink(missing_ok=True)
    for folder in (out_dir / "depth" / clip_id, out_dir / "points" / clip_id):
        shutil.rmtree(folder, ignore_errors=True)


def synthesize_dataset(out_dir: str | Path, num_clips: int = 100, num_frames: int = 49, height: int = 128,
                       width: int = 128, seed: int = 0, workers: int | None = None, per_frame: bool = False,
                       fps: float = 16.0, progress: bool = False, detail: float = 0.0,
                       trajectories: tuple[str, ...] | list[str] | None = None,
                       trajectory_frames: int | None = None, append: bool = False,
                       time_limit_s: float | None = None) -> Path:
    """Render ``num_clips`` clips into ``out_dir`` in the seed layout and write
    ``metadata.json``. Deterministic in ``seed`` (independent of ``workers``).

    Args:
        per_frame: write depth/points as ``<name>/<clip>/frame_XXXX.npy`` (the seed's
            per-frame layout) instead of one ``(T, ...)`` ``.npy`` per clip.
        workers: processes (default: ``min(num_clips, os.cpu_count())``).
        detail: high-frequency texture on every surface (see :func:`render_clip`); 0 (the
            default) gives exactly the renders of a call without it.
        trajectories: clip ``i`` follows ``trajectories[i % len(trajectories)]`` instead of
            a seeded choice among :data:`TRAJECTORIES`.
        trajectory_frames: each clip is a ``num_frames`` window of a camera path this long
            (see :func:`render_clip`; the record keeps ``trajectory_window``).
        append: add the clips after those already in ``out_dir`` (numbering continues after
            the highest ``clip_NNNNN``, ``metadata.json`` lists old and new), e.g. to make one
            dataset of several sizes or lengths; clip ``i`` still depends only on ``(seed, i)``.
        time_limit_s: stop once this many seconds have passed: the dataset then holds the
            first ``k`` clips finished by then (the same clips a run of ``num_clips=k``
            renders), the unfinished ones are removed, and ``metadata.json`` lists the ``k``.

    Returns:
        ``out_dir`` as a Path. ``height`` and ``width`` must be even (H.264 yuv420p).
    """
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for H.264, got {height}x{width}")
    bad = [t for t in trajectories or () if t not in TRAJECTORIES]
    if bad:
        raise ValueError(f"unknown trajectory {bad[0]!r} (known: {', '.join(TRAJECTORIES)})")
    out_dir = Path(out_dir)
    if trajectory_frames is not None and trajectory_frames < num_frames:
        raise ValueError(f"trajectory_frames ({trajectory_frames}) must be at least num_frames ({num_frames})")
    out_dir.mkdir(parents=True, exist_ok=True)
    trajectories = tuple(trajectories) if trajectories else None
    existing = _existing_records(out_dir) if append else []
    first = 1 + max((int(m.group(1)) for r in existing if (m := _CLIP_ID.fullmatch(str(r.get("clip_id"))))),
                    default=-1)
    jobs = [(out_dir, i, seed, num_frames, height, width, per_frame, fps, float(detail), trajectories,
             trajectory_frames) for i in range(first, first + num_clips)]
    workers = workers or min(num_clips, mp.cpu_count())
    if workers <= 1:
        it = map(_write_clip, jobs)
        pool = None
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, initializer=_worker_signals)
        it = pool.imap(_write_clip, jobs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=num_clips, desc="synth", unit="clip")
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    records: list[dict] = []
    try:
        for rec in it:  # in clip order
            records.append(rec)
            if deadline is not None and time.monotonic() >= deadline and len(records) < num_clips:
                if pool is not None:
                    pool.terminate()  # the clips in flight are dropped below
                break
    except BaseException:  # an error or a signal (Ctrl-C, the demo's SIGTERM): stop the workers now
        if pool is not None:
            pool.terminate()  # close() + join() alone would first render every queued clip
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    for index in range(first + len(records), first + num_clips if deadline is not None else 0):
        _remove_clip_files(out_dir, f"clip_{index:05d}")
    write_metadata(out_dir, existing + records)
    return out_dir


_CLIP_ID = re.compile(r"clip_(\d+)")


def _existing_records(out_dir: Path) -> list[dict]:
    """The records of ``out_dir/metadata.json`` as written by :func:`write_metadata` (none
    if the file does not exist)."""
    path = out_dir / METADATA_NAME
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise ValueError(f"{path}: cannot append to it: not a {{'clips': [...]}} metadata file")
    return list(data["clips"])
