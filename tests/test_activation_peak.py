"""benchmarks/activation_peak.py: live activation bytes counted exactly on the meta device."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench(script):
    return script("benchmarks/activation_peak.py")


def test_live_storages_count_what_is_alive_and_release_what_is_collected(bench) -> None:
    x = torch.empty(1000, dtype=torch.bfloat16, device="meta")  # made before: not counted
    counter = bench.LiveStorages()
    with counter:
        y = x * 2  # 2000 bytes live
        z = y + 1  # 4000
        del y  # 2000
        w = z * 3  # 4000 again, not 6000
        v = w.view(10, 100)  # a view: the same storage, no new bytes
        del z
    assert counter.peak == 4000
    assert counter.live == 2000  # w (and its view v) only
    assert v.shape == (10, 100)


def test_the_heads_raise_the_tiny_forwards_peak_and_the_peak_names_its_source(bench) -> None:
    with_heads = bench.forward_peak("tiny", 9, 32, 32)
    blocks = bench.forward_peak("tiny", 9, 32, 32, heads=False)
    assert with_heads["peak_bytes"] > blocks["peak_bytes"] > 0
    # the latents (1, 16, 3, 4, 4) and Plücker rays (1, 9, 6, 32, 32) are inputs, not activations;
    # the peak is at least one full-resolution head feature map of the 9 frames in bf16
    assert with_heads["peak_bytes"] >= 9 * 32 * 32 * 2
    assert any(line.startswith("heads/") for line in with_heads["where"])
