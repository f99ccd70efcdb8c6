"""Geometry heads, the geometry block and 2D RoPE: shapes, ranges, causality, official key layout.

All CPU, tiny dims; the 14B-dim modules are only built on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fantasyworld.heads.activations import activate_head, activate_pose, inverse_log_transform
from fantasyworld.heads.camera_head import CameraHead, CameraTimeUpsample
from fantasyworld.heads.dpt_head import DPTHead
from fantasyworld.heads.temporal_upsample import CausalTemporalUpsampler
from fantasyworld.layers.geo_block import GeoBlock
from fantasyworld.layers.rope2d import Rope2D, frame_positions

TINY = dict(features=32, out_channels=[16, 32, 64, 64])
DIM_IN = 128
MANIFEST = Path(__file__).resolve().parent / "data" / "official_fantasyworld_wan21_i2v_14b_keys.jsonl"
GRID = (3, 2)  # token grid (h, w) -> 48 x 32 pixels


def _tokens(num_frames: int, seed: int = 0, batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = 5 + GRID[0] * GRID[1]
    return [torch.randn(batch, num_frames, p, DIM_IN, generator=g) for _ in range(4)]


def _manifest(prefix: str) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for keys under ``prefix`` (prefix stripped), from the committed manifest."""
    out = {}
    with MANIFEST.open() as fh:
        for line in fh:
            row = json.loads(line)
            if row["key"].startswith(prefix):
                out[row["key"][len(prefix) :]] = tuple(row["shape"])
    assert out, f"no official keys under {prefix}"
    return out


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- DPT heads


@pytest.mark.parametrize("num_frames,expected_t", [(1, 1), (2, 5), (3, 9), (21, 81)])
def test_dpt_depth_shapes_and_ranges_at_pixel_rate(num_frames: int, expected_t: int) -> None:
    torch.manual_seed(0)
    head = DPTHead.depth(DIM_IN, **TINY)
    depth, conf = head(_tokens(num_frames), GRID)
    assert depth.shape == (1, expected_t, 48, 32)
    assert conf.shape == (1, expected_t, 48, 32)
    assert head.num_output_frames(num_frames) == expected_t
    assert (depth > 0).all() and (conf > 1).all()


def test_dpt_point_head_shapes_batch2() -> None:
    torch.manual_seed(0)
    head = DPTHead.points(DIM_IN, **TINY)
    pts, conf = head(_tokens(3, batch=2), GRID)
    assert pts.shape == (2, 9, 48, 32, 3)
    assert conf.shape == (2, 9, 48, 32) and (conf > 1).all()


def test_dpt_without_temporal_upsampling_keeps_latent_rate() -> None:
    head = DPTHead.depth(DIM_IN, temporal_upsample=False, **TINY)
    depth, _ = head(_tokens(3), GRID)
    assert depth.shape == (1, 3, 48, 32)
    assert not any(k.startswith("temporal_upsamplers") for k in head.state_dict())


def test_dpt_chunk_sizes_do_not_change_output_atol_1e5() -> None:
    torch.manual_seed(0)
    head = DPTHead.depth(DIM_IN, **TINY)
    toks = _tokens(4)
    ref = head(toks, GRID)
    head.latent_frames_chunk_size, head.frames_chunk_size, head.temporal_chunk_size = 1, 3, 1
    out = head(toks, GRID)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dpt_head_is_causal_in_latent_frames() -> None:
    """Changing latent frame k leaves pixel frames < 4(k-1)+1 unchanged and changes frame 4(k-1)+1."""
    torch.manual_seed(0)
    head = DPTHead.depth(DIM_IN, **TINY)
    toks = _tokens(4)
    ref, _ = head(toks, GRID)
    k = 2
    bumped = [t.clone() for t in toks]
    for t in bumped:
        t[:, k] += torch.randn_like(t[:, k])  # not a constant: the head's LayerNorm removes those
    out, _ = head(bumped, GRID)
    first = 4 * (k - 1) + 1
    torch.testing.assert_close(out[:, :first], ref[:, :first], atol=0, rtol=0)
    assert (out[:, first] - ref[:, first]).abs().max() > 1e-4


# ------------------------------------------------------------------ temporal upsampler


