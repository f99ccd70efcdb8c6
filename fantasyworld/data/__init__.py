"""Data: the seed layout reader, camera-aware transforms, loader, synthetic worlds,
validation and the latent cache. See ``docs/data.md``.

Modules (import what you need; nothing heavy is imported here):
``formats`` (layout, metadata, video/array readers), ``transforms``
(frame sampling, crop/resize), ``loader`` (RawClipDataset, collate, build_dataloader),
``validate``, ``synth`` (synthesize_dataset),
``cache`` (build_cache, CachedClipDataset), ``buckets`` (resolution / frame buckets and
their assignment), ``bucket_sampler`` (BucketBatchSampler).
"""
