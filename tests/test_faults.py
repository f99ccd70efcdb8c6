"""Faulty inputs to ``train``, ``generate``, ``evaluate`` and ``convert-official``: each is a
named error (the file and what is wrong), a non-zero exit and no traceback, and nothing is
written or changed (the dataset, run or output folder hashes the same before and after); a
torn metrics line and a damaged newest checkpoint do not break a resume. docs/training.md
("Faults") has the table."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.training.logging import METRICS_NAME, read_metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIZE = ["data.num_frames=5", "data.height=16", "data.width=32"]
QUIET = ["log.progress=false", "log.tensorboard=false"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "ds"
    synthesize_dataset(root, num_clips=2, num_frames=5, height=16, width=32, seed=0, workers=1)
    return root


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"output_dir={out}", f"data.root={data}",
            *SIZE, *QUIET, *extra]


def _tree_hash(path: Path) -> str:
    """A digest of every file name and content under ``path`` (or of the file itself)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path.parent)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _assert_refused_leaves_folder(run_command, folder: Path, earlier: Path | None, what: str,
                                  capsys: pytest.CaptureFixture[str]) -> str:
    """Copy ``earlier`` to ``folder`` (if given), run the command: it exits 2 with one named
    ``error:`` line holding ``what`` and no traceback, and ``folder`` is byte for byte as it was
    (or still absent). Returns stderr."""
    if earlier is not None:
        shutil.copytree(earlier, folder)
    before = _tree_hash(folder) if earlier is not None else None
    assert run_command() == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and what in err and "Traceback" not in err, err
    if earlier is not None:
        assert _tree_hash(folder) == before
    else:
        assert not folder.exists()
    return err


def _edit_record(key: str, value: object) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        meta = json.loads((root / "metadata.json").read_text())
        meta["clips"][0][key] = value
        (root / "metadata.json").write_text(json.dumps(meta))
    return plant


def _edit_meta(fn: Callable[[dict], dict]) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        (root / "metadata.json").write_text(json.dumps(fn(json.loads((root / "metadata.json").read_text()))))
    return plant


def _camera_bytes(root: Path) -> None:
    (root / "camera_params/clip_00000.txt").write_bytes(b"\xff\xfe\x00\x81 binary\n")


#: a file outside the dataset (beside its root) that a link inside it points at
SECRET = "root:x:0:0:secret-first-line"


def _link_outside(rel: str, content: bytes | None = None) -> Callable[[Path], None]:
    """Replace ``root/rel`` with a symlink to a file outside the root (its own bytes, or ``content``)."""
    def plant(root: Path) -> None:
        outside = root.parent / f"outside-{Path(rel).name}"
        outside.write_bytes((root / rel).read_bytes() if content is None else content)
        (root / rel).unlink()
        (root / rel).symlink_to(outside)
    return plant


