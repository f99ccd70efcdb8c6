"""Every attention of a CFG step of a preset, timed with each SDPA backend (one GPU, bf16).

The 14B CFG step spends about 40% of its time in attention, and three of its attentions have
head widths other than Wan's 128: the geometry blocks' (``geo_dim / geo_heads``, 64 for the
14B) and the bidirectional cross-attention's (``bicross_dim / bicross_heads``, 96). Which SDPA
backend is fastest depends on the head width and the sequence lengths, so this times, at the
preset's shapes and batch 2 (conditional + unconditional), every attention call of one step:

* ``wan_self``: Wan self-attention, ``(2, heads, L, 128)``, ``L = F * h * w`` video tokens;
* ``wan_text``, ``wan_image``: Wan cross-attention to the 512 text tokens and (I2V) to the 257
  image tokens;
* ``geo_frame``: geometry frame attention, ``(2 F, geo_heads, P, d_geo)``, ``P = 5 + h * w``;
* ``geo_global``: geometry global attention, ``(2, geo_heads, F * P, d_geo)``;
* ``bicross_v``, ``bicross_g``: the two directions of the bidirectional cross-attention
  (video queries on geometry keys and the reverse), ``d = bicross_dim / bicross_heads``;

with each of the cuDNN, flash and memory-efficient backends, the backend PyTorch picks by
itself (``default``), and every other backend of the project's registry
(:mod:`fantasyworld.layers.attention`: ``fa3``, FlashAttention-3 in bf16, and ``fa3_fp8``, the
same on float8 inputs with the quantisation timed in the call) that can run here, with its
error against ``default`` (largest absolute and relative L2). Per kind: milliseconds per call,
calls per step (the preset's layer counts), and the step's total per backend; the best exact
backend per kind (float8 ones are not exact) and what choosing it would save against
``default``. Run::

    python benchmarks/bench_attention.py --preset wan2.1-i2v-14b-480p --size 336x592 --frames 81 \\
        --out attention.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import cuda_time  # noqa: E402

from fantasyworld.layers.attention import (  # noqa: E402
    ATTENTION_BACKENDS,
    attention,
    attention_backend_unavailable,
    use_attention_backend,
)
from fantasyworld.models.config import get_preset  # noqa: E402

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attention_shapes(preset: str, frames: int, height: int, width: int, batch: int = 2) -> dict[str, dict]:
    """Per kind: ``q`` and ``kv`` shapes ``(N, heads, L, d)`` and ``calls`` per step."""
    c = get_preset(preset)
    f, h, w = (frames - 1) // 4 + 1, height // 16, width // 16
    wan_heads = int(c.wan["num_attention_heads"])
    wan_d = int(c.wan["attention_head_dim"])
    n_video = f * h * w
    n_geo = f * (5 + h * w)
    d_geo, d_bi = c.geo_dim // c.geo_heads, c.bicross_dim // c.bicross_heads
    blocks, irg = c.num_wan_blocks, c.num_irg
    return {
        "wan_self": {"q": (batch, wan_heads, n_video, wan_d), "kv": (batch, wan_heads, n_video, wan_d),
                     "calls": blocks},
        "wan_text": {"q": (batch, wan_heads, n_video, wan_d), "kv": (batch, wan_heads, 512, wan_d),
                     "calls": blocks},
        **({"wan_image": {"q": (batch, wan_heads, n_video, wan_d), "kv": (batch, wan_heads, 257, wan_d),
                          "calls": blocks}} if c.is_i2v else {}),
        "geo_frame": {"q": (batch * f, c.geo_heads, 5 + h * w, d_geo), "kv": (batch * f, c.geo_heads, 5 + h * w, d_geo),
                      "calls": irg},
        "geo_global": {"q": (batch, c.geo_heads, n_geo, d_geo), "kv": (batch, c.geo_heads, n_geo, d_geo),
                       "calls": irg},
        "bicross_v": {"q": (batch, c.bicross_heads, n_video, d_bi), "kv": (batch, c.bicross_heads, n_geo, d_bi),
                      "calls": irg},
        "bicross_g": {"q": (batch, c.bicross_heads, n_geo, d_bi), "kv": (batch, c.bicross_heads, n_video, d_bi),
                      "calls": irg},
    }


def time_call(fn, repeat: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls after two warm-ups (CUDA events)."""
    return statistics.median(cuda_time(fn, warmup=2, repeat=repeat)) * 1e3


