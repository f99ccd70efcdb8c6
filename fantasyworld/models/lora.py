"""Merging a LoRA (safetensors) into the frozen Wan base, as the official Wan2.2 inference does.

The official FantasyWorld-Wan2.2 inference merges a Wan2.2-Fun reward LoRA into each expert
with multiplier 0.55 before the IRG layers copy the Wan blocks; here the IRG layers
reference the same blocks, so merging into the base before building the model is the same.

Two key formats are read (those the official merge accepts):

* kohya: ``lora_unet_<module path with '.' -> '_'>.lora_down.weight`` (``(r, in)``),
  ``.lora_up.weight`` (``(out, r)``) and an optional ``.alpha`` (a scalar), e.g.
  ``lora_unet__blocks_0_self_attn_q.lora_down.weight`` -> ``blocks.0.self_attn.q``;
* PEFT: ``<module path>.lora_A.weight`` (down), ``.lora_B.weight`` (up), optional ``.alpha``.

Module paths are original Wan names (``blocks.0.self_attn.q``, ``time_projection.1``,
``head.head``, ``control_adapter.conv``). The merge is, per target weight ``W`` of shape
``(out, in)`` (or a 1x1 convolution ``(out, in, 1, 1)``, squeezed and unsqueezed)::

    W <- W + m * (alpha / r) * (up @ down),   r = up.shape[1]

with ``alpha / r`` replaced by 1 when the file has no ``.alpha`` for that module (the
official arithmetic: the scale is then ``m``, not ``m / r``). It is permanent and adds no
keys. Keys that fit neither format, or name no weight of the model, are refused by name
(the official merge only prints and skips them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from fantasyworld.errors import CheckpointError

__all__ = ["LoraTerm", "merge_lora_into", "merged_weight", "read_lora"]

_KOHYA_PREFIX = "lora_unet_"
_KOHYA = (".lora_down.weight", ".lora_up.weight")
_PEFT = (".lora_A.weight", ".lora_B.weight")


@dataclass
class LoraTerm:
    """One low-rank update of the weight ``target`` (an original Wan weight name).

    Attributes:
        target: e.g. ``blocks.0.self_attn.q.weight``.
        up: ``(out, r)``; down: ``(r, in)`` (1x1 conv kernels squeezed).
        alpha: the file's alpha, or ``None`` (then ``alpha / r`` is taken as 1).
    """

    target: str
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    def scale(self, multiplier: float) -> float:
        """``m * alpha / r`` (``m`` without an alpha)."""
        return multiplier * (self.alpha / self.rank if self.alpha is not None else 1.0)

    def delta(self, multiplier: float, like: torch.Tensor) -> torch.Tensor:
        """``scale * (up @ down)`` in float32, shaped like the target ``like``."""
        d = self.scale(multiplier) * (self.up.float() @ self.down.float())
        return d.reshape(like.shape)


def _module_names(weight_names: Iterable[str]) -> dict[str, str]:
    """``'blocks_0_self_attn_q'`` -> ``'blocks.0.self_attn.q'`` for every ``*.weight``."""
    table: dict[str, str] = {}
    for name in weight_names:
        if name.endswith(".weight"):
            module = name[: -len(".weight")]
            table[module.replace(".", "_")] = module
    return table


def read_lora(path: str | Path, weight_names: Iterable[str]) -> dict[str, LoraTerm]:
    """Read a LoRA file and resolve each update to one of ``weight_names`` (original Wan names).

    Returns:
        target weight name -> :class:`LoraTerm`.
    Raises:
        CheckpointError: missing/unreadable file, keys of neither format, an up without a
            down (or the reverse), a target that is not a weight of the model, or
            ranks/shapes that do not fit; the message names the file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: LoRA file does not exist")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several error types
        raise CheckpointError(f"{path}: unreadable safetensors LoRA file ({exc})") from exc
    names = set(weight_names)
    flat = _module_names(names)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    bad: list[str] = []
    for key, value in state.items():
        module = role = None
        if key.startswith(_KOHYA_PREFIX):
            stem = key[len(_KOHYA_PREFIX):].lstrip("_")
            for suffix, r in ((_KOHYA[0], "down"), (_KOHYA[1], "up"), (".alpha", "alpha")):
                if stem.endswith(suffix):
                    module = flat.get(stem[: -len(suffix)])
                    role = r
                    break
        else:
            for suffix, r in ((_PEFT[0], "down"), (_PEFT[1], "up"), (".alpha", "alpha")):
                if key.endswith(suffix):
                    stem = key[: -len(suffix)]
                    module = stem if f"{stem}.weight" in names else None
                    role = r
                    break
        if module is None or role is None:
            bad.append(key)
            continue
        parts.setdefault(module, {})[role] = value
    if bad:
        shown = ", ".join(sorted(bad)[:12]) + (f", ... (+{len(bad) - 12} more)" if len(bad) > 12 else "")
        raise CheckpointError(f"{path}: {len(bad)} LoRA keys name no weight of the model or fit neither the kohya "
                              f"(lora_unet_*.lora_down/lora_up/alpha) nor the PEFT (*.lora_A/lora_B) format: {shown}")
    terms: dict[str, LoraTerm] = {}
    for module, p in sorted(parts.items()):
        if "up" not in p or "down" not in p:
            raise CheckpointError(f"{path}: LoRA for {module} has {'no up' if 'up' not in p else 'no down'} weight")
        up, down = p["up"], p["down"]
        if up.ndim == 4:
            up, down = up.flatten(1), down.flatten(1)  # 1x1 conv kernels
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
            raise CheckpointError(f"{path}: LoRA for {module}: up {tuple(p['up'].shape)} and down "
                                  f"{tuple(p['down'].shape)} are not a rank-r pair")
        alpha = float(p["alpha"].float().reshape(-1)[0]) if "alpha" in p else None
        terms[f"{module}.weight"] = LoraTerm(f"{module}.weight", up, down, alpha)
    return terms


