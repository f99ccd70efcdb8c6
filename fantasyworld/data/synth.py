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
whatever the number of worker processes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fantasyworld.data.formats import write_metadata, write_video
from fantasyworld.geometry.camera_io import write_seed_cameras
from fantasyworld.geometry.cameras import look_at_w2c

PALETTE = {
    "red": (0.80, 0.15, 0.12), "orange": (0.90, 0.50, 0.10), "yellow": (0.90, 0.80, 0.20),
    "green": (0.20, 0.65, 0.25), "teal": (0.10, 0.55, 0.55), "blue": (0.15, 0.30, 0.80),
    "purple": (0.50, 0.20, 0.65), "pink": (0.90, 0.45, 0.60), "white": (0.90, 0.90, 0.88),
    "grey": (0.50, 0.50, 0.52), "brown": (0.45, 0.30, 0.18), "black": (0.10, 0.10, 0.12),
    "beige": (0.85, 0.78, 0.62), "cyan": (0.30, 0.80, 0.90),
}
TEXTURES = ("checkered", "striped", "mottled", "tiled", "plain")
EPS = 1e-6


@dataclass
class Material:
    """Solid texture: ``kind`` in :data:`TEXTURES`, two colours, a scale (metres), a seed."""

    kind: str
    color_a: str
    color_b: str
    scale: float
    seed: int
    axis: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))

    def describe(self) -> str:
        if self.kind == "plain":
            return self.color_a
        return f"{self.color_a} and {self.color_b} {self.kind}"


def _hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float64) / 65535.0


