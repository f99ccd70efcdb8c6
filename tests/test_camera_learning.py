"""The camera path learns from its input: a guard against an input-independent camera head.

Four synthetic clips with different motions (a sideways slide without rotation, a turn in
place, a dolly with a turn, an orbit)
are encoded with the shipped tiny VAE and run through the tiny preset on the shipped tiny
backbone at a low noise level (sigma 0.05, "clean inputs"). Stage 1 is trained on the
camera loss alone, full batch, for a fixed number of steps. A camera head whose output does
not depend on its input predicts one trajectory for all four clips: its mean relative
rotation error then stays near the identity baseline's (it can at best predict the clips'
mean motion), and the four predictions coincide. Both are asserted against.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fantasyworld.data.synth import render_clip
from fantasyworld.demo import ASSETS
from fantasyworld.eval.metrics import pairwise_pose_errors, rotation_angle_deg
from fantasyworld.geometry.pose_encoding import decode_pose
from fantasyworld.models import encoders
from fantasyworld.models.config import get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.flow_matching import add_noise, sigma_to_timestep
from fantasyworld.models.wan_loading import load_wan_transformer
from fantasyworld.training.losses import compute_losses

MOTIONS = ("pan", "turn", "dolly_turn", "orbit")
FRAMES, SIZE, SIGMA = 9, 32, 0.05
STEPS = 150


def _clips() -> dict[str, torch.Tensor]:
    clips = [render_clip(seed=0, index=i, num_frames=FRAMES, height=SIZE, width=SIZE, trajectory=kind)
             for i, kind in enumerate(MOTIONS)]
    video = torch.stack([torch.from_numpy(c.frames).permute(3, 0, 1, 2) for c in clips]).float() / 127.5 - 1.0
    intr = torch.from_numpy(np.stack([np.broadcast_to(c.K, (FRAMES, 3, 3)) for c in clips])).float()
    return {
        "video": video,  # (4, 3, T, H, W)
        "depth": torch.from_numpy(np.stack([c.depth for c in clips])),
        "points": torch.from_numpy(np.stack([c.points for c in clips])),
        "valid": torch.from_numpy(np.stack([np.isfinite(c.depth) & (c.depth > 0) for c in clips])),
        "w2c": torch.from_numpy(np.stack([c.w2c for c in clips])).float(),
        "intrinsics": intr,
    }


def _rotation_errors(w2c_pred: torch.Tensor, w2c_gt: torch.Tensor) -> np.ndarray:
    """Mean pairwise relative rotation error (degrees) per clip."""
    return np.array([pairwise_pose_errors(p.double().numpy(), g.double().numpy())[0].mean()
                     for p, g in zip(w2c_pred, w2c_gt)])


@pytest.mark.slow
def test_camera_head_follows_the_motion_of_its_input(one_thread):
    torch.manual_seed(0)
    batch = _clips()
    vae = encoders.load_vae(ASSETS / "vae")
    text_model, tokenizer = encoders.tiny_text_encoder(d_model=32)
    with torch.no_grad():
        x0 = encoders.encode_video(vae, batch["video"])
        text, _ = encoders.encode_text(text_model, tokenizer, ["a room"] * len(MOTIONS))
    config = get_preset("tiny")
    wan = load_wan_transformer(ASSETS / "backbone", torch.float32, "cpu", expected_config=config.wan)
    model = FantasyWorldModel(config, transformer=wan).set_stage(1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    sigma = torch.full((len(MOTIONS),), SIGMA)
    gen = torch.Generator().manual_seed(0)
    gt = {k: batch[k] for k in ("depth", "points", "valid", "w2c", "intrinsics")}

    def forward() -> dict:
        noise = torch.randn(x0.shape, generator=gen)
        return model(add_noise(x0, noise, sigma), sigma_to_timestep(sigma), text, stage=1, heads=("camera",))

    for _ in range(STEPS):
        terms = compute_losses(forward(), gt, stage=1)
        opt.zero_grad()
        terms["objective"].backward()
        opt.step()

    model.eval()
    with torch.no_grad():
        pose_enc = forward()["pose_enc"]
    w2c_pred, _ = decode_pose(pose_enc.double(), (SIZE, SIZE))
    identity = torch.eye(4, dtype=torch.float64).expand_as(w2c_pred)
    err = _rotation_errors(w2c_pred, batch["w2c"])
    err_identity = _rotation_errors(identity, batch["w2c"])
    # The identity baseline errs by the clips' own rotations (0-34 degrees here). Measured:
    # the camera path fits the four clips to about 3 degrees (0.13 of the baseline); the
    # same training with the camera head fed the batch-mean token (input-independent)
    # stays at 1.02 of the baseline. 0.4 leaves room for platform round-off and still
    # fails an input-independent head.
    assert err.mean() < 0.4 * err_identity.mean(), (err, err_identity)
    # The four predicted trajectories differ: the last frame's rotation relative to frame 0
    # follows the ground truth's (0 for the slide, tens of degrees for the others), not one
    # shared curve; an input-independent head gives 0 degrees between every pair.
    rel = w2c_pred[:, -1, :3, :3] @ w2c_pred[:, 0, :3, :3].transpose(-1, -2)
    rel_gt = batch["w2c"][:, -1, :3, :3].double() @ batch["w2c"][:, 0, :3, :3].double().transpose(-1, -2)
    pairwise = [rotation_angle_deg((rel[i].T @ rel[j]).numpy()) for i in range(4) for j in range(i + 1, 4)]
    pairwise_gt = [rotation_angle_deg((rel_gt[i].T @ rel_gt[j]).numpy()) for i in range(4) for j in range(i + 1, 4)]
    assert max(pairwise) > 0.5 * max(pairwise_gt), (pairwise, pairwise_gt)