def merged_weight(weight: torch.Tensor, term: LoraTerm, multiplier: float) -> torch.Tensor:
    """``W + scale * up @ down`` computed in float32, returned in ``weight``'s dtype.

    Raises ``ValueError`` when the update does not fit the weight (only ``(out, in)`` and
    1x1-convolution ``(out, in, 1, 1)`` weights can take one).
    """
    out_in = (term.up.shape[0], term.down.shape[1])
    if not (weight.ndim == 2 or (weight.ndim == 4 and weight.shape[2:] == (1, 1))) or \
            tuple(weight.shape[:2]) != out_in:
        raise ValueError(f"LoRA for {term.target}: update {out_in} does not fit weight {tuple(weight.shape)}")
    return (weight.float() + term.delta(multiplier, weight)).to(weight.dtype)


def merge_lora_into(params: Mapping[str, torch.Tensor], wan_names: Mapping[str, str], path: str | Path,
                    multiplier: float) -> list[str]:
    """Merge the LoRA file ``path`` into ``params`` in place.

    Args:
        params: tensors to update, by their own names (e.g. a transformer's named parameters).
        wan_names: original Wan weight name -> key of ``params`` (``blocks.0.self_attn.q.weight``
            -> ``blocks.0.attn1.to_q.weight`` for a diffusers transformer).
        path: the LoRA safetensors file.
        multiplier: ``m`` (official: 0.55).

    Returns:
        The merged original Wan names, sorted.
    """
    terms = read_lora(path, wan_names)
    with torch.no_grad():
        for name, term in terms.items():
            target = params[wan_names[name]]
            try:
                target.copy_(merged_weight(target, term, multiplier))
            except ValueError as exc:
                raise CheckpointError(f"{path}: {exc}") from exc
    return sorted(terms)
