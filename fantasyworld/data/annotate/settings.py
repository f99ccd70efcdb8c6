"""The settings of ``fantasyworld data annotate``, and the reasons a clip is rejected."""

from __future__ import annotations

from dataclasses import dataclass, field

from fantasyworld.data.annotate.alignment import AlignSettings
from fantasyworld.data.annotate.sfm import MAPPERS

#: Stable rejection codes (``report.json`` ``reason_code``).
REJECTIONS = ("unreadable_video", "too_few_frames", "ground_truth_missing", "sfm_failed", "too_few_registered",
              "unregistered_ends", "reprojection_error", "focal_length", "estimator_output", "depth_alignment",
              "no_valid_depth", "error")


@dataclass
class AnnotateSettings:
    """Everything ``annotate_videos`` does (CLI flags in parentheses).

    Attributes:
        num_frames, stride: frames ``stride * arange(num_frames)`` of each video
            (``--frames``, ``--stride``).
        size: output ``(H, W)`` (``--size``; default the stored size, made even).
        depth, depth_model: depth estimator and its model folder (``--depth``,
            ``--depth-model``).
        cameras: camera estimator (``--cameras``).
        gt_root: seed-layout dataset for the ``gt`` estimators (``--gt-root``).
        intrinsics: known ``(fx, fy, cx, cy)`` in pixels of the *stored* video
            (``--intrinsics``), or ``fov_deg``, its horizontal field of view (``--fov``);
            given, the focal length is kept fixed in bundle adjustment unless
            ``refine_intrinsics``.
        mapper: ``incremental`` or ``global`` SfM (``--mapper``).
        min_registered, max_reprojection, fov_range, min_rotation_deg: camera rejection
            bounds (the last two only when SfM estimated the focal length).
        align: depth alignment knobs (``--max-depth-residual`` sets ``align.max_residual``).
        workers: processes for decoding + cameras (``--workers``).
        sfm_threads: threads per SfM (default: the cores divided among the workers).
        device: torch device of the depth model (``auto``: cuda when present).
        batch_size: depth model batch.
        overwrite: redo every clip; retry_rejected: redo rejected clips.
    """

    num_frames: int = 81
    stride: int = 1
    size: tuple[int, int] | None = None
    depth: str = "depth-anything"
    depth_model: str | None = None
    cameras: str = "sfm"
    gt_root: str | None = None
    intrinsics: tuple[float, float, float, float] | None = None
    fov_deg: float | None = None
    refine_intrinsics: bool = False
    mapper: str = "incremental"
    min_registered: float = 0.8
    max_reprojection: float = 2.0
    fov_range: tuple[float, float] = (20.0, 120.0)
    min_rotation_deg: float = 5.0
    align: AlignSettings = field(default_factory=AlignSettings)
    workers: int = 1
    sfm_threads: int | None = None
    device: str = "auto"
    batch_size: int = 8
    overwrite: bool = False
    retry_rejected: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 2 or self.stride < 1:
            raise ValueError(f"need --frames >= 2 and --stride >= 1, got {self.num_frames} and {self.stride}")
        if self.mapper not in MAPPERS:
            raise ValueError(f"--mapper must be one of {', '.join(MAPPERS)}, got {self.mapper!r}")
        if not 0.0 < self.min_registered <= 1.0:
            raise ValueError(f"--min-registered must be in (0, 1], got {self.min_registered}")
        if self.intrinsics is not None and self.fov_deg is not None:
            raise ValueError("give --intrinsics or --fov, not both")
        if self.fov_deg is not None and not 0.0 < self.fov_deg < 180.0:
            raise ValueError(f"--fov must be in (0, 180) degrees, got {self.fov_deg}")


class Rejected(Exception):
    """A clip is rejected: ``code`` (one of :data:`REJECTIONS`) and a one-line reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"[{code}] {reason}")
        self.code = code
        self.reason = reason


# ----------------------------------------------------------------------------------------
# estimators
