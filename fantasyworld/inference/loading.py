"""What both pipelines share in loading: the text encoder (optional, never float16), the tiny
backbone's seed and the seeded RNG fork.

Each encoder is given as a local directory (``from_pretrained`` of diffusers / transformers,
nothing downloaded) or ``"tiny"`` (the seeded tiny random encoders of
:mod:`fantasyworld.models.encoders`). Everything is built in host memory; the pipeline's
memory tier places it afterwards. The caller's global torch RNG is never changed. The VAE and
the CLIP image encoder load through :func:`~fantasyworld.models.encoders.load_vae_spec` and
:func:`~fantasyworld.models.encoders.load_image_encoder_spec` directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from fantasyworld.models import encoders

__all__ = ["TINY_BACKBONE_SEED", "fork_rng", "load_text_component"]

#: Seed of the random backbone used for tiny presets when no backbone directory is given.
TINY_BACKBONE_SEED = 0


@contextlib.contextmanager
def fork_rng(seed: int) -> Iterator[None]:
    """Seeded global torch RNG inside, caller's state restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_text_component(spec: str | None, tokenizer: str | None, device: torch.device, dtype: torch.dtype
                        ) -> tuple[Any, Any]:
    """``(UMT5 encoder, tokenizer)``, the tiny pair (``"tiny"``), or ``(None, None)`` without a spec.
    UMT5 overflows in float16 (NaN activations), so ``dtype=float16`` runs it in bfloat16."""
    if spec is None:
        return None, None
    return encoders.load_text_encoder_spec(spec, tokenizer, device, torch.bfloat16 if dtype == torch.float16 else dtype)