def measure(row: dict, name: str, call, ref: torch.Tensor) -> None:
    """Time ``call`` into ``row["ms"][name]`` with its error against ``ref``; ``None`` and the
    first line of the error when the kernel rejects the shapes."""
    try:
        out = call().float()
        row["max_abs_err"][name] = float((out - ref).abs().max())
        row["rel_err"][name] = float((out - ref).norm() / ref.norm())
        row["ms"][name] = round(time_call(call), 3)
    except RuntimeError as e:  # a backend that does not support these shapes
        row["ms"][name] = None
        row["error_" + name] = str(e).splitlines()[0][:160]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="wan2.1-i2v-14b-480p")
    p.add_argument("--size", default="336x592")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    height, width = (int(v) for v in a.size.split("x"))
    dev = torch.device("cuda")
    shapes = attention_shapes(a.preset, a.frames, height, width)
    res: dict = {"preset": a.preset, "size": a.size, "frames": a.frames, "device": torch.cuda.get_device_name(dev),
                 "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "kinds": {}}
    extra = [n for n in ATTENTION_BACKENDS if n != "sdpa"]
    res["unavailable"] = {n: r for n in extra if (r := attention_backend_unavailable(n)) is not None}
    for n, reason in res["unavailable"].items():
        print(f"attention backend {n}: not timed ({reason})", flush=True)
    extra = [n for n in extra if n not in res["unavailable"]]
    totals = dict.fromkeys([*BACKENDS, *extra], 0.0)
    best_total = 0.0
    for kind, s in shapes.items():
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(s["q"], device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(s["kv"], device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(s["kv"], device=dev, dtype=torch.bfloat16, generator=g)
        ref = F.scaled_dot_product_attention(q, k, v).float()
        row: dict = {"q": list(s["q"]), "kv": list(s["kv"]), "calls": s["calls"], "ms": {}, "max_abs_err": {},
                     "rel_err": {}}
        for name, backend in BACKENDS.items():
            def call(backend=backend, q=q, k=k, v=v):
                if backend is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v)
            measure(row, name, call, ref)
        for name in extra:
            def call_registered(name=name, q=q, k=k, v=v):
                with use_attention_backend(name):
                    return attention(q, k, v)
            measure(row, name, call_registered, ref)
        timed = {n: t for n, t in row["ms"].items() if t is not None}
        exact = {n: t for n, t in timed.items() if n in BACKENDS or ATTENTION_BACKENDS[n].exact}
        row["best"] = min(exact, key=exact.get)
        row["step_ms"] = {n: round(t * s["calls"], 1) for n, t in timed.items()}
        for n in totals:
            totals[n] += row["step_ms"].get(n, float("nan"))
        best_total += timed[row["best"]] * s["calls"]
        res["kinds"][kind] = row
        print(f"{kind:11s} q {s['q']} kv {s['kv']} x{s['calls']}: "
              + ", ".join(f"{n} {t:.2f} ms" if t is not None else f"{n} -" for n, t in row["ms"].items())
              + f" -> best {row['best']}", flush=True)
    res["step_ms"] = {n: round(t, 1) for n, t in totals.items()}
    res["step_ms_best_per_kind"] = round(best_total, 1)
    res["saving_vs_default_ms"] = round(totals["default"] - best_total, 1)
    print(f"one step's attention: {res['step_ms']} ms; best backend per kind {res['step_ms_best_per_kind']} ms "
          f"(saves {res['saving_vs_default_ms']} ms against the default choice)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
