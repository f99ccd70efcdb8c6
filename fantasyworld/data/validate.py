"""``fantasyworld data validate ROOT``: check every record of a seed-layout dataset.

Runs the loader's checks (:func:`fantasyworld.data.loader.inspect_clip`) with problems
collected instead of raised, then the checks that need the whole clip: every video frame
decodes and their number matches the cameras, depth/points contain no NaN/inf.
"""

from __future__ import annotations

from pathlib import Path

from fantasyworld.data.formats import Reporter, load_metadata, read_video
from fantasyworld.data.loader import inspect_clip
from fantasyworld.errors import FRAME_COUNT, TOO_FEW_FRAMES, DataError, Problem


def validate_dataset(root: str | Path, decode_video: bool = True, check_values: bool = True,
                     progress: bool = False, min_frames: int | None = None) -> tuple[list[Problem], int]:
    """Check a dataset; returns ``(problems, number_of_records)``.

    Args:
        decode_video: decode every frame (finds corrupt streams and wrong frame counts
            when the container header has no count). Slower.
        check_values: read depth/points fully and check for NaN/inf.
        min_frames: report ``too_few_frames`` for a clip shorter than this (the frames a
            training sample spans, ``(num_frames - 1) * stride + 1``).
    """
    root = Path(root)
    report = Reporter(collect=True)
    records = load_metadata(root, report)
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc="validate", unit="clip")
    for record in iterator:
        info = inspect_clip(root, record, report)
        if info is None:
            continue
        if min_frames is not None and info.num_frames < min_frames:
            report(DataError(record.cameras, TOO_FEW_FRAMES, f"{info.num_frames} frames, a training sample spans "
                                                             f"{min_frames}"))
        if decode_video:
            try:
                n = len(read_video(record.video))
                if n != info.num_frames:
                    report(DataError(record.video, FRAME_COUNT, f"video decodes to {n} frames, "
                                                                f"cameras {record.cameras.name} have "
                                                                f"{info.num_frames}"))
            except DataError as err:
                report(err)
        if check_values:
            for src in (info.depth, info.points):
                try:
                    src.read()
                except DataError as err:
                    report(err)
    return report.problems, len(records)


def format_report(problems: list[Problem], num_records: int) -> str:
    """One line per problem, then a summary line."""
    lines = [str(p) for p in problems]
    files = len({p.path for p in problems})
    if problems:
        lines.append(f"{len(problems)} problem(s) in {files} file(s); {num_records} clip record(s) checked")
    else:
        lines.append(f"OK: {num_records} clip record(s), no problems")
    return "\n".join(lines)
