"""``fantasyworld evaluate`` end to end on three synthetic clips with a tiny checkpoint:
metrics.json has the documented keys, the baselines are scored, the report is written."""

from __future__ import annotations

import json
import math

import pytest

from fantasyworld.cli import main
from fantasyworld.data.split import split_clip_ids
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.eval.evaluate import CAMERA_KEYS, DEPTH_KEYS, POINT_KEYS
from fantasyworld.inference.testing import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = synthesize_dataset(root / "data", num_clips=3, num_frames=5, height=32, width=32, seed=3, workers=1)
    ckpt = write_tiny_checkpoint(root / "ckpt")
    return data, ckpt, root


def test_evaluate_cli_writes_metrics_and_report(tiny_setup):
    data, ckpt, root = tiny_setup
    out = root / "eval_all"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all", "--frames", "5",
               "--size", "32x32", "--steps", "2", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"version", "checkpoint", "preset", "stage", "data", "split", "clips", "settings", "baselines",
            "summary", "acceptance", "per_clip"} <= set(m)
    assert m["split"] == "all" and len(m["clips"]) == 3 and m["stage"] == 2
    for mode in ("latents", "generation"):
        for method in ("model", "baseline"):
            assert set(m["summary"][mode][method]) == {*DEPTH_KEYS, *CAMERA_KEYS, *POINT_KEYS}
        assert m["summary"][mode]["num_clips"] == 3
        assert set(m["summary"][mode]["oracle"]) == set(DEPTH_KEYS)  # depth only, ground truth only
    for clip in m["clips"]:
        assert m["per_clip"][clip]["generation"]["oracle"] == m["per_clip"][clip]["latents"]["oracle"]
    # the identity-pose baseline never predicts motion: translation direction error is 90
    assert m["summary"]["latents"]["baseline"]["trans_err"] == 90.0
    oracle, constant = (m["summary"]["latents"][k]["abs_rel_median"] for k in ("oracle", "baseline"))
    assert math.isfinite(oracle) and 0.0 < oracle < constant
    assert set(m["oracles"]) == {"token_depth"}
    acc = m["acceptance"]
    assert set(acc) >= {"depth_abs_rel", "rotation_error", "passed", "verdict"}
    assert acc["verdict"].startswith(("PASS", "FAIL"))
    for name in ("report.html", "metrics_table.png", "depth_samples.png", "trajectories.png"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert "depth_samples.png" in html and "trajectories.png" in html and "constant_depth" in html
    assert f"token resolution from ground truth (oracle, ceiling of the ratio: {constant / oracle:.2f}x)" in html


def test_evaluate_held_out_split_and_bad_input(tiny_setup, capsys):
    data, ckpt, root = tiny_setup
    out = root / "eval_held"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--modes", "latents", "--frames", "5",
               "--size", "32x32", "--out", str(out), "--no-report", "--camera-conditioning", "gt"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "held-out" and "generation" not in m["summary"]
    assert m["clips"] == split_clip_ids(["clip_00000", "clip_00001", "clip_00002"])[1]
    assert not (out / "report.html").exists()
    rc = main(["evaluate", "--checkpoint", str(root / "missing"), "--data", str(data), "--out", str(out)])
    assert rc == 2 and "error:" in capsys.readouterr().err


def test_shared_baseline_scores_are_computed_once_and_equal(tiny_setup):
    from fantasyworld.eval.evaluate import EvalSettings, evaluate

    data, ckpt, root = tiny_setup
    settings = EvalSettings(split="all", modes=("latents",), num_frames=5, height=32, width=32)
    fresh = evaluate(ckpt, data, root / "eval_fresh", settings, report=False, log=None)
    shared: dict = {}
    first = evaluate(ckpt, data, root / "eval_first", settings, report=False, log=None, baseline_scores=shared)
    assert set(shared) == {(c, 5, 32, 32) for c in first["clips"]}
    clip = first["clips"][0]
    assert set(shared[(clip, 5, 32, 32)]) == {"baseline", "oracle"}
    shared[(clip, 5, 32, 32)]["baseline"] = {**shared[(clip, 5, 32, 32)]["baseline"], "rot_err": -1.0}
    shared[(clip, 5, 32, 32)]["oracle"] = {**shared[(clip, 5, 32, 32)]["oracle"], "abs_rel_median": -2.0}
    second = evaluate(ckpt, data, root / "eval_second", settings, report=False, log=None, baseline_scores=shared)
    assert second["per_clip"][clip]["latents"]["baseline"]["rot_err"] == -1.0  # read from the dict, not rescored
    assert second["per_clip"][clip]["latents"]["oracle"]["abs_rel_median"] == -2.0
    for c in first["clips"]:
        for method in ("baseline", "oracle"):
            assert first["per_clip"][c]["latents"][method] == fresh["per_clip"][c]["latents"][method]
