"""``fantasyworld demo --smoke`` writes every file of the demo folder (seconds, CPU); an existing
demo folder is refused unless ``--overwrite``; SIGTERM stops it and ``--resume`` finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fantasyworld.cli import main


def test_demo_smoke_writes_every_file(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
    expected = [
        "report.html", "demo.json",
        "generation/video.mp4", "generation/depth.mp4", "generation/depth.npz", "generation/points.npz",
        "generation/points.ply", "generation/cameras.json", "generation/report.html",
        "evaluation/metrics.json", "evaluation/report.html", "evaluation/depth_samples.png",
        "evaluation/trajectories.png", "evaluation/metrics_table.png",
        "runs/stage1/config.json", "runs/stage2/config.json", "data/worlds/metadata.json",
        "data/train/metadata.json",
    ]
    missing = [f for f in expected if not (out / f).is_file() or (out / f).stat().st_size == 0]
    assert not missing, missing
    summary = json.loads((out / "demo.json").read_text())
    train_ids = json.loads((out / "data/train/metadata.json").read_text())["clips"]
    # held-out worlds never reach the training root
    assert {c["clip_id"] for c in train_ids} == set(summary["train_clips"])
    assert set(summary["train_clips"]).isdisjoint(summary["held_out_clips"])
    assert summary["acceptance"]["verdict"].startswith(("PASS", "FAIL"))
    page = (out / "report.html").read_text()
    assert "evaluation/report.html" in page
    lat = summary["summary"]["latents"]  # the page's table shows the oracle's ceiling beside the model
    ceiling = lat["baseline"]["abs_rel_median"] / lat["oracle"]["abs_rel_median"]
    assert f"token resolution from ground truth (oracle, ceiling of the ratio: {ceiling:.2f}x)" in page
    # a second run is refused (nothing changes), with --overwrite it replaces the earlier demo folder
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert main(["demo", "--smoke", "--out", str(out)]) == 2
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    (out / "generation" / "stale.txt").write_text("from an earlier run")
    assert main(["demo", "--smoke", "--overwrite", "--out", str(out)]) == 0
    assert not (out / "generation" / "stale.txt").exists()
    assert json.loads((out / "demo.json").read_text())["acceptance"] == summary["acceptance"]


def _rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigterm_stops_the_demo_and_resume_completes_it(tmp_path: Path) -> None:
    """SIGTERM during stage 1: exit 143 within seconds, nothing of the later stages; ``--resume``
    finishes it with the same stage-1 weights and verdict as an uninterrupted run."""
    steps = ["--smoke", "--stage1-steps", "40"]
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fantasyworld", "demo", *steps, "--out", str(cut)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while _rows(cut / "runs" / "stage1") < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "stage 1 did not start"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output[-3000:]
    assert time.time() - sent < 20  # finishes the current step (well under a second) and checkpoints
    assert "demo --resume" in output and "Traceback" not in output
    stopped_at = _rows(cut / "runs" / "stage1")
    assert stopped_at < 40, "stage 1 finished before the signal"
    assert not (cut / "runs" / "stage2").exists() and not (cut / "evaluation").exists()
    assert not (cut / "generation").exists() and not (cut / "demo.json").exists()

    full = tmp_path / "full"
    assert main(["demo", *steps, "--out", str(full)]) == 0
    assert main(["demo", *steps, "--resume", "--out", str(cut)]) == 0
    want, got = (json.loads((d / "demo.json").read_text()) for d in (full, cut))
    assert got["acceptance"]["verdict"] == want["acceptance"]["verdict"]
    assert got["summary"] == want["summary"]
    w_full, w_cut = (load_file(str(d / "runs/stage1/step-40.safetensors")) for d in (full, cut))
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    # --resume with other settings is refused
    assert main(["demo", "--smoke", "--stage1-steps", "41", "--resume", "--out", str(cut)]) == 2


def test_the_demo_stages_run_under_a_time_budget(tmp_path: Path, capsys) -> None:
    """The full demo gives each stage's trainer its wall-clock budget (a slow machine plans fewer
    steps instead of running over ten minutes); ``--stage-seconds`` sets them, 0 turns one off."""
    from fantasyworld.demo import DemoConfig, _train_config

    cfg = DemoConfig()
    budgets = [_train_config(cfg, stage, tmp_path, tmp_path / f"s{stage}", tmp_path / "w.safetensors"
                             if stage == 2 else None).time_budget_s for stage in (1, 2)]
    assert budgets == [cfg.stage1_seconds, cfg.stage2_seconds] and all(b and b > 0 for b in budgets)
    assert _train_config(DemoConfig.smoke(), 1, tmp_path, tmp_path / "s", None).time_budget_s is None
    assert main(["demo", "--out", str(tmp_path / "bad"), "--stage-seconds", "420"]) == 2
    assert "--stage-seconds '420': give two seconds" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything is written
