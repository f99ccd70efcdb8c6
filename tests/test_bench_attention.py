"""``benchmarks/bench_attention.py``: the attention calls it times are those of one CFG step.

The timing needs a GPU; the shapes and call counts are checked here against the preset's
token geometry (docs/benchmarks.md quotes them for the 14B preset at 81x336x592).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_14b_step_attention_shapes_and_counts() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_attention import attention_shapes
    finally:
        sys.path.remove(str(BENCH))
    s = attention_shapes("wan2.1-i2v-14b-480p", 81, 336, 592)
    video, geo = 21 * 21 * 37, 21 * (5 + 21 * 37)  # latent frames x tokens; 1 camera + 4 registers a frame
    assert (video, geo) == (16317, 16422)
    assert s["wan_self"] == {"q": (2, 40, video, 128), "kv": (2, 40, video, 128), "calls": 40}
    assert s["wan_text"]["kv"] == (2, 40, 512, 128) and s["wan_image"]["kv"] == (2, 40, 257, 128)
    assert s["geo_frame"] == {"q": (42, 16, 782, 64), "kv": (42, 16, 782, 64), "calls": 24}
    assert s["geo_global"]["q"] == (2, 16, geo, 64)
    assert s["bicross_v"] == {"q": (2, 12, video, 96), "kv": (2, 12, geo, 96), "calls": 24}
    assert s["bicross_g"]["q"] == s["bicross_v"]["kv"] and s["bicross_g"]["kv"] == s["bicross_v"]["q"]
    # a text-to-video preset has no image cross-attention
    assert "wan_image" not in attention_shapes("wan2.1-t2v-1.3b", 81, 336, 592)
