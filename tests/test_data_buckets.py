"""Resolution/frame buckets: the bucket set, its validation, clip assignment (aspect, frames,
ties, unfit clips) and the bucketed raw loader on a dataset of two clip sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fantasyworld.cli import main
from fantasyworld.data.buckets import (
    CROP,
    TOO_SHORT,
    Bucket,
    ClipShape,
    Unfit,
    assign_buckets,
    choose_bucket,
    generate_buckets,
    resolve_buckets,
)
from fantasyworld.data.loader import RawClipDataset
from fantasyworld.errors import NO_BUCKET, ConfigError, DataError
from fantasyworld.geometry.cameras import project_points
from fantasyworld.training.config import apply_overrides, config_from_dict
from fantasyworld.training.data import config_buckets

SEED_BUCKETS = [[81, 336, 592], [81, 448, 448], [81, 592, 336]]


def _clip(h: int, w: int, frames: int = 81, clip_id: str = "c") -> ClipShape:
    return ClipShape(clip_id, frames, h, w)


# ----------------------------------------------------------------------------------------
# the bucket set
def test_generated_buckets_round_to_multiples_of_16_in_canonical_order() -> None:
    got = generate_buckets(336 * 592, [16 / 9, 1.0, 9 / 16], [81, 49])
    # 336*592 = 198,912 px: 16:9 -> sqrt(198912 / 1.778) = 334.5 -> 336, sqrt(198912 * 1.778) = 594.7 -> 592;
    # 1:1 -> 446.0 -> 448. Canonical: aspect ascending, then frames descending
    assert got == (Bucket(81, 592, 336), Bucket(49, 592, 336), Bucket(81, 448, 448), Bucket(49, 448, 448),
                   Bucket(81, 336, 592), Bucket(49, 336, 592))
    assert all(b.height % 16 == 0 and b.width % 16 == 0 for b in got)
    # two ratios rounding to one resolution are one bucket
    assert generate_buckets(256 * 256, [1.0, 1.01], [5]) == (Bucket(5, 256, 256),)


def test_explicit_buckets_are_canonical_whatever_their_order() -> None:
    a = resolve_buckets(SEED_BUCKETS)
    b = resolve_buckets(list(reversed(SEED_BUCKETS)))
    assert a == b == (Bucket(81, 592, 336), Bucket(81, 448, 448), Bucket(81, 336, 592))
    assert resolve_buckets(["81x336x592"]) == (Bucket(81, 336, 592),)
    assert resolve_buckets() is None


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([[80, 336, 592]], "data.buckets.sizes[0]: frames must be 4k+1 (1, 5, 9, ..., 81), got 80"),
        ([[81, 336, 592], [81, 330, 592]],
         "data.buckets.sizes[1]: height must be a positive multiple of 16 (one DiT token is 16x16 pixels), got 330 "
         "(nearest: 336)"),
        ([[81, 336, 600]], "data.buckets.sizes[0]: width must be a positive multiple of 16"),
        ([[81, 336]], "data.buckets.sizes[0] must be [frames, height, width] (or 'FxHxW'), got [81, 336]"),
        ([[81, 336, 592], [81, 336, 592]], "data.buckets.sizes[1] 81x336x592 repeats data.buckets.sizes[0]"),
        ([], "data.buckets.sizes must be a non-empty list"),
    ],
)
def test_bad_bucket_sets_name_the_key(sizes: list, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_buckets(sizes, key="data.buckets")
    assert message in str(err.value)


def _cfg(*overrides: str):
    return config_from_dict(apply_overrides({"data": {"root": "data/x"}}, list(overrides)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.buckets.sizes=[[9,32,40]]"], "data.buckets.sizes[0]: width must be a positive multiple of 16"),
        (["data.buckets.sizes=[[9,32,48]]", "data.buckets.aspect_ratios=[1.0]"],
         "set one of data.buckets.sizes (explicit buckets) and data.buckets.aspect_ratios"),
        (["data.buckets.aspect_ratios=[1.0,-2]"], "data.buckets.aspect_ratios[1] must be a positive number"),
        (["data.buckets.aspect_ratios=[1.0]", "data.buckets.frames=[8]"],
         "data.buckets.frames[0]: frames must be 4k+1"),
        (["data.buckets.aspect_ratios=[1.0]", "data.buckets.area=100"], "data.buckets.area must be an integer"),
        (["data.buckets.sizes=[[9,32,48]]", "data.buckets.unfit=drop"],
         "data.buckets.unfit must be one of error, skip, got 'drop'"),
        (["data.buckets.sizes=[[9,32,48]]", "data.buckets.max_crop=1.5"], "data.buckets.max_crop must be in [0, 1)"),
        (["data.buckets.sizs=[[9,32,48]]"],
         "unknown config key 'data.buckets.sizs' (did you mean data.buckets.sizes?)"),
    ],
)
def test_bad_bucket_config_names_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(*overrides)
    assert message in str(err.value)


def test_generated_buckets_default_to_the_data_size_and_frames() -> None:
    cfg = _cfg("data.num_frames=49", "data.height=336", "data.width=592", "data.buckets.aspect_ratios=[0.5625,1.7778]")
    assert config_buckets(cfg.data) == (Bucket(49, 592, 336), Bucket(49, 336, 592))
    cfg = _cfg("data.buckets.aspect_ratios=[1]", "data.buckets.area=65536", "data.buckets.frames=[5,9]")
    assert config_buckets(cfg.data) == (Bucket(9, 256, 256), Bucket(5, 256, 256))
    assert config_buckets(_cfg().data) is None  # default: off


# ----------------------------------------------------------------------------------------
# assignment
def test_nearest_aspect_ratio_wins() -> None:
    buckets = resolve_buckets(SEED_BUCKETS)  # 592x336 (0.568), 448x448 (1), 336x592 (1.762)
    assert buckets[choose_bucket(_clip(1080, 1920), buckets)] == Bucket(81, 336, 592)  # 1.778
    assert buckets[choose_bucket(_clip(1920, 1080), buckets)] == Bucket(81, 592, 336)  # 0.5625
    assert buckets[choose_bucket(_clip(500, 600), buckets)] == Bucket(81, 448, 448)  # 1.2
    # distances are in log space: 4:3 is |log(1.762 / 1.333)| = 0.279 from 336x592 and |log 1.333| = 0.288
    # from 1:1 (a linear distance would say 0.429 and 0.333, i.e. the square)
    assert math.log(592 / 336 / (4 / 3)) < math.log(4 / 3)
    assert buckets[choose_bucket(_clip(480, 640), buckets)] == Bucket(81, 336, 592)
    assert buckets[choose_bucket(_clip(640, 480), buckets)] == Bucket(81, 592, 336)  # and the mirror image


def test_exact_ties_are_broken_by_the_canonical_order_not_the_list_order() -> None:
    for sizes in ([[5, 32, 64], [5, 64, 32]], [[5, 64, 32], [5, 32, 64]]):
        buckets = resolve_buckets(sizes)
        # a square clip is |log 2| from both 2:1 and 1:2: the lower aspect (portrait) comes first
        assert buckets[choose_bucket(_clip(100, 100, 5), buckets)] == Bucket(5, 64, 32)
    # same aspect at two areas: the area nearest the clip's own
    buckets = resolve_buckets([[5, 32, 32], [5, 64, 64]])
    assert buckets[choose_bucket(_clip(40, 40, 5), buckets)] == Bucket(5, 32, 32)
    assert buckets[choose_bucket(_clip(60, 60, 5), buckets)] == Bucket(5, 64, 64)


def test_longest_frame_count_the_clip_supplies_at_its_stride() -> None:
    buckets = resolve_buckets([[81, 336, 592], [49, 336, 592], [17, 336, 592]])
    assert buckets[choose_bucket(_clip(1080, 1920, 81), buckets)].frames == 81
    assert buckets[choose_bucket(_clip(1080, 1920, 80), buckets)].frames == 49
    assert buckets[choose_bucket(_clip(1080, 1920, 49), buckets)].frames == 49
    # stride 2: 49 frames span 97 source frames, 17 span 33
    assert buckets[choose_bucket(_clip(1080, 1920, 96), buckets, stride=2)].frames == 17
    assert buckets[choose_bucket(_clip(1080, 1920, 97), buckets, stride=2)].frames == 49
    # frames filter first: a 60-frame 16:9 clip cannot fill the 81-frame 16:9 bucket
    buckets = resolve_buckets([[81, 336, 592], [49, 448, 448]])
    assert buckets[choose_bucket(_clip(1080, 1920, 60), buckets)] == Bucket(49, 448, 448)


def test_unfit_clips_carry_their_reason() -> None:
    buckets = resolve_buckets([[9, 448, 448], [5, 448, 448]])
    short = choose_bucket(_clip(480, 480, 4, "short"), buckets)
    assert isinstance(short, Unfit) and short.reason == TOO_SHORT
    assert str(short) == "short: 4 frames, the shortest bucket 5x448x448 needs 5 at stride 1 [too_few_frames]"
    # a 4:1 panorama into 1:1 loses 75% of its area
    wide = choose_bucket(_clip(256, 1024, 9, "wide"), buckets, max_crop=0.5)
    assert isinstance(wide, Unfit) and wide.reason == CROP and "would lose 75% of its area" in wide.message
    assert buckets[choose_bucket(_clip(256, 1024, 9), buckets, max_crop=0.75)] == Bucket(9, 448, 448)


def test_unfit_policy_refuses_or_skips_and_an_empty_result_is_refused() -> None:
    buckets = resolve_buckets([[9, 32, 48]])
    clips = [_clip(32, 48, 9, "a"), _clip(32, 48, 5, "b"), _clip(64, 96, 13, "c"), _clip(32, 48, 3, "d")]
    with pytest.raises(DataError) as err:
        assign_buckets(clips, buckets, where="ROOT/metadata.json")
    assert err.value.kind == NO_BUCKET and err.value.path == "ROOT/metadata.json"
    assert "clip 'b' fits no bucket: 5 frames" in err.value.message and "(and 1 more)" in err.value.message
    assert "data.buckets.unfit=skip" in err.value.message
    got = assign_buckets(clips, buckets, unfit="skip")
    assert got.kept == [0, 2] and got.bucket_of == [0, 0] and [u.clip_id for u in got.unfit] == ["b", "d"]
    assert got.summary() == "2 clip(s) in 1 bucket(s) (9x32x48: 2); 2 fit none"
    with pytest.raises(DataError, match="no clip fits any bucket"):
        assign_buckets(clips[1:2], buckets, unfit="skip")


# ----------------------------------------------------------------------------------------
# the bucketed raw loader
@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """6 clips: 3 of 9 frames at 32x48 (landscape), 3 of 5 frames at 48x32 (portrait), 1 of 3 frames."""
    root = tmp_path_factory.mktemp("buckets") / "ds"
    for frames, size, n in ((9, "32x48", 3), (5, "48x32", 3), (3, "32x32", 1)):
        assert main(["data", "synth", "--out", str(root), "--clips", str(n), "--frames", str(frames), "--size", size,
                     "--seed", "4", "--workers", "1", "--quiet", "--append"]) == 0
    return root


BUCKETS = resolve_buckets([[9, 32, 48], [5, 32, 48], [5, 48, 32], [5, 32, 32]])


def test_synth_append_numbers_on_and_keeps_both_sizes(two_sizes) -> None:
    import json

    clips = json.loads((two_sizes / "metadata.json").read_text())["clips"]
    assert [c["clip_id"] for c in clips] == [f"clip_{i:05d}" for i in range(7)]
    assert [(c["num_frames"], c["height"], c["width"]) for c in clips] == [(9, 32, 48)] * 3 + [(5, 48, 32)] * 3 + [
        (3, 32, 32)]


def test_each_clip_gets_its_bucket_shape_and_consistent_geometry(two_sizes) -> None:
    ds = RawClipDataset(two_sizes, buckets=BUCKETS, unfit="skip", random=True, seed=1)
    assert [r.clip_id for r in ds.records] == [f"clip_{i:05d}" for i in range(6)]
    assert [str(ds.buckets[k]) for k in ds.bucket_of] == ["9x32x48"] * 3 + ["5x48x32"] * 3
    assert [str(u) for u in ds.assignment.unfit] == [
        "clip_00006: 3 frames, the shortest bucket 5x48x32 needs 5 at stride 1 [too_few_frames]"]
    for i, (t, h, w) in ((0, (9, 32, 48)), (4, (5, 48, 32))):
        item = ds[i]
        assert item["video"].shape == (3, t, h, w) and item["depth"].shape == (t, h, w)
        assert int(item["bucket"]) == ds.bucket_of[i]
        # the geometry invariant of data.transforms: stored points project into their own pixels
        uv, _ = project_points(item["points"].double().numpy().reshape(t, -1, 3), item["w2c"].double().numpy(),
                               item["intrinsics"].double().numpy())
        v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        valid = item["valid"].numpy().reshape(t, -1)
        for f in range(t):
            np.testing.assert_array_equal(np.floor(uv[f, valid[f], 0]), u.reshape(-1)[valid[f]])
            np.testing.assert_array_equal(np.floor(uv[f, valid[f], 1]), v.reshape(-1)[valid[f]])


def test_a_bucket_of_another_aspect_crops_like_the_unbucketed_loader(two_sizes) -> None:
    # a 32x48 clip in a 32x32 bucket is the same sample as the loader at height=width=32
    only_square = resolve_buckets([[5, 32, 32]])
    bucketed = RawClipDataset(two_sizes, buckets=only_square, unfit="skip")[0]
    plain = RawClipDataset(two_sizes, num_frames=5, height=32, width=32)[0]
    assert bucketed.pop("bucket") == 0 and "bucket" not in plain
    for key in ("video", "depth", "points", "valid", "w2c", "intrinsics", "frame_indices"):
        torch.testing.assert_close(bucketed[key], plain[key])
    assert bucketed["intrinsics"][0, 0, 2] == 16.0  # centre crop of 48 -> 32 columns: cx 24 - 8


def test_bucketed_loader_refuses_unfit_clips_by_default(two_sizes) -> None:
    with pytest.raises(DataError) as err:
        RawClipDataset(two_sizes, buckets=BUCKETS)
    assert err.value.kind == NO_BUCKET and "clip_00006" in err.value.message


def _cache_args(*argv: str):
    import argparse

    from fantasyworld.cli.data import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["data", "cache", "--data", "d", "--out", "o", "--vae", "v", "--text-encoder", "t",
                              *argv])


def test_cache_command_bucket_options() -> None:
    from fantasyworld.cli.data import _cache_buckets

    assert _cache_buckets(_cache_args()) is None
    assert _cache_buckets(_cache_args("--buckets", "9x32x48,5x48x32")) == (Bucket(5, 48, 32), Bucket(9, 32, 48))
    got = _cache_buckets(_cache_args("--aspect-ratios", "0.5625,1.7778", "--size", "336x592", "--frames", "49"))
    assert got == (Bucket(49, 592, 336), Bucket(49, 336, 592))
    got = _cache_buckets(_cache_args("--aspect-ratios", "1", "--size", "32x32", "--bucket-frames", "5,9"))
    assert got == (Bucket(9, 32, 32), Bucket(5, 32, 32))
    with pytest.raises(ConfigError, match="--aspect-ratios needs --size HxW"):
        _cache_buckets(_cache_args("--aspect-ratios", "1"))
    with pytest.raises(ConfigError, match=r"--buckets\[1\]: height must be a positive multiple of 16"):
        _cache_buckets(_cache_args("--buckets", "9x32x48,5x40x32"))
    assert main(["data", "cache", "--data", "d", "--out", "o", "--vae", "v", "--text-encoder", "t",
                 "--buckets", "9x32"]) == 2
