"""Structure from motion on the sampled frames of one clip, with pycolmap (no weights).

Pipeline (:func:`run_sfm`): the frames are written as PNG files to a scratch folder, then

1. SIFT features (``pycolmap.extract_features``, CPU), one shared pinhole camera for the
   whole clip (``CameraMode.SINGLE``): ``SIMPLE_PINHOLE`` (one focal length, principal
   point at the image centre, kept fixed) unless known intrinsics with ``fx != fy`` ask for
   ``PINHOLE``;
2. sequential matching for video (``pycolmap.match_sequential``: every frame against its
   ``overlap`` successors plus quadratically spaced ones) with geometric verification;
3. mapping: incremental (``pycolmap.incremental_mapping``, default) or global
   (``pycolmap.global_mapping``, GLOMAP), each ending with bundle adjustment. The focal
   length is refined by bundle adjustment when it is unknown and kept fixed when it is
   given (``intrinsics``; the protocol of the camera-accuracy papers). When the first
   incremental attempt leaves frames unregistered, a second one with COLMAP's stricter
   initial-pair defaults is run and the better of the two kept.

The largest reconstruction is kept; frames outside it are *unregistered*. Poses come back
in the package convention (OpenCV axes, world-to-camera, pixel intrinsics with the corner
pixel convention, which is COLMAP's), in the reconstruction's arbitrary world frame and
scale. For the depth alignment, every registered frame gets its *sparse depth*: the pixel
position ``(u, v)`` of each 2D observation of a triangulated point and that point's
z-depth in the frame.

Degenerate motion: without rotation (a pure sideways slide or dolly) the focal length is
not observable from the images (scaling the focal length and the depths together gives
the same pictures), so give the intrinsics (``--fov`` / ``--intrinsics``) for such clips;
a pure rotation (no translation) has no parallax and cannot be reconstructed at all.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fantasyworld.geometry.cameras import interpolate_c2w, invert_se3

log = logging.getLogger(__name__)

MAPPERS = ("incremental", "global")


@dataclass
class SfmOptions:
    """Settings of :func:`run_sfm`.

    Attributes:
        intrinsics: known ``(3, 3)`` pixel K at the frames' resolution, or ``None``
            (unknown: the focal length starts at ``1.2 max(H, W)``, COLMAP's guess, and
            bundle adjustment refines it).
        refine_intrinsics: refine a given focal length too (default: keep it fixed).
        mapper: ``incremental`` or ``global``.
        overlap: sequential matching window (frames).
        max_features: SIFT features per frame at most (2048: at 528x304 the frames of a
            textured clip hold ~3700; the cap cut mapping from 68 to 52 s at no measured
            accuracy cost).
        peak_threshold: SIFT detection threshold (COLMAP's default is 0.0067; lower finds
            more features on small frames).
        global_ba_growth: incremental mapping runs a global bundle adjustment each time
            the model has grown by this factor in frames or points (COLMAP's default 1.1;
            1.4 halved the mapping time of an 81-frame clip, 52 -> 32 s, with the same
            accuracy: every frame is still refined by the local bundle adjustments and the
            final global one).
        num_threads: CPU threads (-1: all).
        seed: random seed of the mapper (runs are repeatable).
    """

    intrinsics: np.ndarray | None = None
    refine_intrinsics: bool = False
    mapper: str = "incremental"
    overlap: int = 10
    max_features: int = 2048
    peak_threshold: float = 0.004
    global_ba_growth: float = 1.4
    num_threads: int = -1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mapper not in MAPPERS:
            raise ValueError(f"mapper must be one of {', '.join(MAPPERS)}, got {self.mapper!r}")


@dataclass
class SfmResult:
    """Cameras recovered by :func:`run_sfm` (world frame and scale of the reconstruction).

    Attributes:
        w2c: ``(T, 4, 4)`` world-to-camera; NaN rows for unregistered frames.
        registered: ``(T,)`` bool.
        K: ``(3, 3)`` pixel intrinsics of the shared camera.
        points3d: ``(N, 3)`` triangulated world points.
        sparse: per frame, ``(N_t, 3)`` rows ``u, v, z``: pixel position (corner
            convention) of each observation of a triangulated point and its z-depth in
            that frame; empty for unregistered frames.
        reprojection_error: mean reprojection error over all observations (pixels).
        frame_errors: ``(T,)`` mean reprojection error per frame (NaN if unregistered).
        num_features: SIFT features found over all frames.
        num_models: reconstructions the mapper made (the largest is kept).
        message: why nothing or little was registered (empty when all is well).
        seconds: wall time.
    """

    w2c: np.ndarray
    registered: np.ndarray
    K: np.ndarray
    points3d: np.ndarray
    sparse: list[np.ndarray]
    reprojection_error: float
    frame_errors: np.ndarray
    num_features: int = 0
    num_models: int = 0
    message: str = ""
    seconds: float = 0.0
    attempts: list[dict] = field(default_factory=list)

    @property
    def registered_fraction(self) -> float:
        return float(self.registered.mean()) if len(self.registered) else 0.0


def _pycolmap():
    try:
        import pycolmap
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError("structure from motion needs pycolmap: pip install -e \".[annotate]\"") from exc
    pycolmap.logging.minloglevel = 2  # errors only: COLMAP's INFO lines would bury the progress bar
    return pycolmap


def _write_frames(frames: np.ndarray, folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.png" for i in range(len(frames))]
    for name, img in zip(names, frames):
        Image.fromarray(np.ascontiguousarray(img)).save(folder / name, compress_level=1)
    return names


def _empty(num_frames: int, k: np.ndarray, message: str, num_features: int = 0) -> SfmResult:
    return SfmResult(w2c=np.full((num_frames, 4, 4), np.nan), registered=np.zeros(num_frames, bool), K=k,
                     points3d=np.zeros((0, 3)), sparse=[np.zeros((0, 3)) for _ in range(num_frames)],
                     reprojection_error=float("nan"), frame_errors=np.full(num_frames, np.nan),
                     num_features=num_features, message=message)


def _camera_k(camera) -> np.ndarray:
    """Pinhole part of a pycolmap camera as a ``(3, 3)`` K."""
    return np.asarray(camera.calibration_matrix(), dtype=np.float64)


def _extract(result_of, names: list[str], num_frames: int, k0: np.ndarray, num_features: int) -> SfmResult:
    """Our :class:`SfmResult` from a pycolmap reconstruction."""
    rec = result_of
    index = {name: i for i, name in enumerate(names)}
    w2c = np.full((num_frames, 4, 4), np.nan)
    registered = np.zeros(num_frames, bool)
    sparse = [np.zeros((0, 3)) for _ in range(num_frames)]
    errors = np.full(num_frames, np.nan)
    ids = list(rec.point3D_ids())
    xyz = np.array([rec.points3D[i].xyz for i in ids]).reshape(-1, 3)
    row_of = {pid: r for r, pid in enumerate(ids)}
    cam = next(iter(rec.cameras.values()))
    k = _camera_k(cam)
    all_err = []
    for image in rec.images.values():
        if not image.has_pose or image.name not in index:
            continue
        i = index[image.name]
        m = np.eye(4)
        m[:3, :4] = image.cam_from_world().matrix()
        w2c[i] = m
        registered[i] = True
        obs = image.get_observation_points2D()
        if len(obs) == 0:
            continue
        uv = np.array([p.xy for p in obs], dtype=np.float64)
        pts = xyz[[row_of[p.point3D_id] for p in obs]]
        cam_pts = pts @ m[:3, :3].T + m[:3, 3]
        z = cam_pts[:, 2]
        proj = cam_pts @ k.T
        uv_hat = proj[:, :2] / np.where(np.abs(proj[:, 2:]) > 1e-12, proj[:, 2:], 1e-12)
        err = np.linalg.norm(uv_hat - uv, axis=1)
        ok = z > 0
        sparse[i] = np.concatenate([uv[ok], z[ok, None]], axis=1)
        errors[i] = float(err.mean())
        all_err.append(err)
    mean_err = float(np.concatenate(all_err).mean()) if all_err else float("nan")
    return SfmResult(w2c=w2c, registered=registered, K=k, points3d=xyz, sparse=sparse,
                     reprojection_error=mean_err, frame_errors=errors, num_features=num_features)


def _count_features(pycolmap, db_path: Path) -> int:
    db = pycolmap.Database.open(str(db_path))
    try:
        return int(db.num_keypoints())
    finally:
        db.close()


def run_sfm(frames: np.ndarray, options: SfmOptions | None = None, work_dir: str | Path | None = None
            ) -> SfmResult:
    """Cameras of ``frames`` ``(T, H, W, 3)`` uint8 by structure from motion (module docstring).

    Never raises for bad footage: a clip SfM cannot reconstruct comes back with no frame
    registered and :attr:`SfmResult.message` saying why. ``work_dir``: scratch parent
    folder (default: the system temporary folder); the scratch folder is deleted.
    """
    pycolmap = _pycolmap()
    options = options or SfmOptions()
    start = time.perf_counter()
    frames = np.asarray(frames)
    t, h, w = frames.shape[:3]
    known = options.intrinsics is not None
    if known:
        k0 = np.asarray(options.intrinsics, dtype=np.float64).reshape(3, 3)
    else:
        f0 = 1.2 * max(h, w)
        k0 = np.array([[f0, 0, w / 2.0], [0, f0, h / 2.0], [0, 0, 1.0]])
    scratch = Path(tempfile.mkdtemp(prefix="fw-sfm-", dir=work_dir))
    try:
        names = _write_frames(frames, scratch / "images")
        db = scratch / "database.db"
        reader = pycolmap.ImageReaderOptions()
        if known and abs(k0[0, 0] - k0[1, 1]) > 1e-6 * k0[0, 0]:
            reader.camera_model = "PINHOLE"
            reader.camera_params = f"{k0[0, 0]},{k0[1, 1]},{k0[0, 2]},{k0[1, 2]}"
        else:
            reader.camera_model = "SIMPLE_PINHOLE"
            if known:
                reader.camera_params = f"{k0[0, 0]},{k0[0, 2]},{k0[1, 2]}"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = options.num_threads
        extraction.sift.max_num_features = options.max_features
        extraction.sift.peak_threshold = options.peak_threshold
        pycolmap.extract_features(db, scratch / "images", camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        num_features = _count_features(pycolmap, db)
        if num_features == 0:
            res = _empty(t, k0, "no SIFT feature in any frame (no texture?)")
            res.seconds = time.perf_counter() - start
            return res
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = options.overlap
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = options.num_threads
        pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
        best: SfmResult | None = None
        attempts = []
        trials = [(4.0, 50), (16.0, 100)] if options.mapper == "incremental" else [None]
        for n, trial in enumerate(trials):
            out = scratch / f"sparse{n}"
            out.mkdir()
            recs = _map(pycolmap, db, scratch / "images", out, options, known, trial)
            if recs:
                rec = max(recs.values(), key=lambda r: r.num_reg_images())
                res = _extract(rec, names, t, k0, num_features)
                res.num_models = len(recs)
            else:
                res = _empty(t, k0, f"the mapper made no reconstruction ({num_features} SIFT features)",
                             num_features)
            attempts.append({"init_min_tri_angle": trial[0] if trial else None,
                             "registered": int(res.registered.sum()),
                             "reprojection_error": res.reprojection_error})
            if best is None or (res.registered.sum(), -np.nan_to_num(res.reprojection_error, nan=1e9)) > (
                    best.registered.sum(), -np.nan_to_num(best.reprojection_error, nan=1e9)):
                best = res
            if best.registered.all():
                break
        assert best is not None
        if not best.registered.all() and not best.message:
            best.message = f"{int(best.registered.sum())}/{t} frames registered"
        best.attempts = attempts
        best.seconds = time.perf_counter() - start
        return best
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _map(pycolmap, db: Path, images: Path, out: Path, options: SfmOptions, known: bool,
         trial: tuple[float, int] | None) -> dict:
    refine = options.refine_intrinsics or not known
    if options.mapper == "global":
        opts = pycolmap.GlobalPipelineOptions()
        opts.num_threads = options.num_threads
        opts.random_seed = options.seed
        opts.mapper.bundle_adjustment.refine_focal_length = refine
        opts.mapper.bundle_adjustment.refine_extra_params = False
        return pycolmap.global_mapping(db, images, out, opts)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.multiple_models = False
    opts.num_threads = options.num_threads
    opts.random_seed = options.seed
    opts.mapper.init_min_tri_angle, opts.mapper.init_min_num_inliers = trial
    opts.ba_global_frames_ratio = options.global_ba_growth
    opts.ba_global_points_ratio = options.global_ba_growth
    opts.ba_refine_focal_length = refine
    opts.ba_refine_extra_params = False
    opts.ba_refine_principal_point = False
    return pycolmap.incremental_mapping(db, images, out, opts)


def interpolate_unregistered(w2c: np.ndarray, registered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unregistered frames that lie *between* registered ones: camera centres
    linearly, rotations by slerp, between the nearest registered neighbours
    (:func:`fantasyworld.geometry.cameras.interpolate_c2w`).

    Returns:
        ``(w2c, interpolated)``: the filled ``(T, 4, 4)`` (frames before the first or after
        the last registered one stay NaN: they are never extrapolated) and the ``(T,)``
        bool mask of the frames that were filled.
    """
    registered = np.asarray(registered, bool)
    out = np.array(w2c, dtype=np.float64, copy=True)
    interpolated = np.zeros(len(registered), bool)
    idx = np.flatnonzero(registered)
    if len(idx) < 2:
        return out, interpolated
    inside = np.arange(idx[0], idx[-1] + 1)
    missing = inside[~registered[inside]]
    if len(missing):
        c2w = invert_se3(out[idx])
        out[missing] = invert_se3(interpolate_c2w(c2w, idx.astype(np.float64), missing.astype(np.float64)))
        interpolated[missing] = True
    return out, interpolated
