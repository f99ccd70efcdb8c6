"""Loading the frozen encoders of a pipeline (both pipelines share it) and the seeded RNG fork.

Each encoder is given as a local directory (``from_pretrained`` of diffusers / transformers,
nothing downloaded) or ``"tiny"`` (the seeded tiny random encoders of
:mod:`fantasyworld.models.encoders`). Everything is built in host memory; the pipeline's
memory tier places it afterwards. The caller's global torch RNG is never changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from fantasyworld.models import encoders

__all__ = ["TINY_BACKBONE_SEED", "fork_rng", "load_image_component", "load_text_component", "load_vae_component"]

#: Seed of the random backbone used for tiny presets when no backbone directory is given.
TINY_BACKBONE_SEED = 0


@contextlib.contextmanager
def fork_rng(seed: int) -> Iterator[None]:
    """Seeded global torch RNG inside, caller's state restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_vae_component(spec: str, device: torch.device) -> Any:
    """The Wan VAE (``AutoencoderKLWan``, fp32) from a directory, or the tiny one (``"tiny"``)."""
    return encoders.load_vae_spec(spec, device)


def load_text_component(spec: str | None, tokenizer: str | None, device: torch.device, dtype: torch.dtype
                        ) -> tuple[Any, Any]:
    """``(UMT5 encoder, tokenizer)``, the tiny pair (``"tiny"``), or ``(None, None)`` without a spec.
    UMT5 overflows in float16 (NaN activations), so ``dtype=float16`` runs it in bfloat16."""
    if spec is None:
        return None, None
    return encoders.load_text_encoder_spec(spec, tokenizer, device, torch.bfloat16 if dtype == torch.float16 else dtype)


def load_image_component(spec: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(CLIP vision model, image processor)`` from a directory, or the tiny pair (``"tiny"``)."""
    return encoders.load_image_encoder_spec(spec, device, dtype)
