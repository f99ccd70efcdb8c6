"""``fantasyworld demo --smoke`` writes every file of the demo folder (seconds, CPU)."""

from __future__ import annotations

import json

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
    assert "evaluation/report.html" in (out / "report.html").read_text()
    # a second run replaces the earlier demo folder
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
