"""DPT speed options: channels-last fusion and resizes as matrix products keep the head's values.

The parity bar is the one the official-weights path relies on: the float32 forward within
5e-6 relative (to the map's largest value) of the default head, and the resize itself within
1e-6 (the interpolation weights are the kernel's float32 weights; only the summation differs).
Gradients of the whole map's sum are held to 1e-4 relative: each token's gradient accumulates
every output pixel it reaches (tens of thousands of terms) in an order the layout changes, and
float32 reordering of such sums has moved them by up to 3e-5 of their largest value (oneDNN picks
its convolution-backward algorithm per run and thread count); the forward bar stays 5e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fantasyworld.heads.dpt_head import DPTHead
from fantasyworld.heads.resize import device_interpolation_matrix, interpolation_matrix, resize_bilinear

TINY = dict(features=32, out_channels=[16, 32, 64, 64])
GRID = (3, 2)


@pytest.mark.parametrize("size_in,size_out", [((11, 19), (21, 37)), ((21, 37), (42, 74)), ((84, 148), (168, 296)),
                                              ((5, 7), (5, 7)), ((1, 3), (4, 6)), ((4, 4), (1, 1))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matmul_resize_matches_the_kernel_forward_and_backward(size_in, size_out, channels_last: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, *size_in, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ref = F.interpolate(x, size_out, mode="bilinear", align_corners=True)
    got = resize_bilinear(x, size_out, "matmul")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)  # the layout of the input, without a transpose
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()
    w = torch.randn(ref.shape, generator=g)
    (gr,) = torch.autograd.grad((ref * w).sum(), x)
    (gg,) = torch.autograd.grad((got * w).sum(), x)
    assert (gg - gr).abs().max() <= 1e-6 * gr.abs().max()


def test_interpolation_matrix_rows_are_convex_pairs() -> None:
    a = interpolation_matrix(21, 42, "cpu", torch.float32)
    assert a.shape == (42, 21)
    torch.testing.assert_close(a.sum(1), torch.ones(42), rtol=0, atol=1e-6)
    assert ((a > 0).sum(1) <= 2).all() and a[0, 0] == 1 and a[-1, -1] == 1
    with pytest.raises(ValueError, match="resize mode must be one of kernel, matmul"):
        resize_bilinear(torch.zeros(1, 1, 2, 2), (4, 4), "nearest")


@pytest.mark.parametrize(("n_in", "n_out"), [(21, 42), (37, 296), (5, 5), (8, 3), (1, 4), (6, 1)])
def test_interpolation_matrix_is_the_kernels_weights(n_in: int, n_out: int) -> None:
    # the kernel applied to the identity returns its own weights: the matrix must equal them
    eye = torch.eye(n_in)[None]  # (1, n_in channels, n_in positions)
    kernel = F.interpolate(eye, size=n_out, mode="linear", align_corners=True)[0].T  # (n_out, n_in)
    assert torch.equal(interpolation_matrix(n_in, n_out, "cpu", torch.float32), kernel)


def test_device_matrix_is_made_once_and_serves_training_after_inference() -> None:
    # one copy to the device per size (a copy per resize would make the host wait for the device)
    device_interpolation_matrix.cache_clear()
    with torch.inference_mode():  # first needed by inference ...
        a = device_interpolation_matrix(7, 19, torch.device("cpu"), torch.float32)
    assert not a.is_inference()  # ... still usable where autograd saves it
    assert device_interpolation_matrix(7, 19, torch.device("cpu"), torch.float32) is a
    assert torch.equal(a, interpolation_matrix(7, 19, "cpu", torch.float32))
    x = torch.randn(1, 2, 5, 7, requires_grad=True)
    resize_bilinear(x, (11, 19), "matmul").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _tokens(num_frames: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    p = 5 + GRID[0] * GRID[1]
    return [torch.randn(batch, num_frames, p, 128, generator=g, requires_grad=True) for _ in range(4)]


@pytest.mark.parametrize("channels_last,resize", [(True, "kernel"), (False, "matmul"), (True, "matmul")])
def test_head_layout_options_keep_values_and_gradients(channels_last: bool, resize: str) -> None:
    torch.manual_seed(0)
    head = DPTHead.points(128, **TINY)
    toks = _tokens(3)
    ref_v, ref_c = head(toks, GRID)
    ref_grads = torch.autograd.grad(ref_v.sum() + ref_c.sum(), toks)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    head.set_layout(channels_last=channels_last, resize=resize)
    got_v, got_c = head(toks, GRID)
    got_grads = torch.autograd.grad(got_v.sum() + got_c.sum(), toks)
    for got, ref in ((got_v, ref_v), (got_c, ref_c)):
        assert got.shape == ref.shape and (got - ref).abs().max() <= 5e-6 * ref.abs().max()
    for got, ref in zip(got_grads, ref_grads):
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the layout is a runtime choice: weights and keys unchanged, and it switches back exactly
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())
    head.set_layout(channels_last=False, resize="kernel")
    back_v, _ = head(toks, GRID)
    assert torch.equal(back_v, ref_v)
    with pytest.raises(ValueError, match="resize must be one of kernel, matmul"):
        head.set_layout(resize="bicubic")
