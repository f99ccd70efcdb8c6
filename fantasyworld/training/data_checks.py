"""Checks of a run's data before its first step: the dataset files and the latent cache."""

from __future__ import annotations

import time
from typing import Any

from fantasyworld.data.validate import validate_dataset
from fantasyworld.errors import ConfigError, DataError
from fantasyworld.training.data import config_buckets

__all__ = ["check_cache", "validate_training_data"]


def validate_training_data(d: Any, log: Any = None) -> None:
    """Check every record and file of ``d.root`` (a run's ``data`` config) before training:
    headers, shapes, dtypes and frame counts, plus every value with ``d.validate_values``.
    Raises the first problem as a :class:`DataError` (it names the file), with the count;
    logs a summary line to ``log`` (a logger, or None)."""
    start = time.perf_counter()
    # with buckets, clip lengths are the bucket assignment's business (its unfit policy)
    buckets = config_buckets(d)
    problems, n = validate_dataset(d.root, decode_video=False, check_values=d.validate_values,
                                   min_frames=None if buckets else (d.num_frames - 1) * d.stride + 1)
    if problems:
        first = problems[0]
        more = (f" (and {len(problems) - 1} more problem(s): run `fantasyworld data validate {d.root}`)"
                if len(problems) > 1 else "")
        raise DataError(first.path, first.kind, f"{first.message}{more}")
    if log is not None:
        what = "every file and value" if d.validate_values else "every file's header"
        log.info(f"data {d.root}: {n} clip(s), {what} checked in {time.perf_counter() - start:.1f} s "
                 f"(data.validate=false / --skip-validation to skip)")


def _check_cache_buckets(dataset: Any, d: Any) -> None:
    """A bucketed cache needs ``data.buckets`` to name its bucket set, and buckets need a bucketed cache."""
    want, have = config_buckets(d), getattr(dataset, "buckets", None)
    listed = "[" + ", ".join(str(b.as_list()) for b in have or ()) + "]"
    if have is None:
        raise ConfigError(f"data.buckets is set but the cache {d.cache_dir} holds one shape: rebuild it with "
                          f"`fantasyworld data cache --buckets ...` or turn data.buckets off")
    if want is None or set(want) != set(have):
        got = "off" if want is None else ", ".join(map(str, want))
        raise ConfigError(f"the cache {d.cache_dir} holds the buckets {', '.join(map(str, have))} but data.buckets "
                          f"is {got}: set data.buckets.sizes={listed.replace(' ', '')} (or rebuild the cache)")


def check_cache(dataset: Any, d: Any, model_config: Any) -> None:
    """The cache's frames, size (or buckets) and text width must match the ``data`` config ``d``
    and the preset."""
    item = dataset[0]
    if getattr(dataset, "buckets", None) is not None or config_buckets(d) is not None:
        _check_cache_buckets(dataset, d)
    else:
        t, h, w = item["depth"].shape
        for key, got in (("num_frames", t), ("height", h), ("width", w)):
            want = getattr(d, key)
            if want is not None and want != got:
                raise ConfigError(f"data.{key}={want} but the cache {d.cache_dir} holds {got}: set "
                                  f"data.{key}={got} (or null) or rebuild the cache")
    text_dim = int(model_config.wan["text_dim"])
    if item["text_emb"].shape[-1] != text_dim:
        raise ConfigError(f"cache {d.cache_dir} has text embeddings of width {item['text_emb'].shape[-1]} but "
                          f"preset {model_config.name} expects text_dim {text_dim}")
    if model_config.is_i2v and "cond_latent" not in item:
        raise ConfigError(f"preset {model_config.name} is image-to-video but cache {d.cache_dir} has no "
                          f"cond_latent / clip_image_emb (build it with --image-encoder)")
