"""Attention kernels behind one call, chosen by name: a registry of backends.

Every attention of the model (the frozen Wan blocks' self- and cross-attention, the geometry
blocks' and the bidirectional cross-attention) goes through :func:`attention`, which runs the
*active* backend (:func:`set_attention_backend`, :func:`use_attention_backend`). Shapes are
SDPA's: ``q (B, H, Lq, d)``, ``k, v (B, H, Lk, d)`` -> ``(B, H, Lq, d)`` in ``q``'s dtype;
``layout="bshd"`` takes and returns ``(B, L, H, d)`` instead (Wan's layout, no transposes for
kernels that want it). No mask, no dropout, not causal: the model needs none.

Backends:

* ``sdpa`` (the default): ``torch.nn.functional.scaled_dot_product_attention``, i.e. whatever
  fused kernel torch picks (cuDNN or flash on Hopper). Forward and backward, every device.
* ``fa3``: FlashAttention-3's Hopper forward kernel in bf16 (exact attention, another kernel's
  rounding). Inference only: the kernel package ships no backward.
* ``fa3_fp8``: the same kernel on float8 e4m3 inputs. ``q``, ``k`` and ``v`` are quantised with
  one float32 scale per (sample, head), ``scale = max|x| / 448`` over that head's tokens and
  channels; the kernel applies the scales to ``q k^T`` and to the output (and quantises the
  softmax probabilities itself). The output is bf16. Inference only; its measured error on the
  whole model is in docs/benchmarks.md.

The FA3 backends need a FlashAttention-3 build importable as ``flash_attn_interface``
(the upstream Hopper package) or ``fa3_fwd_interface`` (a forward-only build); on a machine
without one, selecting them raises :class:`~fantasyworld.errors.ConfigError` naming what is
missing. A backend is a function ``(q, k, v) -> out`` on the ``bshd`` layout plus an
availability check, registered with :func:`register_attention_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from fantasyworld.errors import ConfigError
from fantasyworld.layers.fp8_linear import quantize_e4m3

__all__ = [
    "ATTENTION_BACKENDS", "AttentionBackend", "attention", "attention_backend_unavailable",
    "get_attention_backend", "quantize_heads", "register_attention_backend", "set_attention_backend",
    "use_attention_backend",
]

#: Python modules a FlashAttention-3 build installs, tried in this order
FA3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered attention kernel.

    Attributes:
        name: the registry key (``--attention`` on the command line).
        fn: ``(q, k, v) -> out``, all ``(B, L, H, d)``.
        unavailable: ``() -> reason`` why it cannot run here, ``None`` when it can.
        differentiable: whether gradients flow through ``fn`` (training may use it).
        exact: whether it computes attention in the inputs' precision (float8 ones do not).
        description: one line for ``--help`` and the docs.
    """

    name: str
    fn: AttentionFn
    unavailable: Callable[[], str | None]
    differentiable: bool
    exact: bool
    description: str


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {}
_active = "sdpa"


def register_attention_backend(
    name: str, *, description: str, unavailable: Callable[[], str | None] = lambda: None,
    differentiable: bool = False, exact: bool = True,
) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator: register ``fn(q, k, v)`` (``bshd`` layout) under ``name``."""

    def wrap(fn: AttentionFn) -> AttentionFn:
        if name in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {name!r} is already registered")
        ATTENTION_BACKENDS[name] = AttentionBackend(name, fn, unavailable, differentiable, exact, description)
        return fn

    return wrap


def attention_backend_unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, or ``None`` when it can."""
    if name not in ATTENTION_BACKENDS:
        return f"unknown attention backend {name!r} (registered: {', '.join(ATTENTION_BACKENDS)})"
    return ATTENTION_BACKENDS[name].unavailable()


def set_attention_backend(name: str) -> None:
    """Make ``name`` the backend every :func:`attention` call runs (process-wide).

    Raises:
        ConfigError: the name is not registered, or its kernel cannot run here (the reason).
    """
    global _active
    reason = attention_backend_unavailable(name)
    if reason is not None:
        raise ConfigError(f"attention backend {name!r}: {reason}")
    _active = name


def get_attention_backend() -> str:
    """The active backend's name."""
    return _active


