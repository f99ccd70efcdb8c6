"""benchmarks/bench_small_steps.py on the CPU: every variant trains, and the cache gives the
raw clips' losses (latents, text and the pixel-resolution geometry targets all come along)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(script):
    return script("benchmarks/bench_small_steps.py")


def test_smoke_run_times_every_variant_and_stage(bench, tmp_path: Path) -> None:
    report = bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "bench_small_steps.json").read_text()) == report
    runs = {(r["stage"], r["variant"]): r for r in report["runs"]}
    assert set(runs) == {(s, v) for s in (1, 2) for v in bench.VARIANTS}
    for row in runs.values():
        assert row["steps_per_s"] > 0 and row["timed_steps"] == 2
    for stage in (1, 2):  # the same samples, noise and targets: the cache stores geometry as float16
        raw = runs[(stage, "raw_video")]["final_objective"]
        for variant in ("cache_on_device", "cache_loader"):
            assert runs[(stage, variant)]["final_objective"] == pytest.approx(raw, rel=1e-3)
        assert runs[(stage, "cache_on_device")]["final_objective"] == runs[(stage, "cache_loader")]["final_objective"]


def test_profile_writes_the_operator_table_and_the_host_share(bench, tmp_path: Path) -> None:
    report = bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--stages", "1",
                         "--variants", "cache_on_device", "--profile", "2"])
    row = report["profile"]
    assert row["steps"] == 2 and row["wall_s_per_step"] > 0
    assert row["ops_per_step"] > 1000  # a stage-1 step of the tiny preset issues thousands of operators
    table = (tmp_path / "profile.txt").read_text()
    assert "aten::" in table and "Self CPU" in table