def test_temporal_upsampler_chunked_equals_whole_sequence() -> None:
    """chunk_size=1 is the official frame-by-frame cached decode."""
    torch.manual_seed(0)
    up = CausalTemporalUpsampler(8)
    z = torch.randn(2, 8, 6, 3, 4)
    ref = up(z)
    assert ref.shape == (2, 8, 21, 3, 4)
    for cs in (1, 2, 4):
        torch.testing.assert_close(up(z, chunk_size=cs), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_temporal_upsampler_causality(k: int) -> None:
    """Latent frame k (k >= 1) feeds output frames 4k-3..4k; frames < 4(k-1)+1 never see it.

    Latent frame 0 feeds every output frame, output frame 0 sees only latent frame 0.
    """
    torch.manual_seed(0)
    up = CausalTemporalUpsampler(4)
    z = torch.randn(1, 4, 6, 2, 2)
    ref = up(z)
    z2 = z.clone()
    z2[:, :, k] += 1.0
    diff = (up(z2) - ref).abs().amax(dim=(0, 1, 3, 4))  # per output frame
    first = 0 if k == 0 else 4 * (k - 1) + 1
    assert (diff[:first] == 0).all()
    assert (diff[first : 4 * k + 1] > 0).all()


# ----------------------------------------------------------------------------- camera head


@pytest.mark.parametrize("num_frames,expected_t", [(1, 1), (2, 5), (3, 9), (21, 81)])
def test_camera_head_shapes_iterations_and_fov_range(num_frames: int, expected_t: int) -> None:
    torch.manual_seed(0)
    head = CameraHead(64, num_heads=2, trunk_depth=2)
    preds = head(torch.randn(2, num_frames, 64))
    assert len(preds) == 4
    for p in preds:
        assert p.shape == (2, expected_t, 9)
        assert (p[..., 7:] >= 0).all()


def test_camera_head_official_layout_is_subframe_major() -> None:
    torch.manual_seed(0)
    up = CameraTimeUpsample(8)
    x = torch.randn(2, 5, 8)
    inter, official = up(x, "interleaved"), up(x, "official")
    n = x.shape[1]
    for j in range(4):
        for i in range(n):
            torch.testing.assert_close(official[:, j * n + i], inter[:, 4 * i + j])


def test_camera_head_trunk_temb_conditions_trunk() -> None:
    torch.manual_seed(0)
    head = CameraHead(64, num_heads=2, trunk_depth=2)
    tok = torch.randn(1, 3, 64)
    plain = head(tok)[-1]
    cond = head(tok, trunk_temb=torch.randn(1, 6, 64))[-1]
    assert cond.shape == plain.shape and not torch.allclose(cond, plain)
    official = CameraHead(64, num_heads=2, trunk_depth=2, time_layout="official")
    assert official(tok)[-1].shape == (1, 9, 9)


# ------------------------------------------------------------------------------ activations


def test_activations() -> None:
    y = torch.tensor([-2.0, 0.0, 1.5])
    torch.testing.assert_close(inverse_log_transform(y), torch.sign(y) * (torch.exp(y.abs()) - 1))
    vals, conf = activate_head(torch.randn(2, 4, 5, 6), "inv_log", "expp1")
    assert vals.shape == (2, 5, 6, 3) and conf.shape == (2, 5, 6) and (conf > 1).all()
    pose = activate_pose(torch.full((1, 2, 9), -1.0))
    assert (pose[..., :7] == -1).all() and (pose[..., 7:] == 0).all()


# ----------------------------------------------------------------- official key layout (meta)


def test_depth_and_point_head_keys_match_official_14b() -> None:
    with torch.device("meta"):
        depth, points = DPTHead.depth(2048), DPTHead.points(2048)
    assert _shapes(depth) == _manifest("vggt.depth_head.")
    assert _shapes(points) == _manifest("vggt.point_head.")


def test_camera_head_keys_match_official_14b() -> None:
    with torch.device("meta"):
        head = CameraHead(2048)
    assert _shapes(head) == _manifest("vggt.camera_head.")


def test_geo_block_keys_match_official_frame_and_irg_global_blocks() -> None:
    with torch.device("meta"):
        block = GeoBlock(1024, 16, mlp_ratio=4, qk_norm=True, init_values=0.01, modulated=True)
    assert _shapes(block) == _manifest("vggt.aggregator.frame_blocks.0.")
    assert _shapes(block) == _manifest("IRGBlock.0.x_agg.")


# ------------------------------------------------------------------------------- GeoBlock


def test_geo_block_halves_compose_to_forward_and_follow_official_modulation() -> None:
    torch.manual_seed(0)
    block = GeoBlock(32, 4, qk_norm=True, init_values=0.5)
    b, s, length = 2, 3, 7
    x = torch.randn(b * s, length, 32)  # frame layout (B*S, P, D)
    temb6 = torch.randn(b, 6, 32)
    out = block(x, temb6)
    mod = block.modulation_terms(temb6, x.shape[0])
    torch.testing.assert_close(block.ffn_half(block.attention_half(x, mod), mod), out)
    # explicit official formula, temb repeated per frame (batch-major)
    e = (block.modulation + temb6.repeat_interleave(s, dim=0)).chunk(6, dim=1)
    h = x + block.ls1(block.attn(block.norm1(x) * (1 + e[1]) + e[0]))
    ref = h + block.ls2(block.mlp(block.norm2(h)) * (1 + e[4]) + e[3]) * e[5]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # without temb6 it is a plain pre-norm block
    plain = x + block.ls1(block.attn(block.norm1(x)))
    plain = plain + block.ls2(block.mlp(block.norm2(plain)))
    torch.testing.assert_close(block(x), plain, atol=1e-5, rtol=1e-5)
    assert GeoBlock(32, 4, modulated=False).modulation is None


# ---------------------------------------------------------------------------------- RoPE


def test_rope_scores_invariant_to_shifting_both_positions() -> None:
    torch.manual_seed(0)
    rope = Rope2D(100)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    pq, pk = torch.tensor([[3, 7]]), torch.tensor([[5, 2]])
    base = (rope(q, pq) * rope(k, pk)).sum(-1)
    for shift in ([1, 0], [0, 4], [6, 9]):
        s = torch.tensor([shift])
        shifted = (rope(q, pq + s) * rope(k, pk + s)).sum(-1)
        torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)
    moved = (rope(q, pq + torch.tensor([[0, 1]])) * rope(k, pk)).sum(-1)
    assert not torch.allclose(moved, base)


