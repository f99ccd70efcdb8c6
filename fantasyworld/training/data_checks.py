"""Checks of a run's data before its first step: the dataset files and the latent cache."""

from __future__ import annotations

import time
from typing import Any

from fantasyworld.data.validate import validate_dataset
from fantasyworld.errors import ConfigError, DataError

__all__ = ["check_cache", "validate_training_data"]


def validate_training_data(d: Any, log: Any = None) -> None:
    """Check every record and file of ``d.root`` (a run's ``data`` config) before training:
    headers, shapes, dtypes and frame counts, plus every value with ``d.validate_values``.
    Raises the first problem as a :class:`DataError` (it names the file), with the count;
    logs a summary line to ``log`` (a logger, or None)."""
    start = time.perf_counter()
    problems, n = validate_dataset(d.root, decode_video=False, check_values=d.validate_values,
                                   min_frames=(d.num_frames - 1) * d.stride + 1)
    if problems:
        first = problems[0]
        more = (f" (and {len(problems) - 1} more problem(s): run `fantasyworld data validate {d.root}`)"
                if len(problems) > 1 else "")
        raise DataError(first.path, first.kind, f"{first.message}{more}")
    if log is not None:
        what = "every file and value" if d.validate_values else "every file's header"
        log.info(f"data {d.root}: {n} clip(s), {what} checked in {time.perf_counter() - start:.1f} s "
                 f"(data.validate=false / --skip-validation to skip)")


def check_cache(dataset: Any, d: Any, model_config: Any) -> None:
    """The cache's frames, size and text width must match the ``data`` config ``d`` and the preset."""
    item = dataset[0]
    t, h, w = item["depth"].shape
    for key, got in (("num_frames", t), ("height", h), ("width", w)):
        want = getattr(d, key)
        if want is not None and want != got:
            raise ConfigError(f"data.{key}={want} but the cache {d.cache_dir} holds {got}: set data.{key}={got} "
                              f"(or null) or rebuild the cache")
    text_dim = int(model_config.wan["text_dim"])
    if item["text_emb"].shape[-1] != text_dim:
        raise ConfigError(f"cache {d.cache_dir} has text embeddings of width {item['text_emb'].shape[-1]} but "
                          f"preset {model_config.name} expects text_dim {text_dim}")
    if model_config.is_i2v and "cond_latent" not in item:
        raise ConfigError(f"preset {model_config.name} is image-to-video but cache {d.cache_dir} has no "
                          f"cond_latent / clip_image_emb (build it with --image-encoder)")
