"""Optional first-block step caching of the sampler (off by default).

Consecutive denoising steps change the video stream little in the middle of a run. With
``GenerationOptions.step_cache = THRESH`` (``generate --step-cache THRESH``) each sampling
forward first runs the first ``probe_blocks`` Wan blocks (preconditioning layers, with their
camera adapters) and compares their output ``y`` (conditional half, ``(B, L, D_wan)``) with
the same probe at the **last fully computed step** of the same expert, ``y_ref``:

    d = mean |y - y_ref| / mean |y_ref|          (relative L1, fp32)

If ``d < THRESH`` the step is *skipped*: the remaining video blocks (the other preconditioning
layers and the IRG layers with the whole geometry stream) are not run; the video stream
becomes ``y + r``, with ``r`` the residual (output of the remaining blocks minus their input)
stored at the last computed step, and only Wan's output head runs on it. Otherwise the step
runs in full and refreshes ``y_ref`` and ``r``. Since ``y_ref`` only moves at computed steps,
a slow drift adds up until it crosses the threshold and forces a full step.

Rules (:class:`StepCache`):

* the first ``first_steps`` and the last ``last_steps`` steps always run in full, and so does
  every step that reads the heads (``geometry="last-step"``'s last step); the ``final``
  geometry forward on the denoised latent never sees the cache;
* CFG halves: one decision per step, taken on the **conditional** half (the same numbers
  whether the halves are batched or run apart); each half reuses its own residual (batched:
  one ``2B`` residual, conditional half first);
* several experts (two-expert sampling): each has its own reference and residual; the first
  step after a switch has no reference and runs in full;
* ``THRESH = 0`` never skips (``d < 0`` is impossible): the outputs are bit-identical to the
  uncached sampler; a huge threshold skips every step the rules allow.

The report (:meth:`StepCache.report`, ``settings["step_cache"]`` of a result) lists the skipped
steps and every step's distance ``d``. The model side is the
:class:`~fantasyworld.models.fantasyworld.VideoStreamCache` protocol of the forward.
Speed and output error at real shapes: ``benchmarks/bench_generate.py --what step-cache``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CFG_HALVES", "StepCache", "StepCacheSettings", "relative_l1"]

#: the forwards of one step: ``both`` (batched CFG, ``[cond; uncond]``), ``cond``, ``uncond``
CFG_HALVES = ("both", "cond", "uncond")


@dataclass(frozen=True)
class StepCacheSettings:
    """When the sampler may reuse the video stream (module docstring).

    Attributes:
        threshold: skip a step when the probe's relative L1 change is below this (>= 0).
        first_steps: the first steps that always run in full (step 0 always does: it has no
            reference to compare with).
        last_steps: the last steps that always run in full.
        probe_blocks: how many of the first Wan blocks (preconditioning layers) the probe runs.
    """

    threshold: float
    first_steps: int = 2
    last_steps: int = 2
    probe_blocks: int = 1

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ValueError(f"step cache threshold must be >= 0, got {self.threshold}")
        if self.first_steps < 0 or self.last_steps < 0:
            raise ValueError(f"step cache first_steps and last_steps must be >= 0, got {self.first_steps}, "
                             f"{self.last_steps}")
        if self.probe_blocks < 1:
            raise ValueError(f"step cache probe_blocks must be >= 1, got {self.probe_blocks}")


def relative_l1(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``mean |x - ref| / mean |ref|`` in fp32 (``inf`` for an all-zero ``ref``)."""
    x, ref = x.float(), ref.float()
    den = ref.abs().mean()
    return float((x - ref).abs().mean() / den) if den > 0 else float("inf")


@dataclass
class _ExpertState:
    """One expert's reference probe (conditional half) and residual per CFG half."""

    probe: torch.Tensor | None = None
    residual: dict[str, torch.Tensor] = field(default_factory=dict)


class _Slot:
    """The :class:`~fantasyworld.models.fantasyworld.VideoStreamCache` of one forward."""

    def __init__(self, cache: StepCache, half: str, cond_batch: int) -> None:
        self.cache, self.half, self.cond_batch = cache, half, cond_batch
        self.probe_blocks = cache.settings.probe_blocks

    def reuse(self, probe: torch.Tensor) -> torch.Tensor | None:
        return self.cache._reuse(self.half, probe, self.cond_batch)

    def store(self, residual: torch.Tensor) -> None:
        self.cache._state().residual[self.half] = residual.detach()


class StepCache:
    """The first-block cache of one sampling run (every expert of it).

    Args:
        settings: threshold and the always-full steps.
        plan: the expert key of every step (one key for one model).

    Per step the sampler calls :meth:`begin_step`, then passes :meth:`slot` of each forward's
    CFG half to the model (``step_cache=``).
    """

    def __init__(self, settings: StepCacheSettings, plan: Sequence[str]) -> None:
        self.settings = settings
        self.plan = list(plan)
        self.skipped: list[int] = []
        self.distance: list[float | None] = [None] * len(self.plan)
        self._states: dict[str, _ExpertState] = {}
        self._step = -1
        self._allowed = False
        self._decision: bool | None = None

    def may_skip(self, i: int, heads: bool = False) -> bool:
        """Step ``i`` is outside the always-full first and last steps and reads no heads."""
        n = len(self.plan)
        return self.settings.first_steps <= i < n - self.settings.last_steps and not heads

    def begin_step(self, i: int, heads: bool = False) -> None:
        """Start step ``i`` (``heads``: this step reads the geometry heads); experts that run no
        later step drop their tensors."""
        self._step, self._allowed, self._decision = i, self.may_skip(i, heads), None
        later = set(self.plan[i:])
        for key in [k for k in self._states if k not in later]:
            del self._states[key]

    def slot(self, half: str, cond_batch: int) -> _Slot:
        """The model-side cache of one forward of the current step: ``half`` of
        :data:`CFG_HALVES`, ``cond_batch`` the number ``B`` of conditional samples (the first
        ``B`` rows of a batched forward)."""
        if half not in CFG_HALVES:
            raise ValueError(f"half must be one of {CFG_HALVES}, got {half!r}")
        return _Slot(self, half, cond_batch)

    def _state(self) -> _ExpertState:
        return self._states.setdefault(self.plan[self._step], _ExpertState())

    def _reuse(self, half: str, probe: torch.Tensor, cond_batch: int) -> torch.Tensor | None:
        state = self._state()
        if half != "uncond":  # the deciding forward: the conditional half's probe
            cur = probe[:cond_batch]
            ref = state.probe
            d = relative_l1(cur, ref) if ref is not None and ref.shape == cur.shape else None
            self.distance[self._step] = d
            self._decision = bool(self._allowed and d is not None and d < self.settings.threshold
                                  and half in state.residual)
            if self._decision:
                self.skipped.append(self._step)
            else:
                state.probe = cur.detach().clone()
        if self._decision and half in state.residual:
            return state.residual[half]
        return None

    def report(self) -> dict[str, Any]:
        """``threshold``, ``first_steps``, ``last_steps``, ``probe_blocks``, ``skipped`` (count),
        ``skipped_steps`` (indices), ``computed`` (count) and ``distance`` (per step; ``None``
        where there was no reference)."""
        s = self.settings
        return {"threshold": s.threshold, "first_steps": s.first_steps, "last_steps": s.last_steps,
                "probe_blocks": s.probe_blocks, "skipped": len(self.skipped), "skipped_steps": list(self.skipped),
                "computed": len(self.plan) - len(self.skipped),
                "distance": [None if d is None else round(d, 6) for d in self.distance]}
