"""``benchmarks/bench_train_step.py --device cpu``: the trainer's own step per configuration, at tiny sizes.

The smoke mode runs the same code as the GPU benchmark (synthetic cache, ``Trainer``,
``train_step``, FLOP count, JSON rows); the assertions are about what the rows say, not times.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    import bench_train_step

    yield bench_train_step
    sys.path.remove(str(BENCH))


def test_cpu_smoke_rows(bench, tmp_path, capsys) -> None:
    rows = bench.main(["--device", "cpu", "--stages", "2,1", "--configs",
                       "layer,selective+cl+matmul,layer+fp8+offload,layer+sub3+eval", "--steps", "2", "--warmup", "1",
                       "--workers", "0", "--clips", "2", "--work", str(tmp_path),
                       "--out", str(tmp_path / "rows.jsonl")])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "env" in printed[0] and printed[1:] == rows
    assert [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == rows
    assert [(r["stage"], r["config"]) for r in rows] == [(s, c) for s in (2, 1) for c in
                                                         ("layer", "selective+cl+matmul", "layer+fp8+offload",
                                                          "layer+sub3+eval")]
    for r in rows:
        assert not r.get("oom") and len(r["losses"]) == 3 and len(r["times"]) == 2
        assert all(math.isfinite(step["objective"]) for step in r["losses"])
        assert r["s_per_step"] > 0 and 0 < r["mfu"] and r["model_tflop"] > 0
        assert ("loss_diff" in r["losses"][0]) == (r["stage"] == 2)
    by = {(r["stage"], r["config"]): r for r in rows}
    for stage in (1, 2):
        # same batches and init: the checkpointing mode and the DPT layout leave the losses as they are
        # (layout: rounding only), FP8 moves them by its rounding, the subset changes the objective
        assert by[(stage, "layer")]["loss_rel_diff"] == 0.0
        assert by[(stage, "selective+cl+matmul")]["loss_rel_diff"] < 1e-5
        assert 0 < by[(stage, "layer+fp8+offload")]["loss_rel_diff"] < 1e-2
        sub = by[(stage, "layer+sub3+eval")]
        assert sub["pixel_frames"] == 3 and sub["model_tflop"] < by[(stage, "layer")]["model_tflop"]
        assert sub["memory"]["checkpointing"] == "layer" and by[(stage, "selective+cl+matmul")]["memory"][
            "checkpointing"] == "selective"
        assert set(sub["eval_full_frames"]) >= {"objective", "loss_depth", "loss_pmap"}


def test_configuration_tokens(bench) -> None:
    parsed = bench.parse_tokens("selective+tier24+cap22+fit+sub0.25+8bit+eager")
    assert parsed["overrides"] == {"model.checkpointing": "selective", "loss.pixel_frames_per_step": 0.25,
                                   "optim.optimizer": "adamw8bit"}
    assert (parsed["tier"], parsed["cap"], parsed["fit"], parsed["compile"]) == ("24", 22.0, True, False)
    assert bench.parse_tokens("tier48+bnb8bit")["overrides"] == {"optim.optimizer": "adamw8bit-bnb"}
    with pytest.raises(ValueError, match="unknown configuration token 'fast'"):
        bench.parse_tokens("layer+fast")
