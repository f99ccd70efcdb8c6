"""benchmarks/compile_grad_check.py: compiled against eager gradients of each layer kind, on captured inputs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def check(script):
    return script("benchmarks/compile_grad_check.py")


def test_each_layer_kind_compiled_matches_eager_on_the_inputs_the_forward_gives_it(check, tmp_path):
    # aot_eager traces the same graphs inductor would compile, without code generation: on the CPU
    # in fp32 its gradients equal eager's to rounding (1e-6 relative covers reordered fp32 sums)
    rows = check.main(["--device", "cpu", "--plan", "irg:9,pcb:9,frame:9,irg:9:ckpt", "--backend", "aot_eager",
                       "--work", str(tmp_path), "--out", str(tmp_path / "rows.jsonl")])
    assert [(r["region"], r["ckpt"]) for r in rows] == [("irg", False), ("pcb", False), ("frame", False), ("irg", True)]
    for row in rows:
        cmp = row["compiled_vs_eager"]
        assert cmp["n_nonfinite"] == 0 and not cmp["missing"]
        assert set(cmp["max_rel_err"]) == {"out", "dinput", "dparam"}  # every group was compared
        assert max(cmp["max_rel_err"].values()) < 1e-6
    irg = rows[0]
    assert irg["shapes"][:2] == [[1, 18, 64], [1, 33, 64]]  # video (3 x 2 x 3 tokens), geometry (3 x (5 + 6))
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 4


def test_compare_names_the_wrong_and_the_nonfinite_tensors(check):
    ref = {"out0": torch.ones(4), "dparam.0.w": torch.ones(3), "dinput1": torch.ones(2)}
    other = {"out0": torch.ones(4), "dparam.0.w": torch.tensor([1.0, 1.0, 4.0]),
             "dinput1": torch.tensor([1.0, float("nan")])}
    cmp = check._compare(ref, other)
    assert cmp["max_rel_err"]["out"] == 0.0
    assert cmp["max_rel_err"]["dparam"] == pytest.approx(3 / 3**0.5)
    assert cmp["nonfinite"] == ["dinput1"] and cmp["worst"]["tensor"] == "dinput1"


def test_a_plan_item_must_name_a_region_and_a_frame_count(check):
    assert check.parse_plan("irg:81, pcb:21:ckpt") == [("irg", 81, False), ("pcb", 21, True)]
    for bad in ("heads:81", "irg", "irg:81:x"):
        with pytest.raises(ValueError, match="REGION:FRAMES"):
            check.parse_plan(bad)