def _write(rel: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        (root / rel).write_bytes(data(root) if callable(data) else data)
    return plant


def _save_array(rel: str, array: np.ndarray) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        np.save(root / rel, array)
    return plant


def _edit_cameras(rel: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        np.savetxt(root / rel, fn(np.loadtxt(root / rel)))
    return plant


def _scale_rotation(rows: np.ndarray) -> np.ndarray:
    rows[:, [0, 1, 2, 4, 5, 6, 8, 9, 10]] *= 2.0
    return rows


def _nan_depth_frame(root: Path) -> None:
    depth = np.load(root / "depth/clip_00001.npy")
    depth[4, 3, 3] = np.nan
    np.save(root / "depth/clip_00001.npy", depth)


def _unlink(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


C1 = "clip_00001"  # the second clip: a lazy loader would only meet its faults when it is first sampled
H, W = 16, 32

#: fault -> (plant, the file the message names, what it says[, extra overrides])
TRAIN_DATA_FAULTS: dict[str, tuple] = {
    "fps a string": (_edit_record("fps", "fast"), "metadata.json", "fps must be a positive number"),
    "intrinsics a string": (_edit_record("intrinsics", "abc"), "metadata.json", "intrinsics must be"),
    "unknown camera_format": (_edit_record("camera_format", "nope"), "metadata.json", "unknown camera_format"),
    "records not objects": (_edit_meta(lambda m: {**m, "clips": [1, "x"]}), "metadata.json",
                            "record 0 must be an object"),
    "clips null": (_edit_meta(lambda m: {**m, "clips": None}), "metadata.json", "'clips' must be a list"),
    "clips a number": (_edit_meta(lambda m: {**m, "clips": 4}), "metadata.json", "'clips' must be a list"),
    "metadata a bare number": (_edit_meta(lambda m: 5), "metadata.json", "must be a list of clip records"),
    "empty dataset": (_edit_meta(lambda m: {**m, "clips": []}), "metadata.json", "holds no clip records"),
    "prompt a list": (_edit_record("prompt", ["a", "room"]), "metadata.json", "prompt must be a string"),
    "camera file not UTF-8": (_camera_bytes, "camera_params/clip_00000.txt", "not UTF-8 text"),
    # paths that leave the root: refused before anything reads them
    "video symlinked outside the root": (_link_outside("videos/clip_00000.mp4"), "metadata.json",
                                         "is a symlink that resolves outside the dataset root"),
    "camera symlinked to a system file": (_link_outside(f"camera_params/{C1}.txt", SECRET.encode() + b"\n"),
                                          "metadata.json", "is a symlink that resolves outside the dataset root"),
    "depth symlinked outside the root": (_link_outside(f"depth/{C1}.npy"), "metadata.json",
                                         "is a symlink that resolves outside the dataset root"),
    "path with ..": (_edit_record("video", "../elsewhere.mp4"), "metadata.json", "escapes the dataset root"),
    "absolute path": (_edit_record("depth", "/etc/hostname"), "metadata.json", "escapes the dataset root"),
    # metadata
    "metadata missing": (_unlink("metadata.json"), "metadata.json", "file does not exist"),
    "metadata not JSON": (_write("metadata.json", b"{not json"), "metadata.json", "not valid JSON"),
    "duplicate clip id": (_edit_meta(lambda m: {**m, "clips": [m["clips"][0], m["clips"][0]]}), "metadata.json",
                          "appears more than once"),
    "principal point far outside": (_edit_record("intrinsics", [22.2, 22.2, 960.0, 540.0]), "metadata.json",
                                    "principal point (960, 540) lies outside the 32x16 image"),
    "negative focal length": (_edit_record("intrinsics", [-22.2, 22.2, 16.0, 8.0]), "metadata.json",
                              "with positive focal lengths"),
    # per-clip files of the second clip: found before the first step, not when first sampled
    "video missing": (_unlink(f"videos/{C1}.mp4"), f"videos/{C1}.mp4", "file does not exist"),
    "video garbage": (_write(f"videos/{C1}.mp4", b"garbage" * 100), f"videos/{C1}.mp4", "cannot open video"),
    "depth integer dtype": (_save_array(f"depth/{C1}.npy", np.zeros((5, H, W), np.int32)), f"depth/{C1}.npy",
                            "depth has dtype int32, expected float"),
    "depth wrong size": (_save_array(f"depth/{C1}.npy", np.zeros((5, 8, 8), np.float32)), f"depth/{C1}.npy",
                         "depth is 8x8, video clip_00001.mp4 is 16x32"),
    "depth too few frames": (_save_array(f"depth/{C1}.npy", np.zeros((3, H, W), np.float32)), f"depth/{C1}.npy",
                             "depth has 3 frames, cameras clip_00001.txt have 5"),
    "points not xyz": (_save_array(f"points/{C1}.npy", np.zeros((5, H, W, 2), np.float32)), f"points/{C1}.npy",
                       "expected [H, W, 3]"),
    "points a pickle": (_write(f"points/{C1}.npy", b"garbage" * 100), f"points/{C1}.npy", "cannot read array"),
    "camera columns": (_write(f"camera_params/{C1}.txt", b"1 2 3\n" * 5), f"camera_params/{C1}.txt",
                       "expected 12 columns, found 3"),
    "camera NaN": (_edit_cameras(f"camera_params/{C1}.txt", lambda r: np.where(np.arange(12) == 3, np.nan, r)),
                   f"camera_params/{C1}.txt", "NaN or inf in camera values"),
    "camera rotation not orthonormal": (_edit_cameras(f"camera_params/{C1}.txt", _scale_rotation),
                                        f"camera_params/{C1}.txt", "rotation not orthonormal"),
    "clip shorter than a sample": (lambda root: None, "camera_params/clip_00000.txt",
                                   "5 frames, a training sample spans 9", ("data.num_frames=9",)),
    "NaN outside the sampled window": (_nan_depth_frame, f"depth/{C1}.npy", "NaN/inf values in depth (frame 4)",
                                       ("data.validate_values=true", "data.num_frames=1")),
}


@pytest.mark.parametrize("name", list(TRAIN_DATA_FAULTS))
def test_train_data_fault_is_a_named_error(clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           name: str) -> None:
    plant, rel, what, *extra = TRAIN_DATA_FAULTS[name]
    root = tmp_path / "ds"
    shutil.copytree(clean_root, root)
    plant(root)
    before = _tree_hash(root)
    assert main(_train(root, tmp_path / "run", "steps=1", *(extra[0] if extra else ()))) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and rel in line and what in line, err
    assert "Traceback" not in err and SECRET not in err
    assert _tree_hash(root) == before  # the dataset is only read
    assert not (tmp_path / "run").exists()  # found before the run directory is made: nothing written


def test_skip_validation_defers_a_clip_fault_to_its_first_sample(clean_root: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The up-front check is what makes faults early: without it the loader meets them when sampling."""
    root = tmp_path / "ds"
    shutil.copytree(clean_root, root)
    _write(f"videos/{C1}.mp4", b"garbage" * 100)(root)
    assert main(["train", "--skip-validation", *_train(root, tmp_path / "run", "steps=1")[1:]]) == 2
    err = capsys.readouterr().err
    assert f"videos/{C1}.mp4: cannot" in err and "Traceback" not in err
    assert (tmp_path / "run" / "train_config.yaml").is_file()  # it got as far as starting the run


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_train_output_dir_that_is_a_file(clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         where: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    out = blocker if where == "file" else blocker / "run"
    assert main(_train(clean_root, out, "steps=1")) == 2
    err = capsys.readouterr().err
    expected = "is a file, not a directory" if where == "file" else f"cannot be created: {blocker} is a file"
    assert f"output_dir {out}: {expected}" in err
    assert "Traceback" not in err
    assert blocker.read_text() == "not a folder\n"


def test_train_read_only_output_dir(clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    assert main(_train(clean_root, parent / "run", "steps=1")) == 2
    err = capsys.readouterr().err
    assert f"output_dir {parent / 'run'}: cannot be created: {parent} is read-only" in err
    assert list(parent.iterdir()) == []


def test_generate_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.mp4"
    out.write_bytes(b"previous result")
    # refused before the checkpoint is even looked at
    assert main(["generate", "--checkpoint", str(tmp_path / "absent"), "--prompt", "a room",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: is a file, not a directory" in err and "Traceback" not in err
    assert out.read_bytes() == b"previous result"


def test_torn_metrics_line_is_tolerated_and_truncated_on_resume(clean_root: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(_train(clean_root, run, "steps=2", "checkpoint.every=2")) == 0
    metrics = run / METRICS_NAME
    with metrics.open("a") as f:
        f.write('{"step": 3, "objective": 4.1')  # killed mid-write: no closing brace, no newline
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert f"{metrics}: skipped 1 line(s)" in capsys.readouterr().err
    assert main(["train", "--resume", *_train(clean_root, run, "steps=3", "checkpoint.every=2")[1:]]) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert all(json.loads(line) for line in metrics.read_text().splitlines())  # the torn line is gone


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


#: damage to the newest checkpoint (step 4) of a run -> the file it is in
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "weights truncated": (lambda run: _truncate(run / "step-4.safetensors"), "step-4.safetensors"),
    "state truncated": (lambda run: _truncate(run / "step-4.state.pt"), "step-4.state.pt"),
    "state garbage": (lambda run: (run / "step-4.state.pt").write_bytes(b"\x00garbage" * 512), "step-4.state.pt"),
}


@pytest.fixture(scope="module")
def full_run(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(_train(clean_root, run, "steps=4", "checkpoint.every=2", "checkpoint.keep_last=3")) == 0
    return run


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_walks_back_over_a_damaged_newest_checkpoint(clean_root: Path, full_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], damage: str) -> None:
    from safetensors.torch import load_file

    plant, name = DAMAGES[damage]
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    plant(run)
    capsys.readouterr()
    assert main(["train", "--resume", *_train(clean_root, run, "steps=4", "checkpoint.every=2",
                                              "checkpoint.keep_last=3")[1:]]) == 0
    err = capsys.readouterr().err
    assert f"skipping checkpoint step-4: {run / name}: " in err and "Traceback" not in err
    assert f"resumed from {run / 'step-2.safetensors'} at step 2" in err
    # the resumed run rewrites step 4: the same weights and losses as the uninterrupted run
    want, got = load_file(str(full_run / "step-4.safetensors")), load_file(str(run / "step-4.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    keys = ("step", "objective", "loss_depth", "loss_pmap", "loss_camera", "lr", "grad_norm")
    assert [[r[k] for k in keys] for r in read_metrics(run)] == [[r[k] for k in keys] for r in read_metrics(full_run)]


# ------------------------------------------------------------------ refused runs write nothing
def _stage1_file(path: Path, stage: int = 1, preset: str = "tiny") -> Path:
    """A FantasyWorld checkpoint file of ``stage`` whose metadata names ``preset``."""
    from safetensors.torch import save_file

    from fantasyworld.models.config import get_preset
    from fantasyworld.models.fantasyworld import FantasyWorldModel

    model = FantasyWorldModel(get_preset("tiny"))
    model.save_fantasyworld(path, stage=stage)
    if preset != "tiny":
        from safetensors.torch import load_file

        save_file(load_file(str(path)), str(path), metadata={"format": "fantasyworld", "stage": "1", "preset": preset})
    return path


def _stage2(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(CONFIGS / "stage2_tiny.yaml"), f"output_dir={out}", f"data.root={data}",
            *SIZE, *QUIET, "steps=1", *extra]


#: fault -> (argv from (data root, run dir, scratch dir), what the message says, whether the run dir exists before)
RUN_FAULTS: dict[str, tuple[Callable[[Path, Path, Path], list[str]], str, bool]] = {
    "stage 2, init_from missing": (
        lambda d, run, tmp: _stage2(d, run, f"init_from={tmp / 'absent.safetensors'}"), "file does not exist", False),
    "stage 2, init_from not a checkpoint": (
        lambda d, run, tmp: _stage2(d, run, f"init_from={_write_text(tmp / 'x.safetensors', 'text')}"),
        "unreadable safetensors checkpoint", False),
    "stage 2, init_from a stage-2 file": (
        lambda d, run, tmp: _stage2(d, run, f"init_from={_stage1_file(tmp / 's2.safetensors', stage=2)}"),
        "is a stage-2 checkpoint", False),
    "stage 2, init_from of another preset": (
        lambda d, run, tmp: _stage2(d, run, f"init_from={_stage1_file(tmp / 'p.safetensors', preset='tiny-i2v')}"),
        "does not match model.preset 'tiny'", False),
    "unknown config key": (lambda d, run, tmp: _train(d, run, "steps=1", "bogus.key=1"), "bogus", False),
    "checkpoints present, no --resume": (
        lambda d, run, tmp: _train(d, run, "steps=4"), "already holds checkpoints", True),
    "--resume as stage 2": (
        lambda d, run, tmp: ["train", "--resume", *_stage2(d, run, "steps=6")[1:]],
        "step-4.safetensors: 108 missing keys", True),
    "--resume with another batch": (
        lambda d, run, tmp: ["train", "--resume", *_train(d, run, "steps=6", "batch_size=1",
                                                         "global_batch_size=1")[1:]], "the global batch changed", True),
}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(RUN_FAULTS))
def test_refused_run_writes_nothing(clean_root: Path, full_run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], name: str) -> None:
    argv, what, existing = RUN_FAULTS[name]
    run = tmp_path / "run"
    # an existing run keeps every byte (not even train_config.yaml is rewritten); a new one is never made
    _assert_refused_leaves_folder(lambda: main(argv(clean_root, run, tmp_path)), run, full_run if existing else None,
                                  what, capsys)


def test_resume_takes_overrides_after_the_flag(clean_root: Path, full_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    argv = _train(clean_root, run, "checkpoint.every=2")
    assert main([*argv, "--resume", "steps=5"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ generate / evaluate outputs
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fantasyworld.inference.testing import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=1)


def _generate(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", str(ckpt), "--prompt", "a room", "--camera", "orbit", "--frames", "5",
            "--size", "32x32", "--steps", "1", "--max-points", "200", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def earlier_result(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "out"
    assert main(_generate(tiny_ckpt, out)) == 0
    return out


def _bad_camera(tmp: Path) -> str:
    from fantasyworld.geometry import camera_io
    from fantasyworld.inference.trajectories import named_trajectory

    camera_io.write_seed_cameras(tmp / "seven.txt", named_trajectory("orbit", 7, 32, 32).w2c)
    return str(tmp / "seven.txt")


#: fault -> (argv from (checkpoint, --out, scratch dir), what the message says, --out holds an earlier result)
OUTPUT_FAULTS: dict[str, tuple[Callable[[Path, Path, Path], list[str]], str, bool]] = {
    "generate --out holds an earlier result": (
        lambda c, out, tmp: _generate(c, out), "already holds", True),
    "generate, checkpoint missing": (
        lambda c, out, tmp: _generate(tmp / "absent", out), "absent", False),
    "generate, camera file of another length": (
        lambda c, out, tmp: _generate(c, out, "--camera", _bad_camera(tmp)), "7 cameras but num_frames=5", False),
    "generate, unknown camera name": (lambda c, out, tmp: _generate(c, out, "--camera", "spiral-nowhere"),
                                      "spiral-nowhere", False),
    "generate, camera file not UTF-8": (
        lambda c, out, tmp: _generate(c, out, "--camera", str(_write_bytes(tmp / "b.txt", b"\xff\xfe\x81\n"))),
        "not UTF-8 text", False),
    "generate, VAE directory without weights": (
        lambda c, out, tmp: _generate(c, out, "--vae", str(_write_bytes(tmp / "vae" / "config.json", b"{}").parent)),
        "vae: cannot load the AutoencoderKLWan VAE", False),
    "evaluate --out holds an earlier result": (
        lambda c, out, tmp: ["evaluate", "--checkpoint", str(c), "--data", str(tmp), "--out", str(out)],
        "already holds", True),
}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", list(OUTPUT_FAULTS))
def test_refused_output_changes_nothing(tiny_ckpt: Path, earlier_result: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], name: str) -> None:
    argv, what, existing = OUTPUT_FAULTS[name]
    out = tmp_path / "out"
    err = _assert_refused_leaves_folder(lambda: main(argv(tiny_ckpt, out, tmp_path)), out,
                                        earlier_result if existing else None, what, capsys)
    if existing:
        assert f"--out {out}: already holds" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_overwrite_replaces_the_whole_folder(tiny_ckpt: Path, earlier_result: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(earlier_result, out)
    assert (out / "points.ply").is_file() and (out / "colmap").is_dir()
    assert main(_generate(tiny_ckpt, out, "--geometry", "none", "--overwrite")) == 0
    listed = json.loads((out / "generation.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(listed)  # no depth/points/cameras/COLMAP file of the earlier run stays
    assert not (out / "points.ply").exists() and not (out / "colmap").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_overwrite_keeps_the_earlier_result(tiny_ckpt: Path, earlier_result: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from fantasyworld.inference.result import GenerationResult

    out = tmp_path / "out"
    shutil.copytree(earlier_result, out)
    before = _tree_hash(out)
    real_save = GenerationResult.save

    def save_then_fail(self, out_dir, *args, **kwargs):
        real_save(self, out_dir, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GenerationResult, "save", save_then_fail)
    assert main(_generate(tiny_ckpt, out, "--overwrite")) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _tree_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the half-written folder is gone


# ------------------------------------------------------------------ convert-official
@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(dir with the Wan base, config.json of the structure, the official state dict) of a tiny model."""
    from fantasyworld.models.config import get_preset
    from fantasyworld.models.fantasyworld import FantasyWorldModel
    from fantasyworld.models.official import ours_to_official
    from fantasyworld.models.wan_loading import save_wan_transformer

    root = tmp_path_factory.mktemp("official")
    config = get_preset("tiny-i2v").replace(camera_adapter_blocks=[0, 1, 2, 3], cam_token_projector=True,
                                            camera_trunk_modulation=True, camera_time_layout="official")
    config.save(root / "cfg.json")
    torch.manual_seed(3)
    model = FantasyWorldModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    save_wan_transformer(model.transformer, root / "wan", layout="wan")
    state = ours_to_official(model.fantasyworld_state_dict(2), config, wan_state=model.transformer.state_dict())
    return root, root / "cfg.json", {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}


def _geometry_key(state: dict[str, torch.Tensor]) -> str:
    """An official key of the geometry branch (not a Wan block copy): the converter writes it."""
    return next(k for k in sorted(state) if not k.startswith("pipe.") and state[k].numel() > 4)


def _poke(value: float) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        key = _geometry_key(state)
        t = state[key].clone()
        t.view(-1)[3] = value
        state[key] = t
    return edit


#: fault -> (edit of the official state dict, what the message says)
CONVERT_FAULTS: dict[str, tuple[Callable[[dict], None], str]] = {
    "a NaN inside an intact file": (_poke(float("nan")), "hold NaN/inf values"),
    "an inf inside an intact file": (_poke(float("inf")), "hold NaN/inf values"),
    "an integer tensor": (lambda s: s.update({_geometry_key(s): s[_geometry_key(s)].to(torch.int32)}),
                          "not floating point"),
    "a tensor of the wrong shape": (lambda s: s.update({_geometry_key(s): s[_geometry_key(s)][:1]}), "shape"),
    "a key missing": (lambda s: s.pop(_geometry_key(s)), "cannot convert"),
    "an unknown key": (lambda s: s.update({"IRGBlock.99.bogus.weight": torch.zeros(2)}), "unmapped official keys"),
}


@pytest.mark.parametrize("name", list(CONVERT_FAULTS))
def test_convert_fault_writes_nothing(official: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      name: str) -> None:
    root, cfg_json, state = official
    edit, what = CONVERT_FAULTS[name]
    state = dict(state)
    edit(state)
    pth = tmp_path / "model.pth"
    torch.save(state, pth)
    out = tmp_path / "outs" / "ckpt"
    assert main(["convert-official", "--model-pth", str(pth), "--wan-dir", str(root / "wan"), "--out", str(out),
                 "--config", str(cfg_json), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(pth) in err and what in err and "Traceback" not in err, err
    if "NaN" in what or "floating" in what:
        assert _geometry_key(state) in err  # the tensor is named
    assert not (tmp_path / "outs").exists()  # nothing written, not even the parent


def test_sigterm_during_generate_keeps_the_earlier_result(tiny_ckpt: Path, earlier_result: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    from fantasyworld.inference.result import GenerationResult

    out = tmp_path / "out"
    shutil.copytree(earlier_result, out)
    before = _tree_hash(out)
    real_save = GenerationResult.save

    def save_then_signal(self, out_dir, *args, **kwargs):
        paths = real_save(self, out_dir, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's SIGTERM while the result is being written
        return paths

    monkeypatch.setattr(GenerationResult, "save", save_then_signal)
    assert main(_generate(tiny_ckpt, out, "--overwrite")) == 143
    assert "SIGTERM: generate stopped" in capsys.readouterr().err
    assert _tree_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
