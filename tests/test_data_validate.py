"""Each validation error comes from a planted fault, names the file, and the loader raises it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fantasyworld import errors as E
from fantasyworld.cli import main
from fantasyworld.data.formats import read_video, write_video
from fantasyworld.data.loader import RawClipDataset
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.data.validate import validate_dataset
from fantasyworld.errors import DataError


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "ds"
    synthesize_dataset(root, num_clips=2, num_frames=5, height=16, width=24, seed=0, workers=1)
    return root


def _meta(root: Path) -> dict:
    return json.loads((root / "metadata.json").read_text())


def _set_meta(root: Path, meta: dict) -> None:
    (root / "metadata.json").write_text(json.dumps(meta))


def _missing(root):
    (root / "videos/clip_00000.mp4").unlink()
    return "videos/clip_00000.mp4"


def _corrupt(root):
    (root / "videos/clip_00000.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    return "videos/clip_00000.mp4"


def _short_video(root):
    frames = read_video(root / "videos/clip_00000.mp4")
    write_video(root / "videos/clip_00000.mp4", frames[:4])
    return "videos/clip_00000.mp4"


def _short_depth(root):
    np.save(root / "depth/clip_00000.npy", np.load(root / "depth/clip_00000.npy")[:4])
    return "depth/clip_00000.npy"


def _extra_camera_row(root):
    path = root / "camera_params/clip_00000.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[-1]]) + "\n")
    return "videos/clip_00000.mp4"  # the video (5 frames) disagrees with the 6 cameras


def _points_shape(root):
    np.save(root / "points/clip_00000.npy", np.load(root / "points/clip_00000.npy")[..., :2])
    return "points/clip_00000.npy"


def _depth_resolution(root):
    np.save(root / "depth/clip_00000.npy", np.load(root / "depth/clip_00000.npy")[:, :8])
    return "depth/clip_00000.npy"


def _depth_dtype(root):
    np.save(root / "depth/clip_00000.npy", np.load(root / "depth/clip_00000.npy").astype(np.int32))
    return "depth/clip_00000.npy"


def _depth_nan(root):
    d = np.load(root / "depth/clip_00000.npy")
    d[0, 3, 4] = np.nan
    np.save(root / "depth/clip_00000.npy", d)
    return "depth/clip_00000.npy"


def _points_inf(root):
    p = np.load(root / "points/clip_00000.npy")
    p[0, 1, 1, 2] = np.inf
    np.save(root / "points/clip_00000.npy", p)
    return "points/clip_00000.npy"


def _camera_columns(root):
    path = root / "camera_params/clip_00000.txt"
    lines = path.read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:11])
    path.write_text("\n".join(lines) + "\n")
    return "camera_params/clip_00000.txt"


def _camera_nan(root):
    path = root / "camera_params/clip_00000.txt"
    lines = path.read_text().splitlines()
    parts = lines[1].split()
    parts[3] = "nan"
    lines[1] = " ".join(parts)
    path.write_text("\n".join(lines) + "\n")
    return "camera_params/clip_00000.txt"


def _non_orthonormal(root):
    path = root / "camera_params/clip_00000.txt"
    rows = np.loadtxt(path).reshape(-1, 3, 4)
    rows[1, :, :3] *= 1.05
    np.savetxt(path, rows.reshape(-1, 12))
    return "camera_params/clip_00000.txt"


def _path_escape(root):
    meta = _meta(root)
    meta["clips"][0]["video"] = "../outside/clip_00000.mp4"
    _set_meta(root, meta)
    return "metadata.json"


def _duplicate(root):
    meta = _meta(root)
    meta["clips"].append(dict(meta["clips"][0]))
    _set_meta(root, meta)
    return "metadata.json"


def _set_field(key: str, value: object) -> Callable[[Path], str]:
    def plant(root: Path) -> str:
        meta = _meta(root)
        meta["clips"][0][key] = value
        _set_meta(root, meta)
        return "metadata.json"
    return plant


def _record_not_object(root):
    meta = _meta(root)
    meta["clips"][0] = 7
    _set_meta(root, meta)
    return "metadata.json"


def _set_clips(value: object) -> Callable[[Path], str]:
    def plant(root: Path) -> str:
        _set_meta(root, {**_meta(root), "clips": value})
        return "metadata.json"
    return plant


def _camera_not_utf8(root):
    (root / "camera_params/clip_00000.txt").write_bytes(b"\xff\xfe\x00 not text\n")
    return "camera_params/clip_00000.txt"


FAULTS: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing video": (_missing, E.MISSING_FILE),
    "corrupt video": (_corrupt, E.CORRUPT_VIDEO),
    "video shorter than cameras": (_short_video, E.FRAME_COUNT),
    "depth shorter than cameras": (_short_depth, E.FRAME_COUNT),
    "extra camera row": (_extra_camera_row, E.FRAME_COUNT),
    "points last dim 2": (_points_shape, E.BAD_SHAPE),
    "depth resolution": (_depth_resolution, E.BAD_SHAPE),
    "depth int32": (_depth_dtype, E.BAD_DTYPE),
    "depth NaN": (_depth_nan, E.NON_FINITE),
    "points inf": (_points_inf, E.NON_FINITE),
    "camera column count": (_camera_columns, E.CAMERA_COLUMNS),
    "camera NaN": (_camera_nan, E.NON_FINITE),
    "non-orthonormal rotation": (_non_orthonormal, E.NON_ORTHONORMAL),
    "path escaping the root": (_path_escape, E.PATH_ESCAPE),
    "duplicate clip id": (_duplicate, E.DUPLICATE_ID),
    "fps a string": (_set_field("fps", "fast"), E.BAD_METADATA),
    "fps negative": (_set_field("fps", -3), E.BAD_METADATA),
    "intrinsics a string": (_set_field("intrinsics", "500 500 12 8"), E.BAD_INTRINSICS),
    "intrinsics ragged rows": (_set_field("intrinsics", [[1, 2, 3, 4], [1, 2]]), E.BAD_INTRINSICS),
    "unknown camera_format": (_set_field("camera_format", "nope"), E.BAD_METADATA),
    "video path a number": (_set_field("video", 5), E.BAD_METADATA),
    "record not an object": (_record_not_object, E.BAD_METADATA),
    "clips null": (_set_clips(None), E.BAD_METADATA),
    "clips a number": (_set_clips(3), E.BAD_METADATA),
    "camera file not UTF-8": (_camera_not_utf8, E.UNREADABLE),
    "prompt a list": (_set_field("prompt", ["a", "room"]), E.BAD_METADATA),
    "clips empty": (_set_clips([]), E.BAD_METADATA),
}

#: what the message of each metadata fault must say besides the file
MESSAGES = {
    "fps a string": "fps must be a positive number, got a string",
    "fps negative": "fps must be a positive number",
    "intrinsics a string": "intrinsics must be",
    "intrinsics ragged rows": "intrinsics must be",
    "unknown camera_format": "unknown camera_format 'nope'",
    "video path a number": "video must be a path string, got a number",
    "record not an object": "record 0 must be an object",
    "clips null": "'clips' must be a list of clip records, got null",
    "clips a number": "'clips' must be a list of clip records, got a number",
    "camera file not UTF-8": "not UTF-8 text",
    "prompt a list": "prompt must be a string, got a list",
    "clips empty": "'clips' holds no clip records",
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_planted_fault_is_reported_by_validate_and_raised_by_loader(clean_root, tmp_path, capsys, name):
    plant, kind = FAULTS[name]
    root = tmp_path / "ds"
    shutil.copytree(clean_root, root)
    rel = plant(root)
    problems, _ = validate_dataset(root)
    assert len(problems) >= 1
    first = problems[0]
    assert first.kind == kind, problems
    assert first.path.endswith(rel), (first.path, rel)
    # only clip 0 was damaged: clip 1's files are never blamed
    assert not any("clip_00001" in p.path for p in problems)

    # CLI: one line per problem naming the file, a summary, exit code 1
    assert main(["data", "validate", str(root)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(problems) + 1
    assert rel in lines[0] and f"[{kind}]" in lines[0] and "problem(s)" in lines[-1]

    # the loader raises the same error (at construction for metadata-level faults)
    with pytest.raises(DataError) as err:
        ds = RawClipDataset(root, num_frames=5)
        ds[0]
    assert err.value.kind == kind and err.value.path.endswith(rel)
    if name in MESSAGES:
        assert MESSAGES[name] in err.value.message and MESSAGES[name] in first.message


def test_clean_dataset_loads_and_validates(clean_root):
    assert validate_dataset(clean_root)[0] == []
    assert RawClipDataset(clean_root, num_frames=5)[1]["clip_id"] == "clip_00001"


def test_too_short_clip_and_missing_metadata(clean_root, tmp_path):
    with pytest.raises(DataError) as err:
        RawClipDataset(clean_root, num_frames=9)[0]
    assert err.value.kind == E.TOO_FEW_FRAMES
    with pytest.raises(ValueError):
        RawClipDataset(clean_root, num_frames=6)  # not 4k+1
    problems, n = validate_dataset(tmp_path)
    assert n == 0 and problems[0].kind == E.MISSING_FILE and problems[0].path.endswith("metadata.json")


def test_nonfinite_depth_can_be_masked_instead_of_raised(clean_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(clean_root, root)
    _depth_nan(root)
    item = RawClipDataset(root, num_frames=5, allow_nonfinite=True)[0]
    assert not item["valid"][0, 3, 4] and item["depth"][0, 3, 4] == 0
