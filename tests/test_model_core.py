"""Core model invariants on the tiny presets (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from fantasyworld.geometry.plucker import plucker_rays
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel


def make_inputs(model: FantasyWorldModel, batch: int = 2, frames: int = 9, hw: tuple[int, int] = (32, 48)):
    """Seeded inputs for ``frames`` pixel frames at ``hw`` pixels."""
    cfg = model.config
    f = (frames - 1) // 4 + 1
    h8, w8 = hw[0] // 8, hw[1] // 8
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 16, f, h8, w8, generator=g)
    timestep = torch.tensor([700.0, 150.0][:batch])
    text_len = 512 if cfg.is_i2v else 7
    text = torch.randn(batch, text_len, cfg.wan["text_dim"], generator=g)
    # a camera moving forward and turning: a real Plucker map
    t = torch.arange(frames, dtype=torch.float32)
    w2c = torch.eye(4).repeat(batch, frames, 1, 1)
    ang = 0.05 * t
    w2c[:, :, 0, 0] = torch.cos(ang)
    w2c[:, :, 0, 2] = torch.sin(ang)
    w2c[:, :, 2, 0] = -torch.sin(ang)
    w2c[:, :, 2, 2] = torch.cos(ang)
    w2c[:, :, 2, 3] = -0.1 * t
    K = torch.tensor([[40.0, 0, hw[1] / 2], [0, 40.0, hw[0] / 2], [0, 0, 1]]).repeat(batch, frames, 1, 1)
    kwargs = {"plucker": plucker_rays(w2c, K, hw[0], hw[1])}
    if cfg.is_i2v:
        kwargs["cond_latent"] = torch.randn(batch, 20, f, h8, w8, generator=g)
        kwargs["image_emb"] = torch.randn(batch, 257, cfg.wan["image_dim"], generator=g)
    return latents, timestep, text, kwargs


@pytest.fixture(scope="module", params=["tiny", "tiny-i2v"])
def model(request) -> FantasyWorldModel:
    torch.manual_seed(0)
    return FantasyWorldModel(get_preset(request.param)).eval()


def test_identity_at_init_matches_plain_wan(model: FantasyWorldModel) -> None:
    """Fresh interaction modules and adapters leave the video prediction unchanged.

    Tolerance 1e-5 (fp32): the only differences allowed are summation-order effects; in
    practice the block-by-block driver reproduces diffusers exactly.
    """
    latents, timestep, text, kw = make_inputs(model)
    with torch.no_grad():
        out = model(latents, timestep, text, **kw, stage=2)
        wan_in = torch.cat([latents, kw["cond_latent"]], 1) if model.config.is_i2v else latents
        ref = model.transformer(wan_in, timestep, text, kw.get("image_emb"), return_dict=False)[0]
    assert out["flow"].shape == ref.shape
    assert (out["flow"] - ref).abs().max().item() <= 1e-5
    # the camera conditioning really ran: the adapters' inputs are non-trivial
    feat = model.encode_camera(kw["plucker"])
    assert feat.abs().sum() > 0


def test_camera_adapter_changes_video_once_trained(model: FantasyWorldModel) -> None:
    """Guard against a dead adapter path: a non-zero last layer must change the flow."""
    latents, timestep, text, kw = make_inputs(model)
    adapter = next(iter(model.camera_adapters.values()))
    last = adapter.v_proj.group2[-1]
    with torch.no_grad():
        base = model(latents, timestep, text, **kw, heads=None)["flow"]
        last.weight.normal_(std=0.1)
        moved = model(latents, timestep, text, **kw, heads=None)["flow"]
        last.weight.zero_()
    assert (moved - base).abs().max() > 1e-4


@pytest.mark.parametrize("frames", [1, 5, 9, 81])
def test_output_shapes(frames: int) -> None:
    model = FantasyWorldModel(get_preset("tiny")).eval()
    hw = (32, 48) if frames < 81 else (16, 16)
    latents, timestep, text, kw = make_inputs(model, batch=1, frames=frames, hw=hw)
    with torch.no_grad():
        out = model(latents, timestep[:1], text, **kw)
    b, (H, W) = 1, hw
    assert out["flow"].shape == latents.shape
    assert out["depth"].shape == (b, frames, H, W)
    assert out["depth_conf"].shape == (b, frames, H, W)
    assert out["world_points"].shape == (b, frames, H, W, 3)
    assert out["world_points_conf"].shape == (b, frames, H, W)
    assert out["pose_enc"].shape == (b, frames, 9)
    assert len(out["pose_enc_list"]) == model.config.camera_head_iters
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all()


def _geometry_loss(out: dict) -> torch.Tensor:
    """A loss touching every head output (values and confidences)."""
    loss = out["depth"].mean() + out["depth_conf"].mean() + out["world_points"].mean()
    loss = loss + out["world_points_conf"].mean()
    loss = loss + sum(p.square().mean() for p in out["pose_enc_list"])
    if out["flow"] is not None:
        loss = loss + out["flow"].square().mean()
    return loss


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_exactness_gradients(stage: int) -> None:
    """After one backward, exactly the stage's trainable parameters have gradients.

    Zero-initialised gates (gammas, adapter output layers) would block gradients to the
    modules behind them, so like a real first step we take one SGD step on everything
    trainable first, then check a second backward: every trainable parameter must get a
    non-zero gradient and no frozen parameter may get one.
    """
    torch.manual_seed(0)
    model = FantasyWorldModel(get_preset("tiny")).train().set_stage(stage)
    latents, timestep, text, kw = make_inputs(model, batch=1)
    params = [p for _, p in model.trainable_named_parameters()]
    opt = torch.optim.SGD(params, lr=1e-2)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        _geometry_loss(model(latents, timestep[:1], text, **kw, stage=stage)).backward()
        if _ == 0:
            opt.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient in stage {stage}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient in stage {stage}"
    trainable = {n.split(".")[0] for n, _ in model.trainable_named_parameters()}
    assert trainable == ({"geometry"} if stage == 1 else {"geometry", "interactions", "pose_encoder",
                                                          "camera_adapters"})
    assert not any(n.startswith("transformer.") for n, _ in model.trainable_named_parameters())


def test_stage1_skips_irg_wan_blocks_and_head() -> None:
    """Instrumented: stage 1 runs the PCB Wan blocks only and never the output head."""
    model = FantasyWorldModel(get_preset("tiny")).eval()
    calls: dict[str, int] = {}

    def counter(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1
        return hook

    for i, blk in enumerate(model.transformer.blocks):
        blk.attn1.to_q.register_forward_hook(counter(f"block{i}"))  # once per self-attention
    model.transformer.proj_out.register_forward_hook(counter("head"))
    latents, timestep, text, kw = make_inputs(model, batch=1)
    with torch.no_grad():
        out1 = model(latents, timestep[:1], text, **kw, stage=1)
    pcb = model.config.num_pcb
    assert out1["flow"] is None
    assert calls == {f"block{i}": 1 for i in range(pcb)}
    calls.clear()
    with torch.no_grad():
        out2 = model(latents, timestep[:1], text, **kw, stage=2)
    assert calls == {**{f"block{i}": 1 for i in range(model.config.num_wan_blocks)}, "head": 1}
    # with fresh (zero) gates, stage 1 geometry equals stage 2 geometry exactly
    assert torch.allclose(out1["depth"], out2["depth"], atol=1e-6)
    assert torch.allclose(out1["pose_enc"], out2["pose_enc"], atol=1e-6)


@pytest.mark.parametrize("stage", [1, 2])
def test_trainable_weights_round_trip(tmp_path, stage: int) -> None:
    """Saving the stage's trainable weights and loading them into a fresh model
    (different random init) restores identical outputs."""
    torch.manual_seed(0)
    src = FantasyWorldModel(get_preset("tiny")).eval().set_stage(stage)
    with torch.no_grad():  # make every saved tensor non-trivial, including zero-init gates
        for _, p in src.trainable_named_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / f"stage{stage}.safetensors"
    src.save_fantasyworld(path, stage=stage)
    torch.manual_seed(123)
    dst = FantasyWorldModel(get_preset("tiny")).eval()
    dst.transformer.load_state_dict(src.transformer.state_dict())
    if stage == 1:  # stage-2-only modules are not in a stage-1 checkpoint: copy them
        for name in ("interactions", "pose_encoder", "camera_adapters"):
            getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
    dst.load_fantasyworld(path, stage=stage)
    latents, timestep, text, kw = make_inputs(src, batch=1)
    with torch.no_grad():
        a = src(latents, timestep[:1], text, **kw, stage=2)
        b = dst(latents, timestep[:1], text, **kw, stage=2)
    for key in ("flow", "depth", "world_points", "pose_enc"):
        assert torch.equal(a[key], b[key]), key


def test_load_names_missing_and_unexpected_keys(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from fantasyworld.errors import CheckpointError

    model = FantasyWorldModel(get_preset("tiny"))
    path = tmp_path / "s1.safetensors"
    model.save_fantasyworld(path, stage=1)
    state = load_file(str(path))
    state.pop("geometry.camera_token")
    state["geometry.not_a_module.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match=r"missing keys: geometry\.camera_token") as err:
        model.load_fantasyworld(bad, stage=1)
    assert "geometry.not_a_module.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        model.load_fantasyworld(tmp_path / "nope.safetensors", stage=1)
