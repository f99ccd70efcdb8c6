"""Inference and export (docs/inference.md).

Modules, one job each:

* :mod:`~fantasyworld.inference.trajectories` - named camera paths, camera files, checks;
* :mod:`~fantasyworld.inference.sampler` - flow-matching Euler with batched CFG, heads once, one
  loop over a per-step expert plan;
* :mod:`~fantasyworld.inference.step_cache` - optional first-block step caching of the sampler;
* :mod:`~fantasyworld.inference.pipeline` - :class:`FantasyWorldPipeline` (loading, encoders,
  decode, ``__call__``; the one call both pipelines run);
* :mod:`~fantasyworld.inference.call_record` - the end of a call: geometry arrays, settings, result;
* :mod:`~fantasyworld.inference.loading` - the encoders' loading, shared by both pipelines;
* :mod:`~fantasyworld.inference.two_expert` / :mod:`~fantasyworld.inference.two_expert_pipeline` -
  the Wan2.2 variant's plan, first/last-image latent and pipeline;
* :mod:`~fantasyworld.inference.options` - :class:`GenerationOptions`, the keyword-only settings of a call;
* :mod:`~fantasyworld.inference.camera_inputs` - trajectory -> Plücker rays (ours or the official recipe);
* :mod:`~fantasyworld.inference.official_cameras` - the official inference's camera quirks;
* :mod:`~fantasyworld.inference.images` - first-frame images and depth maps given to a call;
* :mod:`~fantasyworld.inference.result` - :class:`GenerationResult` and ``save(dir)``;
* :mod:`~fantasyworld.inference.export` - videos, depth/point arrays, camera files;
* :mod:`~fantasyworld.inference.ply` - point-cloud fusion and PLY I/O;
* :mod:`~fantasyworld.inference.colmap` - COLMAP text model / 3DGS scene layout;
* :mod:`~fantasyworld.inference.glb` - GLB scenes (point cloud + camera frustums);
* :mod:`~fantasyworld.viewer.outputs` - read a generate / evaluate / demo folder back;
* :mod:`~fantasyworld.inference.report` - ``report.html`` with the SVG trajectory plot;
* :mod:`~fantasyworld.inference.testing` - tiny checkpoints for tests and smoke runs.

``FantasyWorldPipeline`` and ``GenerationResult`` are importable from here (lazily, so that
the CLI does not import diffusers before it needs to).
"""

from __future__ import annotations

__all__ = ["FantasyWorldPipeline", "GenerationResult"]


def __getattr__(name: str):
    if name == "FantasyWorldPipeline":
        from fantasyworld.inference.pipeline import FantasyWorldPipeline

        return FantasyWorldPipeline
    if name == "GenerationResult":
        from fantasyworld.inference.result import GenerationResult

        return GenerationResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
