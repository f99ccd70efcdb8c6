"""Ray casting of the synthetic worlds: materials, procedural textures, primitives, rooms.

Vectorised numpy: :func:`render_rays` casts a batch of rays into a :class:`Scene` (a
:class:`Room` and its :class:`Primitive` objects) and returns, per ray, the hit distance along
the ray, the world point hit and the Lambert-shaded colour. World frame: y up, floor at
``y = 0``. Scene building and clip writing: :mod:`fantasyworld.data.synth`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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


def detail_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Fine multi-octave value noise in [0, 1] at world points ``(N, 3)``: lattice spacings
    of 7, 19 and 50 cm (weights 0.5, 0.3, 0.2), the blob sizes SIFT detects at 128-512 px,
    contrast-stretched 2.5x around 0.5 (the sum of octaves is otherwise mostly mid-grey)."""
    n = (0.5 * _value_noise(p / 0.07, seed + 11) + 0.3 * _value_noise(p / 0.19, seed + 12)
         + 0.2 * _value_noise(p / 0.5, seed + 13))
    return np.clip((n - 0.5) * 2.5 + 0.5, 0.0, 1.0)


@dataclass
class Scene:
    """A room, its objects and the light direction.

    ``detail`` > 0 modulates every surface's albedo by :func:`detail_noise`
    (``albedo * (1 - detail + 2 detail n)``): high-frequency texture for structure from
    motion. 0 (the default) leaves the renders exactly as without it.
    """

    room: Room
    objects: list[Primitive]
    light: np.ndarray
    detail: float = 0.0

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
            if scene.detail:
                n = detail_noise(points[mask], mat.seed)
                albedo[mask] *= (1.0 - scene.detail + 2.0 * scene.detail * n)[:, None]
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
