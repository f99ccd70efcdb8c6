"""Latent cache: encode every clip once so that training runs neither the VAE nor UMT5.

``build_cache`` reads each clip through :class:`~fantasyworld.data.loader.RawClipDataset`
(frames ``0, stride, ...``, centre crop to ``height x width``: the same transform as
training) and writes ``OUT/<clip_id>.safetensors`` holding

* ``latents`` ``(16, F, H/8, W/8)`` fp32 (or ``--latent-dtype``): normalised VAE mean;
* ``text_emb`` ``(512, D)`` and ``text_len`` ``(1,)``: UMT5 output zeroed after the prompt;
* I2V (with an image encoder): ``clip_image_emb`` ``(257, 1280)`` and ``cond_latent``
  ``(20, F, H/8, W/8)``;
* ground truth at pixel resolution: ``depth`` ``(T, H, W)``, ``points`` ``(T, H, W, 3)``
  (fp32 or ``--geometry-dtype float16``), ``valid`` ``(T, H, W)`` bool, ``w2c``
  ``(T, 4, 4)``, ``intrinsics`` ``(T, 3, 3)``, ``frame_indices`` ``(T,)``;

with ``clip_id`` and ``prompt`` in the safetensors metadata, plus ``OUT/index.json`` listing
the clips and the settings. :class:`CachedClipDataset` reads it back (keys in
:mod:`fantasyworld.data.loader`).

With ``buckets`` (:mod:`fantasyworld.data.buckets`) each clip is stored at its bucket's
frames and size (``T, H, W`` above vary per clip; the file's metadata holds ``bucket`` as
``FxHxW``), each index entry records ``bucket`` ``[frames, height, width]``, the index holds
the bucket set (``buckets``) and the clips that fit none (``unfit``: clip id, reason,
message), and ``num_frames`` / ``height`` / ``width`` are null. A rerun re-encodes a clip
whose existing file holds another bucket. :class:`CachedClipDataset` then yields ``bucket``
per item and exposes ``buckets`` / ``bucket_of`` for the bucket sampler.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset

from fantasyworld.data.buckets import Bucket
from fantasyworld.data.loader import RawClipDataset, collate
from fantasyworld.errors import MISSING_FILE, DataError
from fantasyworld.models import encoders
from fantasyworld.models.weights import DTYPES

INDEX_NAME = "index.json"
CACHE_VERSION = 1


def encode_batch(batch: dict[str, Any], vae, text_encoder, tokenizer, image_encoder=None, image_processor=None,
                 latent_dtype: torch.dtype = torch.float32, geometry_dtype: torch.dtype = torch.float32
                 ) -> list[dict[str, torch.Tensor]]:
    """Tensors of the cache files of a :func:`~fantasyworld.data.loader.collate` batch of
    :class:`RawClipDataset` items of one shape (one dict per clip, no batch dim, on the CPU):
    one VAE and one text-encoder call for the whole batch."""
    video = batch["video"]  # (B, 3, T, H, W)
    out: dict[str, torch.Tensor] = {"latents": encoders.encode_video(vae, video).to(latent_dtype)}
    text, text_len = encoders.encode_text(text_encoder, tokenizer, list(batch["prompt"]))
    out["text_emb"] = text.to(latent_dtype)
    out["text_len"] = text_len.reshape(-1, 1)
    if image_encoder is not None:
        out["clip_image_emb"] = encoders.encode_image_clip(image_encoder, image_processor,
                                                           video[:, :, 0]).to(latent_dtype)
        out["cond_latent"] = encoders.i2v_condition_latent(vae, video).to(latent_dtype)
    out["depth"] = batch["depth"].to(geometry_dtype)
    out["points"] = batch["points"].to(geometry_dtype)
    out["valid"] = batch["valid"]
    out["w2c"] = batch["w2c"].float()
    out["intrinsics"] = batch["intrinsics"].float()
    out["frame_indices"] = batch["frame_indices"]
    host = {k: v.cpu() for k, v in out.items()}
    return [{k: v[i].contiguous() for k, v in host.items()} for i in range(len(video))]


def encode_sample(sample: dict[str, Any], vae, text_encoder, tokenizer, image_encoder=None,
                  image_processor=None, latent_dtype: torch.dtype = torch.float32,
                  geometry_dtype: torch.dtype = torch.float32
                  ) -> dict[str, torch.Tensor]:
    """Tensors of one cache file from one :class:`RawClipDataset` item (no batch dim)."""
    batch = {k: ([v] if isinstance(v, str) else v[None]) for k, v in sample.items()
             if k in ("video", "prompt", "depth", "points", "valid", "w2c", "intrinsics", "frame_indices")}
    return encode_batch(batch, vae, text_encoder, tokenizer, image_encoder, image_processor, latent_dtype,
                        geometry_dtype)[0]


def build_cache(data_root: str | Path, out_dir: str | Path, vae_dir: str | Path, text_encoder_dir: str | Path,
                tokenizer_dir: str | Path | None = None, image_encoder_dir: str | Path | None = None,
                num_frames: int = 81, height: int | None = None, width: int | None = None, stride: int = 1,
                device: str = "cpu", dtype: str = "float32", latent_dtype: str = "float32",
                geometry_dtype: str = "float32", overwrite: bool = False, progress: bool = False,
                buckets: tuple[Bucket, ...] | None = None, unfit: str = "error",
                max_crop: float | None = None, workers: int = 0, batch_size: int = 1) -> Path:
    """Encode every clip of ``data_root`` into ``out_dir`` (see the module docstring).

    Args:
        vae_dir, text_encoder_dir, tokenizer_dir, image_encoder_dir: local directories
            (``from_pretrained``), or ``"tiny"`` (:data:`~fantasyworld.models.encoders.TINY`)
            for the seeded tiny random encoders the tiny presets train with; an image encoder
            turns on the I2V outputs.
        dtype: compute dtype of the encoders; ``latent_dtype`` / ``geometry_dtype``: stored.
        overwrite: re-encode clips whose file exists (otherwise they are skipped, so an
            interrupted run resumes).
        buckets, unfit, max_crop: store each clip at its bucket's shape
            (:class:`~fantasyworld.data.loader.RawClipDataset`); ``num_frames``, ``height``
            and ``width`` are then unused.
        workers: DataLoader processes decoding and reading the clips (0: this process).
        batch_size: clips per encoder call (the same files as one at a time, the latents up
            to the float rounding of batched convolutions); 1 with buckets (shapes differ).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compute = DTYPES[dtype]
    vae = encoders.load_vae_spec(vae_dir, device, compute)
    text_encoder, tokenizer = encoders.load_text_encoder_spec(text_encoder_dir, tokenizer_dir, device, compute)
    image_encoder = image_processor = None
    if image_encoder_dir is not None:
        image_encoder, image_processor = encoders.load_image_encoder_spec(image_encoder_dir, device, compute)
    dataset = RawClipDataset(data_root, num_frames=num_frames, height=height, width=width, stride=stride,
                             buckets=buckets, unfit=unfit, max_crop=max_crop)
    bucketed = dataset.bucket_of is not None
    entries, metas, todo = [], [], []
    for i, record in enumerate(dataset.records):
        path = out_dir / f"{record.clip_id}.safetensors"
        meta = {"clip_id": record.clip_id, "prompt": record.prompt, "version": str(CACHE_VERSION)}
        entry = {"clip_id": record.clip_id, "file": path.name}
        if bucketed:
            bucket = dataset.buckets[dataset.bucket_of[i]]
            meta["bucket"], entry["bucket"] = str(bucket), bucket.as_list()
        if overwrite or not path.exists() or (bucketed and _stored_bucket(path) != meta["bucket"]):
            todo.append(i)
        entries.append(entry)
        metas.append(meta)
    loader = DataLoader(Subset(dataset, todo), batch_size=1 if bucketed else max(1, batch_size),
                        num_workers=workers, collate_fn=collate, pin_memory=torch.device(device).type == "cuda")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="cache", unit="clip")
    done = 0
    for batch in loader:
        for tensors in encode_batch(batch, vae, text_encoder, tokenizer, image_encoder, image_processor,
                                    DTYPES[latent_dtype], DTYPES[geometry_dtype]):
            i = todo[done]
            save_file(tensors, str(out_dir / entries[i]["file"]), metadata=metas[i])
            done += 1
        if bar is not None:
            bar.update(len(batch["prompt"]))
    if bar is not None:
        bar.close()
    index = {
        "version": CACHE_VERSION, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data_root": str(Path(data_root).resolve()), "num_frames": None if bucketed else num_frames,
        "stride": stride, "height": None if bucketed else height, "width": None if bucketed else width,
        "vae": str(vae_dir), "text_encoder": str(text_encoder_dir),
        "image_encoder": None if image_encoder_dir is None else str(image_encoder_dir),
        "text_dim": int(text_encoder.config.d_model), "clips": entries,
    }
    if bucketed:
        index["buckets"] = [b.as_list() for b in dataset.buckets]
        index["unfit"] = [{"clip_id": u.clip_id, "reason": u.reason, "message": u.message}
                          for u in dataset.assignment.unfit]
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=1))
    return out_dir


