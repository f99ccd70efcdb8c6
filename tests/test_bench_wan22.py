"""The Wan2.2 GPU benchmark's code path runs on the CPU with ``--tiny`` (so it does not rot)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_reports_steps_for_both_experts(tmp_path, script) -> None:
    bench = script("benchmarks/bench_wan22.py")
    res = bench.main(["--tiny", "--experts", "2", "--repeat", "1", "--out", str(tmp_path / "r.json")])
    assert res["presets"] == ["tiny-wan2.2-high", "tiny-wan2.2-low"] and res["latent"] == [16, 3, 4, 6]
    for key in ("s_per_cfg_step_high", "s_per_cfg_step_low", "s_last_step_with_heads", "s_control_adapter_low"):
        assert res[key] > 0
    assert res["s_50_steps_est"] == pytest.approx(
        18 * res["s_per_cfg_step_high"] + 31 * res["s_per_cfg_step_low"] + res["s_last_step_with_heads"])
    assert (tmp_path / "r.json").is_file() and res["peak_gib"] is None  # no CUDA here
