"""benchmarks/learn_gpu.py: the --smoke CPU run writes every file with every phase timed, and
the acceptance bars pass and fail where they should."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def learn(script):
    return script("benchmarks/learn_gpu.py")


@pytest.fixture(scope="module")
def report(script):
    return script("benchmarks/learn_report.py")


def _summary(abs_rel: float, rot: float, trans: float, chamfer: float) -> dict:
    return {"model": {"abs_rel_median": abs_rel, "rot_err": rot, "trans_err": trans, "chamfer": chamfer},
            "baseline": {"abs_rel_median": 0.32, "rot_err": 14.0, "trans_err": 90.0, "chamfer": 0.64}, "num_clips": 64}


def test_acceptance_bars_at_their_thresholds(report) -> None:
    stage1 = _summary(0.075, 3.3, 42.0, 0.30)  # stage 2 below: at most 1.07x these
    diffusion = {"stage2_camera": 0.50, "frozen_backbone": 0.55}
    ok = report.acceptance(stage1, _summary(0.08, 3.5, 45.0, 0.32), diffusion)  # 4.0x, 4.0x, 2.0x, 2.0x
    assert ok["passed"] and ok["lines"][0].startswith("PASS") and len(ok["lines"]) == 7
    ratios = {b["bar"]: b["ratio"] for b in ok["bars"] if "ratio" in b}
    assert ratios["depth AbsRel"] == pytest.approx(4.0) and ratios["translation direction"] == pytest.approx(2.0)
    for worse, missed in ((_summary(0.081, 3.5, 45.0, 0.32), "depth AbsRel"),
                          (_summary(0.08, 3.51, 45.0, 0.32), "rotation error"),
                          (_summary(0.08, 3.5, 45.1, 0.32), "translation direction"),
                          (_summary(0.08, 3.5, 45.0, 0.321), "Chamfer")):
        res = report.acceptance(stage1, worse, diffusion)
        assert not res["passed"] and [b["bar"] for b in res["bars"] if not b["passed"]] == [missed]
    res = report.acceptance(_summary(0.075, 3.3, 42.0, 0.28), _summary(0.08, 3.5, 45.0, 0.32), diffusion)
    assert [b["bar"] for b in res["bars"] if not b["passed"]] == ["geometry kept in stage 2"]  # 0.32 > 1.1 x 0.28
    res = report.acceptance(stage1, _summary(0.08, 3.5, 45.0, 0.32), {"stage2_camera": 0.55, "frozen_backbone": 0.55})
    assert [b["bar"] for b in res["bars"] if not b["passed"]] == ["diffusion loss"]


def test_budget_flags_change_only_the_named_phases(learn) -> None:
    budget = learn.Budget.parse("stage1=200,eval=30")
    assert (budget.stage1, budget.eval, budget.render) == (200.0, 30.0, learn.Budget().render)
    with pytest.raises(ValueError, match="unknown phase 'train'"):
        learn.Budget.parse("train=10")


def test_cuda_graphs_are_on_for_a_gpu_and_off_for_the_cpu(learn, tmp_path: Path) -> None:
    smoke, _ = learn.parse_args(["--smoke", "--out", str(tmp_path / "a")])
    assert smoke.cuda_graphs  # the default ...
    cfg = learn.train_config(smoke, 1, tmp_path / "cache", tmp_path / "run", tmp_path / "assets", 4, None)
    assert cfg.device == "cpu" and not cfg.model.cuda_graphs  # ... applies on a GPU only
    off, _ = learn.parse_args(["--smoke", "--no-cuda-graphs", "--out", str(tmp_path / "b")])
    assert not off.cuda_graphs
    smoke.device = "cuda"
    assert learn.train_config(smoke, 1, tmp_path / "cache", tmp_path / "run", tmp_path / "assets", 4,
                              None).model.cuda_graphs


def test_stage2_camera_weight_overrides_only_stage_2(learn, tmp_path: Path) -> None:
    def weights(argv: list[str]) -> tuple[float, float]:
        cfg, _ = learn.parse_args(["--smoke", "--out", str(tmp_path / "x"), *argv])
        init = {1: None, 2: tmp_path / "step-4.safetensors"}
        return tuple(learn.train_config(cfg, stage, tmp_path / "cache", tmp_path / "run", tmp_path / "assets", 4,
                                        init[stage]).loss.camera_weight for stage in (1, 2))

    assert weights([]) == (30.0, 10.0)  # by default stage 2's weight is a third of stage 1's
    assert weights(["--camera-weight2", "3"]) == (30.0, 3.0)  # the paper's
    assert weights(["--camera-weight", "10", "--camera-weight2", "0"]) == (10.0, 10.0)  # 0: one weight for both
    assert weights(["--camera-weight", "30", "--camera-weight2", "5"]) == (30.0, 5.0)


def test_pretrain_steps_cap_the_passes_and_keep_the_recipes_batches(learn, tmp_path: Path) -> None:
    def argv(flags: list[str]) -> list[str]:
        cfg, _ = learn.parse_args(["--out", str(tmp_path / "x"), "--device", "cpu", *flags])
        return learn.pretrain_argv(cfg, tmp_path / "train", tmp_path / "assets", 100, 100.0)

    plain = argv([])
    assert "--vae-steps" not in plain and "--vae-batch" not in plain  # the recipe's, stopped on time
    assert plain[plain.index("--vae-seconds") + 1] == "38.0" and plain[plain.index("--dit-seconds") + 1] == "47.0"
    shifted = argv(["--vae-share", "0.6"])  # more of the budget to the VAE, the rest to the backbone
    assert shifted[shifted.index("--vae-seconds") + 1] == "60.0"
    assert shifted[shifted.index("--dit-seconds") + 1] == "25.0"
    capped = argv(["--pretrain-steps", "400,500"])
    assert capped[capped.index("--vae-steps") + 1] == "400" and capped[capped.index("--dit-steps") + 1] == "500"
    assert "--vae-batch" not in capped  # a cap changes the step count, not the batch
    smoke, _ = learn.parse_args(["--smoke", "--out", str(tmp_path / "s")])
    smoke_argv = learn.pretrain_argv(smoke, tmp_path / "train", tmp_path / "assets", 4, 10.0)
    assert smoke_argv[smoke_argv.index("--vae-batch") + 1] == "2"
    for bad in ("400", "400,x", "0,5"):
        with pytest.raises(SystemExit) as stop:
            learn.parse_args(["--smoke", "--out", str(tmp_path / "b"), "--pretrain-steps", bad])
        assert stop.value.code == 2
    for bad in ("0", "0.85", "1.2"):  # no time left for one of the two passes
        with pytest.raises(SystemExit) as stop:
            learn.parse_args(["--smoke", "--out", str(tmp_path / "b"), "--vae-share", bad])
        assert stop.value.code == 2


def test_render_during_pretrain_appends_the_missing_worlds(learn, tmp_path: Path) -> None:
    from fantasyworld.data.formats import load_metadata
    from fantasyworld.data.synth import synthesize_dataset

    worlds = tmp_path / "worlds"
    synthesize_dataset(worlds, num_clips=2, num_frames=5, height=32, width=32, seed=0, workers=1)
    cfg = replace(learn.LearnConfig.smoke(), worlds=4, workers=1, render_during_pretrain=False)
    assert learn.start_more_worlds(cfg, worlds, 60.0, tmp_path / "log") is None  # --no-render-during-pretrain
    cfg.render_during_pretrain = True
    proc = learn.start_more_worlds(cfg, worlds, 120.0, tmp_path / "log")
    learn.finish_more_worlds(proc, tmp_path / "log", grace_s=120.0)
    assert [r.clip_id for r in load_metadata(worlds)] == [f"clip_{i:05d}" for i in range(4)]
    assert learn.start_more_worlds(cfg, worlds, 60.0, tmp_path / "log") is None  # nothing missing


def test_phases_record_what_ran_so_far_for_a_run_stopped_part_way(learn, tmp_path: Path) -> None:
    record = tmp_path / "learn.json"
    phases = learn.Phases(learn.Budget(), record, {"device": "cpu"})
    phases.start("render")
    phases.end("render", worlds=3)
    phases.start("pretrain")  # stopped here: the file says so
    partial = json.loads(record.read_text())
    assert partial["finished"] is False and partial["device"] == "cpu"
    assert partial["phases"]["render"]["worlds"] == 3 and partial["phases"]["render"]["seconds"] >= 0
    assert "seconds" not in partial["phases"]["pretrain"] and partial["phases"]["pretrain"]["budget_s"] == 100.0


def test_smoke_run_writes_the_curves_table_and_verdict(learn, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = learn.main(["--smoke", "--out", str(tmp_path / "run")])
    out = tmp_path / "run"
    summary = json.loads((out / "learn.json").read_text())
    assert rc == (0 if summary["acceptance"]["passed"] else 1) and summary["finished"] is True
    assert set(summary["phases"]) == set(learn.PHASES)
    for name, row in summary["phases"].items():
        assert row["seconds"] > 0 and row["budget_s"] == getattr(learn.LearnConfig.smoke().budget, name)
    assert summary["phases"]["stage1"]["steps"] == 3 and summary["phases"]["stage2"]["stopped"] == "finished"
    stage1 = summary["phases"]["stage1"]  # the first log row (start-up included) is part of the stepping
    assert 0 < stage1["first_row_s"] <= stage1["stepping_s"] <= stage1["train_s"] + 0.1
    held = json.loads((out / "held_out.json").read_text())
    stage2 = json.loads((out / "eval_stage2" / "metrics.json").read_text())["summary"]["latents"]
    depth = held["acceptance"]["bars"][0]
    assert depth["ratio"] == pytest.approx(stage2["baseline"]["abs_rel_median"] / stage2["model"]["abs_rel_median"])
    diffusion = held["diffusion"]
    assert set(diffusion["per_sigma"]) == {"stage2_camera", "stage2_no_camera", "frozen_backbone"}
    assert all(v > 0 for v in (diffusion["stage2_camera"], diffusion["frozen_backbone"]))
    train = diffusion["training_clips"]  # the same losses on training clips, beside the bar
    assert len(train["clips"]) == 1 and not set(train["clips"]) & set(diffusion["clips"])
    assert all(train[name] > 0 for name in ("stage2_camera", "stage2_no_camera", "frozen_backbone"))
    md = (out / "held_out.md").read_text()
    assert "| stage2_camera, 1 training clips |" in md
    # the stage-2 geometry on training clips, beside the held-out columns (other clips: not a bar)
    geo_train = held["stage2_training_clips"]
    scored = json.loads((out / "eval_stage2_train" / "metrics.json").read_text())
    assert geo_train == scored["summary"]["latents"] and scored["split"] == "train"
    assert scored["clips"] and not set(scored["clips"]) & set(summary["held_out_clips"])
    ratio = geo_train["baseline"]["rot_err"] / geo_train["model"]["rot_err"]
    assert "| stage 2, 1 training clips | better by |" in md and f"{ratio:.2f}x |" in md.split("| rot_err |")[1]
    assert (out / "learning_curves.png").stat().st_size > 10_000 and "## Verdict" in md
    ceiling = stage2["baseline"]["abs_rel_median"] / stage2["oracle"]["abs_rel_median"]
    assert f"| abs_rel_median: depth at token resolution from ground truth (oracle, ceiling of the ratio: " \
           f"{ceiling:.2f}x) |" in md
    printed = capsys.readouterr().out
    assert summary["acceptance"]["lines"][0] in printed and "Chamfer" in printed
    with pytest.raises(SystemExit) as refused:  # an earlier run is not overwritten without --overwrite
        learn.main(["--smoke", "--out", str(out)])
    assert refused.value.code == 2 and (out / "learn.json").is_file()

    # a paired run on this run's worlds, assets and cache: only the stages and the evaluation run
    again = tmp_path / "again"
    assert learn.main(["--smoke", "--out", str(again), "--reuse-data", str(out), "--lr1", "2e-3"]) in (0, 1)
    paired = json.loads((again / "learn.json").read_text())
    assert paired["settings"]["lr1"] == 2e-3 and paired["held_out_clips"] == summary["held_out_clips"]
    for name in ("render", "pretrain", "cache"):
        assert paired["phases"][name]["reused_from"] == str(out.resolve())
        assert paired["phases"][name]["seconds"] == summary["phases"][name]["seconds"]
    assert paired["phases"]["stage1"]["steps"] == 3 and (again / "worlds").is_symlink()
    assert (again / "eval_stage2" / "metrics.json").is_file() and not (out / "runs" / "stage1").samefile(
        again / "runs" / "stage1")
    for argv, message in ((["--size", "48"], "size 32, this run has 48"),
                          (["--held-out-fraction", "0.5"], "held_out_fraction 0.25, this run has 0.5"),
                          (["--reuse-assets", str(out / "assets")], "pass one")):
        with pytest.raises(SystemExit) as refused:
            learn.parse_args(["--smoke", "--out", str(tmp_path / "no"), "--reuse-data", str(out), *argv])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    partial = json.loads((out / "learn.json").read_text())
    del partial["phases"]["cache"]["seconds"]
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "learn.json").write_text(json.dumps(partial))
    with pytest.raises(learn.DataError, match="did not finish its cache phase"):
        learn.check_reusable_data(learn.LearnConfig.smoke(), tmp_path / "partial")
    assert not (tmp_path / "no").exists()


def _fake_assets(root: Path, *, seed: int = 0, fraction: float = 0.25, size: int = 32, reused: bool = False,
                 data: Path | None = None) -> Path:
    """An ``assets/`` folder as a learn_gpu run leaves it (placeholder weights: only the checks
    and the copy read it), pretrained on that run's ``data_train``, with its ``learn.json``."""
    assets = root / "assets"
    for name in ("vae", "backbone"):
        (assets / name).mkdir(parents=True)
        (assets / name / "config.json").write_text(f'{{"{name}": true}}')
    pre = {"args": {"preset": "small", "frames": 5, "size": size, "data": str(data or root / "data_train")},
           "pretrain_seed": None, "vae": {}, "backbone": {}}
    (assets / "pretrain.json").write_text(json.dumps(pre))
    pretrain_row = {"assets_from": "/elsewhere/assets"} if reused else {}
    (root / "learn.json").write_text(json.dumps({"settings": {"seed": seed, "held_out_fraction": fraction},
                                                 "phases": {"pretrain": pretrain_row}}))
    return assets


