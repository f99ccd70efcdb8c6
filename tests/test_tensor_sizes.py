"""benchmarks/tensor_sizes.py: the step's tensors on the meta device (no memory, any preset)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tensor_sizes(script):
    return script("benchmarks/tensor_sizes.py")


def test_the_attention_scores_of_the_81_frame_step_cross_2_31_and_nothing_else_does(tensor_sizes):
    rows = tensor_sizes.step_tensor_sizes("wan2.1-t2v-1.3b", 81, 336, 592, stage=2, min_elements=2**27)
    over = {tuple(r["shape"]) for r in rows if r["over_int32"]}
    # geometry global attention: 16 heads over 21 latent frames x (5 special + 21 x 37 patch) tokens
    assert (1, 16, 16422, 16422) in over
    assert (1, 12, 16317, 16317) in over  # Wan self-attention: 12 heads, 21 x 21 x 37 tokens
    assert all(len(s) == 4 and s[-2] > 16000 and s[-1] > 16000 or len(s) == 3 and s[-1] > 16000 for s in over)
    largest_other = max(r["elements"] for r in rows if not r["over_int32"] and min(r["shape"][-2:]) < 16000)
    assert largest_other == 16 * 128 * 336 * 592  # a 16-frame chunk of the DPT's fused full-resolution map
    assert not any(r["over_int32"] for r in tensor_sizes.step_tensor_sizes("wan2.1-t2v-1.3b", 21, 336, 592,
                                                                            min_elements=2**27))
