"""Loader throughput: samples/s from raw seed-layout data and from the latent cache.

Not a test. Builds synthetic datasets (``fantasyworld data synth``), a cache with tiny
random encoders whose *output shapes* match the real ones (16-channel latents at 8x/4x
compression; UMT5 width 4096 so text embeddings have the real 512 x 4096 size), and times
``Dataset.__getitem__`` in the main process and a ``DataLoader`` with worker processes.

Usage::

    python benchmarks/bench_loader.py --work /tmp/bench_loader            # both sizes
    python benchmarks/bench_loader.py --work /tmp/bench_loader --only tiny
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from fantasyworld.data.cache import CachedClipDataset, build_cache
from fantasyworld.data.loader import RawClipDataset, build_dataloader
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.models import encoders

# name: (stored clip: frames, H, W), (sample: frames, H, W), clips
SIZES = {
    "full": ((81, 360, 640), (81, 336, 592), 3),
    "tiny": ((49, 128, 128), (17, 64, 64), 8),
}


def _touch(item: dict) -> None:
    """Read one value per 4 KiB page of every tensor: safetensors maps files lazily, so
    without this a cached item would be timed before its bytes are read."""
    for value in item.values():
        if isinstance(value, torch.Tensor) and value.numel():
            flat = value.reshape(-1)
            step = max(1, 4096 // flat.element_size())
            flat[::step].float().sum()


def _time_items(dataset, n: int) -> float:
    _touch(dataset[0])  # warm-up: page cache, first-call overheads
    start = time.perf_counter()
    for i in range(n):
        _touch(dataset[i % len(dataset)])
    return n / (time.perf_counter() - start)


def _time_loader(dataset, n: int, workers: int) -> float:
    loader = build_dataloader(dataset, batch_size=1, num_workers=workers, shuffle=False)
    it = iter(loader)
    _touch(next(it))  # workers started, first batch
    start = time.perf_counter()
    count = 0
    while count < n:
        try:
            _touch(next(it))
        except StopIteration:
            it = iter(loader)
            continue
        count += 1
    return count / (time.perf_counter() - start)


def run(name: str, work: Path, n_items: int, workers: int) -> list[tuple[str, str, float]]:
    (ft, fh, fw), (st, sh, sw), clips = SIZES[name]
    data = work / f"{name}_data"
    if not (data / "metadata.json").exists():
        t0 = time.perf_counter()
        synthesize_dataset(data, num_clips=clips, num_frames=ft, height=fh, width=fw, seed=0)
        print(f"[{name}] synth {clips} x {ft}x{fh}x{fw}: {time.perf_counter() - t0:.1f} s")
    enc = work / "encoders"
    if not (enc / "vae").exists():
        encoders.tiny_vae().save_pretrained(enc / "vae")
        model, tok = encoders.tiny_text_encoder(d_model=4096)
        model.save_pretrained(enc / "text_encoder")
        tok.save_pretrained(enc / "tokenizer")
    cache = work / f"{name}_cache"
    if not (cache / "index.json").exists():
        t0 = time.perf_counter()
        build_cache(data, cache, enc / "vae", enc / "text_encoder", num_frames=st, height=sh, width=sw)
        print(f"[{name}] cache {clips} clips (tiny VAE): {time.perf_counter() - t0:.1f} s")
    size_mb = sum(f.stat().st_size for f in cache.glob("*.safetensors")) / clips / 2**20
    raw = RawClipDataset(data, num_frames=st, height=sh, width=sw, random=True)
    cached = CachedClipDataset(cache)
    sample = f"{st}x{sh}x{sw} from {ft}x{fh}x{fw}"
    rows = [
        (f"raw, __getitem__, main process ({sample})", name, _time_items(raw, n_items)),
        (f"raw, DataLoader {workers} workers, batch 1", name, _time_loader(raw, n_items, workers)),
        (f"cached ({size_mb:.0f} MB/clip), __getitem__", name, _time_items(cached, n_items)),
        (f"cached, DataLoader {workers} workers, batch 1", name, _time_loader(cached, n_items, workers)),
    ]
    for what, _, rate in rows:
        print(f"[{name}] {what}: {rate:.2f} samples/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_loader"))
    parser.add_argument("--only", choices=sorted(SIZES), default=None)
    parser.add_argument("--items", type=int, default=None, help="samples timed per row (default 6 full, 40 tiny)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [args.only] if args.only else ["tiny", "full"]:
        n = args.items or (6 if name == "full" else 40)
        rows += run(name, args.work, n, args.workers)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load average at the end {load}")
    print("| size | measurement | samples/s |\n|---|---|---|")
    for what, name, rate in rows:
        print(f"| {name} | {what} | {rate:.2f} |")


if __name__ == "__main__":
    main()