def test_reused_assets_are_copied_and_refused_when_they_could_have_seen_held_out_worlds(learn, tmp_path: Path) -> None:
    cfg = learn.LearnConfig.smoke()  # small preset, 5 frames at 32x32, seed 0, held-out fraction 0.25
    source = _fake_assets(tmp_path / "earlier")
    pre = learn.reuse_assets(cfg, source, tmp_path / "now" / "assets")
    assert pre["args"]["size"] == 32
    assert (tmp_path / "now" / "assets" / "backbone" / "config.json").read_text() == '{"backbone": true}'
    assert (source / "vae" / "config.json").is_file()  # the source is left as it was
    # same seed, smaller held-out fraction there: its training videos include worlds held out here
    with pytest.raises(learn.AssetsError, match="held-out fraction 0.1 with the same seed 0"):
        learn.check_reusable_assets(cfg, _fake_assets(tmp_path / "f", fraction=0.1))
    learn.check_reusable_assets(cfg, _fake_assets(tmp_path / "s", seed=3, fraction=0.1))  # other worlds: fine
    with pytest.raises(learn.AssetsError, match="pretrained with size 64, this run has 32"):
        learn.check_reusable_assets(cfg, _fake_assets(tmp_path / "z", size=64))
    # a run moved whole: its own learn.json stands in, unless that run reused its assets too
    learn.check_reusable_assets(cfg, _fake_assets(tmp_path / "m", data=tmp_path / "gone" / "data_train"))
    chained = _fake_assets(tmp_path / "c", reused=True, data=tmp_path / "gone" / "data_train")
    with pytest.raises(learn.AssetsError, match="no learn.json beside it"):
        learn.check_reusable_assets(cfg, chained)
    (source / "backbone" / "config.json").unlink()
    (source / "backbone").rmdir()
    with pytest.raises(SystemExit) as refused:  # at the command line: refused before any phase runs
        learn.parse_args(["--smoke", "--out", str(tmp_path / "run"), "--reuse-assets", str(source)])
    assert refused.value.code == 2 and not (tmp_path / "run").exists()