def test_rope_leaves_special_tokens_unrotated() -> None:
    pos = frame_positions(2, 3, num_special=5)
    assert pos.shape == (11, 2)
    assert (pos[:5] == 0).all() and pos[5].tolist() == [1, 1] and pos[-1].tolist() == [2, 3]
    t = torch.randn(2, 4, 11, 8)
    rotated = Rope2D(100).bind(pos, head_dim=8)(t)
    torch.testing.assert_close(rotated[:, :, :5], t[:, :, :5])
    assert not torch.allclose(rotated[:, :, 5:], t[:, :, 5:])


def test_geo_block_accepts_rope_for_frame_and_global_layouts() -> None:
    torch.manual_seed(0)
    block = GeoBlock(32, 2)
    pos = frame_positions(2, 2)  # (9, 2)
    rope = Rope2D(100)
    x_frame = torch.randn(3, 9, 32)  # (B*S, P, D)
    assert block(x_frame, rope=rope.bind(pos, 16)).shape == x_frame.shape
    x_global = torch.randn(1, 27, 32)  # (B, S*P, D), positions tiled per frame
    assert block(x_global, rope=rope.bind(pos.repeat(3, 1), 16)).shape == x_global.shape


def test_field_of_view_relu_keeps_its_gradient() -> None:
    """The fields of view are ``relu``'s values (bit for bit) but a negative raw value still gets
    the loss's gradient: with the plain ``relu`` a field of view stuck below 0 stayed 0."""
    from fantasyworld.heads.activations import relu_passing_gradient

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 9, generator=g).to(dtype)
        assert torch.equal(activate_pose(x)[..., 7:], torch.relu(x[..., 7:]))
        assert torch.equal(relu_passing_gradient(x), torch.relu(x))
    raw = torch.full((1, 2, 9), -1.0, requires_grad=True)
    fov = activate_pose(raw)[..., 7:]
    ((fov - 1.1) ** 2).sum().backward()  # target 63 degrees
    assert (raw.grad[..., 7:] < 0).all()  # gradient descent raises the raw value towards it
    assert (raw.grad[..., :7] == 0).all()


@pytest.mark.parametrize("raw_start", [-3.0, 0.5])
def test_camera_head_learns_a_field_of_view_that_starts_below_zero(raw_start: float) -> None:
    """A camera head whose raw fields of view start below 0 for every input (``relu`` gives 0,
    the state a demo run ended in) learns them on the camera loss as one starting above 0
    does. Threshold: the ground truth is 1.1 rad; after 150 Adam steps both end within 0.1 of
    it, where with the plain ``relu`` the first stayed at exactly 0."""
    from fantasyworld.heads.losses import camera_loss_terms

    torch.manual_seed(0)
    head = CameraHead(dim_in=32, trunk_depth=1, num_heads=2, temporal_upsample=False)
    with torch.no_grad():
        head.pose_branch.fc2.bias[7:] = raw_start
        head.pose_branch.fc2.weight[7:] = 0.0
    tokens = torch.randn(2, 3, 32)
    w2c = torch.eye(4).expand(2, 3, 4, 4).clone()
    focal = 16 / (2 * torch.tan(torch.tensor(0.55)))  # fov 1.1 rad on 16 pixels
    k = torch.tensor([[focal, 0, 8], [0, focal, 8], [0, 0, 1]]).expand(2, 3, 3, 3)
    opt = torch.optim.Adam(head.parameters(), lr=3e-2)
    for _ in range(150):
        loss = camera_loss_terms(head(tokens, num_iterations=2), w2c, k, (16, 16))["loss_FL"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fov = head(tokens, num_iterations=2)[-1][..., 7:]
    assert (fov - 1.1).abs().max() < 0.1, fov
