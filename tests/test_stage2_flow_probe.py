"""``benchmarks/stage2_flow_probe.py`` on a smoke demo: every variant trains and is scored on both
splits, the frozen backbone's loss is the same for every variant (same clips, noise and levels),
and a bad variant is refused by name."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import stage2_flow_probe  # noqa: E402

from fantasyworld.cli import main as cli_main  # noqa: E402


def test_probe_scores_every_variant(tmp_path):
    demo = tmp_path / "demo"
    assert cli_main(["demo", "--smoke", "--out", str(demo)]) == 0
    rows = stage2_flow_probe.main(["--demo", str(demo), "--steps", "2", "--clips", "1", "--sigmas", "0.5",
                                   "--variants", "camera_dropout=0.5,shift=1;lambda_geo=0.1"])
    assert [r["variant"] for r in rows] == [{"camera_dropout": 0.5, "shift": 1.0}, {"lambda_geo": 0.1}]
    for row in rows:
        assert row["steps"] == 2
        for split in ("held_out", "train"):
            scores = row[split]
            assert scores["clips"] == 1
            for name in ("stage2_camera", "stage2_no_camera", "frozen_backbone"):
                assert math.isfinite(scores[name]) and scores[name] > 0
                assert len(scores["per_sigma"][name]) == 1
    # the frozen backbone sees the same latents and noise in every variant: equal to the digit
    assert rows[0]["held_out"]["frozen_backbone"] == rows[1]["held_out"]["frozen_backbone"]
    assert rows[0]["train"]["frozen_backbone"] == rows[1]["train"]["frozen_backbone"]


def test_bad_variant_is_named():
    with pytest.raises(ValueError, match="camera_wieght=3"):
        stage2_flow_probe.parse_variant("camera_wieght=3")
    assert stage2_flow_probe.parse_variant("lambda_geo=0.1, shift=1") == {"lambda_geo": 0.1, "shift": 1.0}
