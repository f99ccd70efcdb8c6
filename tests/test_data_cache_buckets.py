"""A latent cache of two buckets: each clip stored at its bucket's shape, the bucket in the
index, the cached items equal to the bucketed raw loader's, batches of one bucket."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.data.bucket_sampler import BucketBatchSampler
from fantasyworld.data.buckets import Bucket, resolve_buckets
from fantasyworld.data.cache import CachedClipDataset, build_cache
from fantasyworld.data.loader import RawClipDataset, collate
from fantasyworld.models import encoders

BUCKETS = "9x32x48,5x48x32,5x32x32"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache_buckets")
    data = base / "ds"
    for frames, size in ((9, "32x48"), (5, "48x32"), (3, "32x32")):  # the last clip is too short for any bucket
        assert main(["data", "synth", "--out", str(data), "--clips", "2" if frames > 3 else "1", "--frames",
                     str(frames), "--size", size, "--workers", "1", "--quiet", "--append"]) == 0
    enc = encoders.save_tiny_encoders(base / "enc")
    out = base / "cache"
    args = ["data", "cache", "--data", str(data), "--out", str(out), "--vae", str(enc["vae"]), "--text-encoder",
            str(enc["text_encoder"]), "--buckets", BUCKETS, "--quiet"]
    assert main(args) == 1  # default unfit policy: the 3-frame clip refuses the dataset
    assert main([*args, "--unfit", "skip"]) == 0
    return data, enc, out


def test_index_records_each_clip_bucket_and_the_left_out_clip(cache, capsys) -> None:
    _, _, out = cache
    index = json.loads((out / "index.json").read_text())
    assert index["buckets"] == [[5, 48, 32], [5, 32, 32], [9, 32, 48]]  # canonical: aspect 0.67, 1, 1.5
    assert [(e["clip_id"], e["bucket"]) for e in index["clips"]] == [
        ("clip_00000", [9, 32, 48]), ("clip_00001", [9, 32, 48]), ("clip_00002", [5, 48, 32]),
        ("clip_00003", [5, 48, 32])]
    assert index["unfit"] == [{"clip_id": "clip_00004", "reason": "too_few_frames",
                               "message": "3 frames, the shortest bucket 5x48x32 needs 5 at stride 1"}]
    assert index["num_frames"] is None and index["height"] is None and not (out / "clip_00004.safetensors").exists()


def test_cached_items_have_their_bucket_shape_and_equal_the_raw_loader(cache) -> None:
    data, enc, out = cache
    cached = CachedClipDataset(out)
    raw = RawClipDataset(data, buckets=resolve_buckets(BUCKETS.split(",")), unfit="skip")
    assert cached.buckets == raw.buckets and cached.bucket_of == raw.bucket_of == [2, 2, 0, 0]
    vae = encoders.load_vae(enc["vae"])
    for i, (t, h, w) in ((0, (9, 32, 48)), (3, (5, 48, 32))):
        item, ref = cached[i], raw[i]
        assert item["latents"].shape == (16, (t - 1) // 4 + 1, h // 8, w // 8)
        assert item["depth"].shape == (t, h, w) and int(item["bucket"]) == int(ref["bucket"])
        for key in ("depth", "points", "valid", "w2c", "intrinsics", "frame_indices"):
            torch.testing.assert_close(item[key], ref[key])
        torch.testing.assert_close(item["latents"], encoders.encode_video(vae, ref["video"][None])[0],
                                   atol=1e-5, rtol=1e-5)


def test_cached_dataset_batches_one_bucket_at_a_time(cache) -> None:
    cached = CachedClipDataset(cache[2])
    sampler = BucketBatchSampler(cached.bucket_of, 2, seed=0)
    batches = [collate([cached[i] for i in idx]) for idx in sampler]
    assert len(batches) == 2
    assert sorted(tuple(b["latents"].shape) for b in batches) == [(2, 16, 2, 6, 4), (2, 16, 3, 4, 6)]
    assert all(b["bucket"].unique().numel() == 1 for b in batches)


def test_rerun_skips_unchanged_clips_and_reencodes_those_whose_bucket_changed(cache, tmp_path) -> None:
    data, enc, built = cache
    out = shutil.copytree(built, tmp_path / "c")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    build_cache(data, out, enc["vae"], enc["text_encoder"], buckets=resolve_buckets(BUCKETS.split(",")),
                unfit="skip")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == mtimes
    # now the landscape clips go to 5x32x48 (their 9-frame bucket is gone): only they are re-encoded
    build_cache(data, out, enc["vae"], enc["text_encoder"], buckets=(Bucket(5, 32, 48), Bucket(5, 48, 32)),
                unfit="skip")
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    changed = sorted(n for n in now if now[n] != mtimes[n])
    assert changed == ["clip_00000.safetensors", "clip_00001.safetensors"]
    assert CachedClipDataset(out)[0]["depth"].shape == (5, 32, 48)