def _value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points ``(N, 3)`` (lattice spacing 1)."""
    base = np.floor(p)
    frac = p - base
    w = frac * frac * (3 - 2 * frac)
    ib = base.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                weight = (w[:, 0] if dx else 1 - w[:, 0]) * (w[:, 1] if dy else 1 - w[:, 1])
                weight = weight * (w[:, 2] if dz else 1 - w[:, 2])
                out += weight * _hash3(ib[:, 0] + dx, ib[:, 1] + dy, ib[:, 2] + dz, seed)
    return out


def shade_texture(mat: Material, p: np.ndarray) -> np.ndarray:
    """Albedo ``(N, 3)`` of material ``mat`` at world points ``p`` ``(N, 3)``."""
    a = np.asarray(PALETTE[mat.color_a])
    b = np.asarray(PALETTE[mat.color_b])
    q = p / mat.scale
    if mat.kind == "checkered":
        t = (np.floor(q).astype(np.int64).sum(axis=1) & 1).astype(np.float64)
    elif mat.kind == "striped":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (q @ mat.axis))
        t = np.clip((t - 0.5) * 3 + 0.5, 0, 1)
    elif mat.kind == "mottled":
        t = 0.65 * _value_noise(q, mat.seed) + 0.35 * _value_noise(q * 2.7, mat.seed + 1)
        t = np.clip((t - 0.5) * 2 + 0.5, 0, 1)
    elif mat.kind == "tiled":
        fx = np.abs(q - np.round(q))  # distance to the nearest grout line, per axis
        line = (np.sort(fx, axis=1)[:, 1] < 0.06).astype(np.float64)  # skip the axis along the normal
        t = 0.15 * _value_noise(q * 3, mat.seed) + line
    else:
        t = 0.1 * _value_noise(q * 2, mat.seed)
    t = np.clip(t, 0, 1)[:, None]
    return a * (1 - t) + b * t


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass
class Primitive:
    kind: str  # sphere | box | cylinder
    center: np.ndarray  # (3,) for sphere; base centre (floor contact) for box/cylinder
    size: np.ndarray  # sphere: (r,); box: half extents (3,); cylinder: (radius, height)
    yaw: float
    material: Material

    @property
    def footprint(self) -> float:
        """Radius of the xz footprint."""
        if self.kind == "box":
            return float(np.hypot(self.size[0], self.size[2]))
        return float(self.size[0])

    def describe(self) -> str:
        shape = {"sphere": "ball", "box": "box", "cylinder": "pillar"}[self.kind]
        return _article(f"{self.material.describe()} {shape}")


def intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters ``t`` ``(N,)`` (inf on miss; rays ``o + t d``, ``d`` not unit) and
    unit normals ``(N, 3)`` for rays from ``o`` ``(3,)`` along ``d`` ``(N, 3)``."""
    n = len(d)
    inf = np.full(n, np.inf)
    if prim.kind == "sphere":
        r = prim.size[0]
        oc = o - prim.center
        a = (d * d).sum(1)
        b = d @ oc
        c = oc @ oc - r * r
        disc = b * b - a * c
        hit = disc > 0
        sq = np.sqrt(np.where(hit, disc, 0))
        t = (-b - sq) / a
        t = np.where(hit & (t > EPS), t, np.inf)
        normal = (o + t[:, None] * d - prim.center) / r
        return t, np.where(np.isfinite(t)[:, None], normal, 0)
    cos, sin = math.cos(prim.yaw), math.sin(prim.yaw)
    rot = np.array([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]])  # world -> local (about y)
    ol = rot @ (o - prim.center)
    dl = d @ rot.T
    if prim.kind == "box":
        half = prim.size
        lo = np.array([-half[0], 0.0, -half[2]])
        hi = np.array([half[0], 2 * half[1], half[2]])
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dl
            t1 = (lo - ol) * inv
            t2 = (hi - ol) * inv
        tmin = np.minimum(t1, t2)
        tmax = np.maximum(t1, t2)
        tmin = np.where(np.isnan(tmin), -np.inf, tmin)
        tmax = np.where(np.isnan(tmax), np.inf, tmax)
        t_near = tmin.max(1)
        t_far = tmax.min(1)
        hit = (t_near <= t_far) & (t_near > EPS)
        t = np.where(hit, t_near, np.inf)
        axis = tmin.argmax(1)
        nl = np.zeros((n, 3))
        nl[np.arange(n), axis] = -np.sign(dl[np.arange(n), axis])
        normal = nl @ rot  # local -> world
        return t, normal
    # vertical cylinder: radius r, from y=0 to y=h (local)
    r, h = prim.size[0], prim.size[1]
    a = dl[:, 0] ** 2 + dl[:, 2] ** 2
    b = dl[:, 0] * ol[0] + dl[:, 2] * ol[2]
    c = ol[0] ** 2 + ol[2] ** 2 - r * r
    disc = b * b - a * c
    ok = (disc > 0) & (a > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0))
    t_side = np.where(ok, (-b - sq) / np.where(a > 1e-12, a, 1), np.inf)
    y = ol[1] + t_side * dl[:, 1]
    t_side = np.where((t_side > EPS) & (y >= 0) & (y <= h), t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (h - ol[1]) / dl[:, 1]
    px = ol[0] + t_cap * dl[:, 0]
    pz = ol[2] + t_cap * dl[:, 2]
    t_cap = np.where((t_cap > EPS) & (px * px + pz * pz <= r * r) & (ol[1] > h), t_cap, np.inf)
    side = t_side <= t_cap
    t = np.where(side, t_side, t_cap)
    pl = ol + np.where(np.isfinite(t), t, 0)[:, None] * dl
    nl = np.where(side[:, None], np.stack([pl[:, 0] / r, np.zeros(n), pl[:, 2] / r], 1),
                  np.array([0.0, 1.0, 0.0]))
    return np.where(np.isfinite(t), t, inf), nl @ rot


@dataclass
class Room:
    half_x: float
    half_z: float
    height: float
    open_sky: bool
    floor: Material
    walls: Material
    ceiling: Material

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exit parameter ``t``, normal and surface id (0 floor, 1 walls, 2 ceiling,
        3 sky) for rays starting inside the room."""
        lo = np.array([-self.half_x, 0.0, -self.half_z])
        hi = np.array([self.half_x, self.height, self.half_z])
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf))
        axis = t_axes.argmin(1)
        t = t_axes[np.arange(len(d)), axis]
        normal = np.zeros_like(d)
        normal[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
        surface = np.where(axis == 1, np.where(d[:, 1] < 0, 0, 2), 1)
        if self.open_sky:
            surface = np.where(surface == 2, 3, surface)
        return t, normal, surface


@dataclass
class Scene:
    room: Room
    objects: list[Primitive]
    light: np.ndarray

    def describe(self) -> str:
        objs = [o.describe() for o in self.objects]
        listing = ", ".join(objs[:-1]) + (f" and {objs[-1]}" if len(objs) > 1 else objs[0])
        where = "a courtyard open to the sky" if self.room.open_sky else "a room"
        return (f"{where.capitalize()} with {_article(self.room.floor.describe())} floor and "
                f"{self.room.walls.describe()} walls, containing {listing}.")


def render_rays(scene: Scene, eye: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays ``eye + t * dirs`` (``dirs`` ``(N, 3)`` with unit camera-z component).

    Returns ``t`` ``(N,)`` (= z-depth; 0 for sky), hit points ``(N, 3)`` (0 for sky) and
    colours ``(N, 3)`` in [0, 1].
    """
    t, normal, surface = scene.room.intersect(eye, dirs)
    obj_id = np.full(len(dirs), -1)
    for i, prim in enumerate(scene.objects):
        ti, ni = intersect(prim, eye, dirs)
        closer = ti < t
        t = np.where(closer, ti, t)
        normal = np.where(closer[:, None], ni, normal)
        obj_id = np.where(closer, i, obj_id)
    sky = (obj_id < 0) & (surface == 3)
    points = eye + t[:, None] * dirs
    albedo = np.zeros_like(dirs)
    groups = [(obj_id == i, prim.material) for i, prim in enumerate(scene.objects)]
    groups += [((obj_id < 0) & (surface == s), m)
               for s, m in ((0, scene.room.floor), (1, scene.room.walls), (2, scene.room.ceiling))]
    for mask, mat in groups:
        if mask.any():
            albedo[mask] = shade_texture(mat, points[mask])
    lambert = np.clip(normal @ scene.light, 0, 1)
    color = albedo * (0.45 + 0.6 * lambert)[:, None]
    # mild distance fog keeps far walls readable and gives a depth cue
    fog = np.exp(-0.015 * t)[:, None]
    color = color * fog + (1 - fog) * 0.7
    if sky.any():
        up = dirs[sky, 1] / np.linalg.norm(dirs[sky], axis=1)
        color[sky] = np.stack([0.55 + 0.2 * up, 0.7 + 0.15 * up, 0.95 + 0.0 * up], 1)
    t = np.where(sky, 0.0, t)
    points = np.where(sky[:, None], 0.0, points)
    return t, points, np.clip(color, 0, 1)


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


def render_clip(seed: int, index: int, num_frames: int, height: int, width: int,
                trajectory: str | None = None) -> Clip:
    """Render clip ``index`` of the dataset with base ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    room = Room(half_x=float(rng.uniform(3.0, 5.5)), half_z=float(rng.uniform(3.0, 5.5)),
                height=float(rng.uniform(2.8, 4.0)), open_sky=bool(rng.random() < 0.25),
                floor=_material(rng, ("checkered", "tiled", "mottled", "striped"), (0.4, 1.0)),
                walls=_material(rng, ("striped", "mottled", "tiled", "checkered"), (0.3, 0.9)),
                ceiling=_material(rng, ("plain", "mottled"), (0.5, 1.0)))
    kind = trajectory or str(rng.choice(TRAJECTORIES))
    for _ in range(50):
        eyes, targets, phrase = make_trajectory(kind, rng, room, num_frames)
        margin_x = np.abs(eyes[:, 0]) < room.half_x - 0.4
        margin_z = np.abs(eyes[:, 2]) < room.half_z - 0.4
        if margin_x.all() and margin_z.all():
            break
    else:
        eyes = np.clip(eyes, [-room.half_x + 0.4, 0.3, -room.half_z + 0.4],
                       [room.half_x - 0.4, room.height - 0.3, room.half_z - 0.4])
    scene = make_scene(rng, eyes, targets, room)
    fov = float(rng.uniform(50.0, 75.0))
    f = 0.5 * width / math.tan(math.radians(fov) / 2)
    K = np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]])
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
    return Clip(frames, depth, points, w2c, K, f"{scene.describe()} {phrase}", kind)


def _write_clip(args: tuple) -> dict:
    out_dir, index, seed, num_frames, height, width, per_frame, fps = args
    clip = render_clip(seed, index, num_frames, height, width)
    clip_id = f"clip_{index:05d}"
    write_video(out_dir / "videos" / f"{clip_id}.mp4", clip.frames, fps=fps)
    (out_dir / "camera_params").mkdir(parents=True, exist_ok=True)
    write_seed_cameras(out_dir / "camera_params" / f"{clip_id}.txt", clip.w2c)
    rec = {"clip_id": clip_id, "prompt": clip.prompt, "fps": fps, "trajectory": clip.trajectory,
           "video": f"videos/{clip_id}.mp4", "cameras": f"camera_params/{clip_id}.txt",
           "intrinsics": [clip.K[0, 0], clip.K[1, 1], clip.K[0, 2], clip.K[1, 2]],
           "height": height, "width": width, "num_frames": num_frames}
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


def synthesize_dataset(out_dir: str | Path, num_clips: int = 100, num_frames: int = 49, height: int = 128,
                       width: int = 128, seed: int = 0, workers: int | None = None, per_frame: bool = False,
                       fps: float = 16.0, progress: bool = False) -> Path:
    """Render ``num_clips`` clips into ``out_dir`` in the seed layout and write
    ``metadata.json``. Deterministic in ``seed`` (independent of ``workers``).

    Args:
        per_frame: write depth/points as ``<name>/<clip>/frame_XXXX.npy`` (the seed's
            per-frame layout) instead of one ``(T, ...)`` ``.npy`` per clip.
        workers: processes (default: ``min(num_clips, os.cpu_count())``).

    Returns:
        ``out_dir`` as a Path. ``height`` and ``width`` must be even (H.264 yuv420p).
    """
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for H.264, got {height}x{width}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, i, seed, num_frames, height, width, per_frame, fps) for i in range(num_clips)]
    workers = workers or min(num_clips, mp.cpu_count())
    if workers <= 1:
        it = map(_write_clip, jobs)
        pool = None
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers)
        it = pool.imap(_write_clip, jobs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=num_clips, desc="synth", unit="clip")
    try:
        records = list(it)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    write_metadata(out_dir, records)
    return out_dir