@contextmanager
def use_attention_backend(name: str) -> Iterator[None]:
    """``with use_attention_backend("fa3"): ...``: the backend for the block, restored after."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bhsd") -> torch.Tensor:
    """Scaled dot-product attention (softmax scale ``d**-0.5``) with the active backend.

    Args:
        q: ``(B, H, Lq, d)`` (``layout="bhsd"``) or ``(B, Lq, H, d)`` (``"bshd"``).
        k, v: ``(B, H, Lk, d)`` or ``(B, Lk, H, d)``, ``q``'s dtype.
        layout: ``"bhsd"`` (SDPA's) or ``"bshd"``; the output has the same.

    Returns:
        ``(B, H, Lq, d)`` or ``(B, Lq, H, d)``, ``q``'s dtype.

    Raises:
        RuntimeError: an inference-only backend is active while gradients are wanted.
    """
    if _active == "sdpa" and layout == "bhsd":  # the default in SDPA's own layout: no transposes
        return F.scaled_dot_product_attention(q, k, v)
    backend = ATTENTION_BACKENDS[_active]
    if not backend.differentiable and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                                    or v.requires_grad):
        raise RuntimeError(f"attention backend {_active!r} is inference-only (no backward); "
                           "train with the default 'sdpa'")
    if layout == "bshd":
        return backend.fn(q, k, v)
    return backend.fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@register_attention_backend("sdpa", differentiable=True,
                            description="torch's scaled_dot_product_attention (cuDNN / flash kernels on Hopper)")
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


# --- FlashAttention-3 -----------------------------------------------------------------------

_fa3_module: ModuleType | None = None


def _load_fa3() -> ModuleType | str:
    """The FA3 interface module, or why it cannot be used."""
    global _fa3_module
    if _fa3_module is not None:
        return _fa3_module
    if not torch.cuda.is_available():
        return "FlashAttention-3 runs on CUDA GPUs only (no CUDA device here)"
    major, _ = torch.cuda.get_device_capability()
    if major != 9:
        return f"FlashAttention-3 needs a Hopper GPU (compute capability 9.x), this one is {major}.x"
    errors = []
    for name in FA3_MODULES:
        try:
            _fa3_module = importlib.import_module(name)
            return _fa3_module
        except ImportError as e:  # not installed, or built for another torch / CUDA
            errors.append(f"{name}: {e}")
    return "no FlashAttention-3 build is importable (" + "; ".join(errors) + ")"


def _fa3_unavailable() -> str | None:
    found = _load_fa3()
    return found if isinstance(found, str) else None


def _fa3_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **descales: torch.Tensor) -> torch.Tensor:
    """FA3's forward custom op on ``(B, L, H, d)`` (last dim contiguous); returns its output."""
    mod = _load_fa3()
    assert not isinstance(mod, str), mod  # set_attention_backend checked it
    out = mod._flash_attn_forward(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False, **descales)
    return out[0]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@register_attention_backend("fa3", unavailable=_fa3_unavailable,
                            description="FlashAttention-3 forward, bf16 (Hopper; inference only)")
def _fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dtype = q.dtype
    if dtype not in (torch.bfloat16, torch.float16):
        q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))
    out = _fa3_forward(*(_last_dim_contiguous(x) for x in (q, k, v)))
    return out.to(dtype)


def quantize_heads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L, H, d)`` -> ``(x8 (B, L, H, d) float8_e4m3fn, scale (B, H) float32)``, ``x ~ x8 * scale``.

    One scale per (sample, head): ``max |x|`` over that head's ``L x d`` values, over 448.
    """
    x8, scale = quantize_e4m3(x, (1, 3))  # scale (B, 1, H, 1)
    return x8, scale[:, 0, :, 0]


@register_attention_backend("fa3_fp8", unavailable=_fa3_unavailable, exact=False,
                            description="FlashAttention-3 forward on float8 e4m3 q/k/v, one scale per "
                                        "sample and head (Hopper; inference only)")
def _fa3_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dtype = q.dtype
    (q8, sq), (k8, sk), (v8, sv) = (quantize_heads(x) for x in (q, k, v))
    out = _fa3_forward(q8, k8, v8, q_descale=sq, k_descale=sk, v_descale=sv)
    return out.to(dtype)