def _stored_bucket(path: Path) -> str | None:
    """The ``bucket`` metadata of an existing cache file (``None``: none, or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("bucket")
    except (SafetensorError, OSError):  # a torn file from an interrupted run: re-encode it
        return None


class CachedClipDataset(Dataset):
    """Items from a cache directory: ``latents``, ``text_emb``, ``text_len``, optional
    ``clip_image_emb`` / ``cond_latent``, and ``depth, points, valid, w2c, intrinsics,
    frame_indices, prompt, clip_id`` (all float tensors returned as fp32). No ``video``.

    A bucketed cache also yields ``bucket`` (int64 scalar) and has ``buckets`` (the set, in
    the index's order) and ``bucket_of`` (every entry's bucket index); otherwise both are
    ``None``."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        index_path = self.cache_dir / INDEX_NAME
        if not index_path.exists():
            raise DataError(index_path, MISSING_FILE,
                            "cache index does not exist (run `fantasyworld data cache`)")
        self.index = json.loads(index_path.read_text())
        self.entries = self.index["clips"]
        self.buckets: tuple[Bucket, ...] | None = None
        self.bucket_of: list[int] | None = None
        if self.index.get("buckets"):
            self.buckets = tuple(Bucket(*b) for b in self.index["buckets"])
            self.bucket_of = [self.buckets.index(Bucket(*e["bucket"])) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.read(i)

    def read_w2c(self, i: int) -> torch.Tensor:
        """World-to-camera poses ``(T, 4, 4)`` of item ``i`` alone (the rest of its file is not read)."""
        path = self.cache_dir / self.entries[i]["file"]
        if not path.exists():
            raise DataError(path, MISSING_FILE, "cache file does not exist")
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("w2c").float()

    def read(self, i: int, upcast: bool = True) -> dict[str, Any]:
        """Item ``i``; floating tensors as fp32, or (``upcast=False``) in their stored dtype."""
        path = self.cache_dir / self.entries[i]["file"]
        if not path.exists():
            raise DataError(path, MISSING_FILE, "cache file does not exist")
        out: dict[str, Any] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                t = f.get_tensor(key)
                out[key] = t.float() if upcast and t.is_floating_point() else t
        out["text_len"] = out["text_len"].reshape(())
        out["prompt"] = meta.get("prompt", "")
        out["clip_id"] = meta.get("clip_id", self.entries[i]["clip_id"])
        if self.bucket_of is not None:
            out["bucket"] = torch.tensor(self.bucket_of[i], dtype=torch.int64)
        return out
