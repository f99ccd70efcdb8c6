"""Where camera learning stops: stage-1 geometry on cached latents, with controls.

Renders (once) ``--clips`` synthetic worlds, splits them with the evaluation's hash split,
encodes every clip once with the shipped tiny VAE, and trains one learner on the training
worlds; held-out and training worlds are scored at the end (and every ``--eval-every``
steps) with the evaluation's own metrics against its trivial baselines: relative rotation
error vs identity poses, depth AbsRel (median-aligned) vs constant depth, translation
direction vs identity.

Learners (``--learner``):

* ``fantasyworld``: the ``tiny`` preset (``--preset``) on the shipped tiny backbone (``--assets``:
  another VAE and backbone, e.g. a ``benchmarks/learn_gpu.py`` run's with ``--preset small``), stage 1, the project's
  losses (``compute_losses``), AdamW with warmup and a constant or cosine schedule;
  ``--camera-input ground-truth`` replaces the camera head's input tokens by a fixed random
  projection of the ground-truth encodings of each latent frame's pixel frames (a control:
  it measures what the camera head and its loss can do when the information is present);
  ``--camera-input patches`` adds that projection to every patch token of each latent frame at
  the latent bridge instead (a control of the whole path: frame and global attention must carry
  it from the patches into the camera tokens);
  ``--camera-only`` drops the depth and point losses; ``--depth-input patches`` adds a fixed
  random projection of the ground-truth depth at token resolution to every patch token (the
  depth path's control); ``--backbone random`` freezes a randomly initialised tiny backbone in
  place of the pretrained one; ``--alpha`` sets the confidence regulariser of the depth and point
  losses;
* ``mlp``: a two-layer MLP from the whole clip's latents (or pixels, ``--mlp-input pixels``)
  straight to the quaternions relative to frame 0 (a control: can a generic learner
  generalise relative rotation from this data at all?);
* ``shift``: no learning, the yaw read from the horizontal image shift between consecutive
  frames (:class:`ShiftEstimator`; a control of what the pixels carry: right for pure turns);
* ``cnn``: a small convolutional network on pixel pairs (frame 0, frame i) stacked as 6
  channels, one quaternion relative to frame 0 per pair (a control with the inductive bias
  of optical flow: translation-equivariant features compared across the two frames);
* ``depth-cnn``: a small convolutional U-Net, one frame at a time, from the frame's pixels, the
  VAE's decoding of its latents, or its latent frame (``--depth-source``) to log depth relative to
  the clip's median (:class:`DepthCnnLearner`; a control of where depth is lost: in the frames,
  in the VAE, or in reading it from tokens; its poses are the identity).

Runs on a CPU or one GPU. One JSON per run (``--out/NAME.json``) with the settings, the
curves and the final scores; docs/evaluation.md#camera-learning has the measured table.

    python benchmarks/camera_probe.py --name base --clips 400 --steps 1500
    python benchmarks/camera_probe.py --name control --camera-input ground-truth --schedule cosine
    python benchmarks/camera_probe.py --name mlp --learner mlp --steps 2000
    python benchmarks/camera_probe.py --name cnn --learner cnn --steps 2000 --batch 32 --lr 1e-3
    python benchmarks/camera_probe.py --name depth --learner depth-cnn --depth-source latents --size 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fantasyworld.data.loader import RawClipDataset, collate
from fantasyworld.data.split import split_clip_ids
from fantasyworld.data.synth import synthesize_dataset
from fantasyworld.demo import ASSETS
from fantasyworld.eval.baselines import TOKEN_PIXELS
from fantasyworld.eval.evaluate import baseline_prediction, score_clip
from fantasyworld.geometry.pose_encoding import decode_pose, encode_pose, relative_to_first
from fantasyworld.heads.losses import CAMERA_LOSS_TYPES
from fantasyworld.models import encoders
from fantasyworld.models.config import VAE_TEMPORAL_STRIDE, FantasyWorldConfig, get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.flow_matching import add_noise, sample_training_sigmas, sigma_to_timestep
from fantasyworld.models.geometry_branch import group_by_latent_frame
from fantasyworld.models.wan_loading import load_wan_transformer
from fantasyworld.training.losses import compute_losses
from fantasyworld.training.lr_schedule import lr_multiplier

GT_KEYS = ("depth", "points", "valid", "w2c", "intrinsics")
EVAL_SIGMA = 0.05
DEPTH_SOURCES = ("pixels", "decoded", "latents", "thumbnail")
LOG_DEPTH_BOUND = 8.0  # the depth-cnn's predictions, in log units from its clip's scale


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="run")
    p.add_argument("--out", default="camera_probe_out")
    p.add_argument("--worlds-dir", default=None, help="where the rendered worlds live (default: beside --out)")
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--learner", choices=("fantasyworld", "mlp", "cnn", "shift", "depth-cnn"), default="fantasyworld")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--sigma", default="shift:0.5", help="'shift:S' (training schedule) or 'fixed:SIGMA'")
    p.add_argument("--grad-clip", type=float, default=1.0, help="0: off")
    p.add_argument("--camera-weight", type=float, default=3.0)
    p.add_argument("--camera-loss", choices=CAMERA_LOSS_TYPES, default="huber",
                   help="the camera loss's penalty (loss.camera_loss); the mlp/cnn learners' too")
    p.add_argument("--trajectories", default="", help="comma-separated trajectory families to render "
                   "(default: the seeded mix of all); a separate worlds folder per choice")
    p.add_argument("--camera-input", choices=("model", "ground-truth", "patches"), default="model")
    p.add_argument("--camera-only", action="store_true")
    p.add_argument("--backbone", choices=("pretrained", "random"), default="pretrained",
                   help="random: the tiny Wan backbone at its seeded initialisation instead of the shipped "
                        "pretrained one (a control: what the backbone's pretraining gives the geometry)")
    p.add_argument("--depth-input", choices=("model", "patches"), default="model",
                   help="patches: add a fixed random projection of the ground-truth depth, averaged over each "
                        "token's cell, to every patch token at the latent bridge (a control of the depth path)")
    p.add_argument("--alpha", type=float, default=0.2,
                   help="weight of the depth and point losses' -log C term (loss.alpha; VGGT's 0.2); at 0 the "
                        "confidence is driven to its floor 1 and the losses become plain regressions")
    p.add_argument("--mlp-input", choices=("latents", "pixels"), default="latents")
    p.add_argument("--depth-source", choices=DEPTH_SOURCES, default="pixels",
                   help="the depth-cnn learner's input: the frame's pixels, the VAE's decoding of the clip's "
                        "latents (what the VAE keeps, as pixels), the latent frame itself (noised as --sigma "
                        "in training, at sigma 0.05 when scored, as the model's latents), or a code with no "
                        "learning in the latents' place: the mean colour of each 8x8 cell of the latent frame's "
                        "4 pixel frames (12 channels)")
    p.add_argument("--depth-width", type=int, default=16, help="the depth-cnn U-Net's first width (doubled per level)")
    p.add_argument("--depth-frames", type=int, default=0,
                   help="pixels/decoded depth-cnn: train on this many random frames of each clip of a batch (0: all)")
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N training worlds only")
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--eval-clips", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="tiny", help="the model preset (default tiny, the demo's)")
    p.add_argument("--assets", default=str(ASSETS),
                   help="folder with the pretrained vae/ and backbone/ (default: the shipped tiny ones; e.g. a "
                        "learn_gpu run's assets/ with --preset small)")
    p.add_argument("--model", default="", metavar="KEY=VALUE,...",
                   help="fields of the preset's model config to change for this probe, e.g. "
                        "num_register_tokens=0,geo_layerscale_init=0.1 (values read as YAML)")
    args = p.parse_args(argv)
    needs = ["vae"] + (["backbone"] if args.learner == "fantasyworld" and args.backbone == "pretrained" else [])
    for part in needs:  # refused before any world is rendered
        if not (Path(args.assets) / part).is_dir():
            p.error(f"--assets {args.assets}: {Path(args.assets) / part} is missing (a folder with vae/ and backbone/)")
    return args


class ClipSet:
    """Every clip of a split on the device: latents, text, ground truth, the raw video."""

    def __init__(self, ds: RawClipDataset, indices: list[int], vae, text_model, tokenizer, device,
                 decode: bool = False) -> None:
        batch = collate([ds[i] for i in indices])
        with torch.no_grad():
            self.latents = torch.cat([encoders.encode_video(vae, batch["video"][i:i + 64].to(device))
                                      for i in range(0, len(indices), 64)])
            self.text = torch.cat([encoders.encode_text(text_model, tokenizer, batch["prompt"][i:i + 64])[0]
                                   for i in range(0, len(indices), 64)]).to(device)
            # the VAE's reconstruction of each clip (B, 3, T, H, W), for the depth-cnn's "decoded" source
            self.decoded = (torch.cat([encoders.decode_video(vae, self.latents[i:i + 64]).clamp(-1, 1)
                                       for i in range(0, len(indices), 64)]) if decode else None)
        self.video = batch["video"].to(device)
        self.gt = {k: batch[k].to(device) for k in GT_KEYS}
        self.size = len(indices)

    def select(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.gt.items()}


def token_log_depth(depth: torch.Tensor, valid: torch.Tensor, cell: int) -> torch.Tensor:
    """Log ground-truth depth relative to each clip's median (:func:`clip_relative_log_depth`),
    averaged over each token's ``cell x cell`` pixels (valid ones) and grouped by latent frame as
    the VAE groups frames (:func:`group_pixel_frames`): ``(B, T, H, W)``, ``T = 4k + 1`` ->
    ``(B * (k + 1), h * w, 4)``."""
    mask = valid.float()
    log_d = clip_relative_log_depth(depth, valid)
    pooled = torch.nn.functional.avg_pool2d(log_d, cell) / torch.nn.functional.avg_pool2d(mask, cell).clamp_min(1e-6)
    h, w = pooled.shape[-2:]
    grouped = group_pixel_frames(pooled)  # (B, k + 1, 4, h, w)
    return grouped.flatten(3).transpose(2, 3).reshape(-1, h * w, VAE_TEMPORAL_STRIDE)


def group_pixel_frames(x: torch.Tensor) -> torch.Tensor:
    """Pixel-rate ``(B, T, ...)``, ``T = 4k + 1`` -> ``(B, k + 1, 4, ...)``: the 4 pixel frames of
    each latent frame, grouped causally as the VAE groups them (latent frame 0 <- pixel frame 0
    four times, latent frame ``j >= 1`` <- pixel frames ``4j-3 .. 4j``; the same grouping as
    :func:`group_by_latent_frame`, for any trailing shape)."""
    stride = VAE_TEMPORAL_STRIDE
    frames = torch.cat([x[:, :1].expand(-1, stride, *x.shape[2:]), x[:, 1:]], dim=1)
    return frames.unflatten(1, (frames.shape[1] // stride, stride))


def pose_targets(gt: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
    """Ground-truth ``absT_quaR_FoV`` encodings relative to frame 0, ``(B, T, 9)``."""
    return encode_pose(relative_to_first(gt["w2c"]), gt["intrinsics"], image_hw)


def score(pred_w2c: torch.Tensor, pred_depth: torch.Tensor | None, gt: dict[str, torch.Tensor]) -> list[dict]:
    """Per-clip ``(model, baseline)`` scores with the evaluation's metrics."""
    rows = []
    for i in range(pred_w2c.shape[0]):
        g = {"depth": gt["depth"][i].double().cpu().numpy(), "valid": gt["valid"][i].cpu().numpy(),
             "w2c": gt["w2c"][i].double().cpu().numpy(), "points": gt["points"][i].double().cpu().numpy(),
             "intrinsics": gt["intrinsics"][i].double().cpu().numpy()}
        pred: dict[str, Any] = {"w2c": pred_w2c[i].double().cpu().numpy()}
        base = baseline_prediction(g)
        base.pop("world_points")
        if pred_depth is not None:
            pred["depth"] = pred_depth[i].double().cpu().numpy()
        else:
            base.pop("depth")
        rows.append((score_clip(pred, g), score_clip(base, g)))
    return rows


def summarise(rows: list[tuple[dict, dict]]) -> dict[str, float]:
    def mean(which: int, key: str) -> float:
        return float(np.nanmean([r[which][key] for r in rows])) if key in rows[0][which] else float("nan")

    out = {"rot_err": mean(0, "rot_err"), "rot_err_identity": mean(1, "rot_err")}
    out["rotation_ratio"] = out["rot_err_identity"] / out["rot_err"]
    out["translation_ratio"] = mean(1, "trans_err") / mean(0, "trans_err")
    if "abs_rel_median" in rows[0][0]:
        out["abs_rel"] = mean(0, "abs_rel_median")
        out["depth_ratio"] = mean(1, "abs_rel_median") / out["abs_rel"]
    return out


def model_config(changes: str, preset: str = "tiny") -> FantasyWorldConfig:
    """The preset with ``changes`` (``key=value,...``, YAML values) applied; an unknown
    field or a value the config rejects raises ``SystemExit`` with the field named."""
    config = get_preset(preset)
    names = {f.name for f in dataclasses.fields(config)}
    updates = {}
    for item in filter(None, changes.split(",")):
        key, _, raw = item.partition("=")
        if key not in names or not raw:
            raise SystemExit(f"--model {item!r}: expected KEY=VALUE with KEY a field of the model config")
        updates[key] = yaml.safe_load(raw)
    try:
        config = dataclasses.replace(config, **updates)
        config.validate()  # what get_preset checks of a preset, checked of the changed one
        return config
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--model {changes!r}: {err}") from err


class FantasyWorldLearner:
    """The tiny preset's stage 1 with the project's losses (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        config = model_config(args.model, args.preset)
        if args.backbone == "random":
            torch.manual_seed(args.seed)
            self.model = FantasyWorldModel(config).to(device).set_stage(1)
        else:
            wan = load_wan_transformer(Path(args.assets) / "backbone", torch.float32, "cpu",
                                       expected_config=config.wan)
            self.model = FantasyWorldModel(config, transformer=wan).to(device).set_stage(1)
        self.model.train()
        self.args, self.device = args, device
        self.hw = (args.size, args.size)
        self.gt_tokens: torch.Tensor | None = None
        if args.camera_input == "ground-truth":
            head = self.model.geometry.camera_head
            width = head.token_norm.normalized_shape[0]
            proj = torch.randn(36, width, generator=torch.Generator().manual_seed(args.seed)).to(device)

            def replace_tokens(_module, inputs):
                return (group_by_latent_frame(self.gt_tokens) @ proj,) + tuple(inputs[1:])

            head.register_forward_pre_hook(replace_tokens)
        elif args.camera_input == "patches":
            width = self.model.geometry.config.geo_dim
            pose_proj = torch.randn(36, width, generator=torch.Generator().manual_seed(args.seed)).to(device)
            # every patch token of a latent frame: that frame's 4 pose encodings, (B*F, 1, D)
            self._add_to_patches(lambda: (group_by_latent_frame(self.gt_tokens) @ pose_proj).reshape(-1, 1, width))
        if args.depth_input == "patches":
            # each patch token: the log depth of its cell in the latent frame's 4 pixel frames
            # (:func:`token_log_depth`), (B*F, h*w, D): what the depth heads give when the depth at
            # token resolution is in the tokens they read
            depth_proj = torch.randn(VAE_TEMPORAL_STRIDE, self.model.geometry.config.geo_dim,
                                     generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
            self._add_to_patches(lambda: self.gt_token_depth @ depth_proj)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _add_to_patches(self, signal) -> None:
        """Wrap the geometry branch's latent bridge so that ``signal()`` (broadcastable to its
        patch tokens, ``(B*F, h*w, D)``) is added to every patch token, the camera and register
        tokens left as they are (the ``patches`` controls)."""
        branch = self.model.geometry
        bridge = branch.bridge

        def bridge_with_signal(video_tokens, grid, camera_pose_enc=None):
            tokens = bridge(video_tokens, grid, camera_pose_enc)  # (B*F, P, D)
            start = branch.patch_start_idx
            return torch.cat([tokens[:, :start], tokens[:, start:] + signal().to(tokens.dtype)], dim=1)

        branch.bridge = bridge_with_signal

    def forward(self, clips: ClipSet, idx: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> dict:
        gt = clips.select(idx)
        self.gt_tokens = pose_targets(gt, self.hw)
        if self.args.depth_input == "patches":
            self.gt_token_depth = token_log_depth(gt["depth"], gt["valid"], TOKEN_PIXELS)
        noise = torch.randn(clips.latents[idx].shape, generator=gen).to(self.device)
        latents = add_noise(clips.latents[idx], noise, sigma)
        heads = ("camera",) if self.args.camera_only else ("depth", "points", "camera")
        return self.model(latents, sigma_to_timestep(sigma), clips.text[idx], stage=1, heads=heads)

    def loss(self, clips: ClipSet, idx: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = self.forward(clips, idx, sigma, gen)
        return compute_losses(out, clips.select(idx), stage=1, camera_weight=self.args.camera_weight,
                              camera_loss=self.args.camera_loss, alpha=self.args.alpha)["objective"]

    @torch.no_grad()
    def predict(self, clips: ClipSet, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        out = self.forward(clips, idx, torch.full((len(idx),), EVAL_SIGMA, device=self.device), gen)
        self.model.train()
        w2c, _ = decode_pose(out["pose_enc"].double(), self.hw)
        return w2c, out.get("depth")


class MlpLearner:
    """Latents (or pixels) of the whole clip -> quaternions relative to frame 0."""

    def __init__(self, args: argparse.Namespace, device: torch.device, clips: ClipSet) -> None:
        self.args, self.device, self.hw = args, device, (args.size, args.size)
        width = self._inputs(clips, torch.arange(1, device=device)).shape[1]
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width, 512), torch.nn.GELU(), torch.nn.Dropout(0.2),
            torch.nn.Linear(512, 512), torch.nn.GELU(), torch.nn.Linear(512, args.frames * 4),
        ).to(device)
        self.params = list(self.net.parameters())

    def _inputs(self, clips: ClipSet, idx: torch.Tensor) -> torch.Tensor:
        x = clips.latents[idx] if self.args.mlp_input == "latents" else clips.video[idx]
        return x.flatten(1)

    def _quats(self, clips: ClipSet, idx: torch.Tensor) -> torch.Tensor:
        """Predicted quaternions relative to frame 0, ``(B, T, 4)``."""
        return self.net(self._inputs(clips, idx)).view(len(idx), -1, 4)

    def loss(self, clips: ClipSet, idx: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        target = pose_targets(clips.select(idx), self.hw)[..., 3:7]
        if self.args.camera_loss == "l1":
            return torch.nn.functional.l1_loss(self._quats(clips, idx), target)
        return torch.nn.functional.smooth_l1_loss(self._quats(clips, idx), target)

    @torch.no_grad()
    def predict(self, clips: ClipSet, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, None]:
        self.net.eval()
        quat = self._quats(clips, idx)
        self.net.train()
        enc = torch.zeros(*quat.shape[:2], 9, device=quat.device)
        enc[..., 3:7] = quat
        enc[..., 7:] = 1.0
        return decode_pose(enc.double(), self.hw)[0], None


class CnnLearner(MlpLearner):
    """Pixel pairs (frame 0, frame i) -> quaternion of frame i relative to frame 0 (the loss
    and the decoding are the MLP's)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, clips: ClipSet) -> None:
        self.args, self.device, self.hw = args, device, (args.size, args.size)
        nn = torch.nn
        self.net = nn.Sequential(
            nn.Conv2d(6, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4),
        ).to(device)
        self.params = list(self.net.parameters())

    def _quats(self, clips: ClipSet, idx: torch.Tensor) -> torch.Tensor:
        video = clips.video[idx]  # (B, 3, T, H, W)
        b, _, t, h, w = video.shape
        first = video[:, :, :1].expand(-1, -1, t, -1, -1)
        pairs = torch.cat([first, video], dim=1).permute(0, 2, 1, 3, 4).reshape(b * t, 6, h, w)
        identity = torch.tensor([0.0, 0.0, 0.0, 1.0], device=video.device)
        return (self.net(pairs) + identity).view(b, t, 4)


class ShiftEstimator:
    """No learning: the yaw read from image shifts (a control of what the pixels carry).

    For each pair of consecutive frames, the horizontal shift ``s`` (integer pixels, at least a
    quarter of the width overlapping) that maximises the normalised cross-correlation of the
    grey images; the yaw between them is ``atan(s / fx)``, summed from frame 0. It models a
    camera that only turns about its vertical axis, so it is right for ``turn`` clips and wrong
    wherever a translation also shifts the image (pan, dolly, orbit, arc)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, clips: ClipSet) -> None:
        self.args, self.device, self.hw = args, device, (args.size, args.size)
        self.params: list[torch.nn.Parameter] = []

    @staticmethod
    def _shift(a: torch.Tensor, b: torch.Tensor) -> int:
        """Shift ``s`` with ``b[:, x] ~ a[:, x + s]`` of grey images ``(H, W)``."""
        width = a.shape[1]
        best, arg = -float("inf"), 0
        for s in range(-(width - width // 4), width - width // 4 + 1):
            x, y = (a[:, s:], b[:, :width - s]) if s >= 0 else (a[:, :width + s], b[:, -s:])
            x, y = x - x.mean(), y - y.mean()
            score = float((x * y).mean() / (x.std() * y.std() + 1e-6))
            if score > best:
                best, arg = score, s
        return arg

    @torch.no_grad()
    def predict(self, clips: ClipSet, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, None]:
        grey = clips.video[idx].mean(1).double().cpu()  # (B, T, H, W)
        fx = clips.gt["intrinsics"][idx][:, 0, 0, 0].double().cpu()
        b, t = grey.shape[:2]
        w2c = torch.eye(4, dtype=torch.float64).repeat(b, t, 1, 1)
        for i in range(b):
            yaw = 0.0
            for k in range(1, t):
                yaw += math.atan(self._shift(grey[i, k - 1], grey[i, k]) / float(fx[i]))
                c, s = math.cos(yaw), math.sin(yaw)
                w2c[i, k, :3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        return w2c, None


def clip_medians(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median of each clip's valid entries, ``(B, ...)`` -> ``(B,)`` (0 for a clip with none)."""
    return torch.stack([v[m].median() if m.any() else v.new_zeros(()) for v, m in zip(values, valid.bool())])


def clip_relative_log_depth(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``log depth`` minus its median over each clip's valid pixels, ``(B, T, H, W)`` (0 where
    invalid): the target of a learner scored after the evaluation's per-clip median alignment."""
    log_d = torch.log(depth.clamp_min(1e-6))
    return (log_d - clip_medians(log_d, valid)[:, None, None, None]) * valid


def thumbnail_code(video: torch.Tensor, cell: int) -> torch.Tensor:
    """A code of the latents' shape with no learning: video ``(B, 3, T, H, W)`` -> the mean colour
    of each ``cell x cell`` block of each pixel frame, the 4 pixel frames of each latent frame side
    by side as channels (:func:`group_pixel_frames`: latent frame 0 holds pixel frame 0 four times),
    ``(B, 12, F, H / cell, W / cell)``, ``T = 4(F - 1) + 1``."""
    pooled = torch.nn.functional.avg_pool3d(video, (1, cell, cell)).transpose(1, 2)  # (B, T, 3, h, w)
    grouped = group_pixel_frames(pooled).flatten(2, 3)  # (B, F, 4 * 3, h, w), sub-frame-major
    return grouped.transpose(1, 2)


class UNet(torch.nn.Module):
    """A plain convolutional U-Net: ``(N, C_in, H, W)`` -> ``(N, C_out, H * 2**up, W * 2**up)``.

    ``levels`` resolutions (width ``width * 2**l`` at level ``l``, each below the first reached
    by a stride-2 convolution), skip connections by concatenation, then ``up`` extra bilinear
    x2 stages after the decoder (for inputs below the output resolution, such as latents)."""

    def __init__(self, c_in: int, c_out: int, width: int, levels: int, up: int = 0) -> None:
        super().__init__()
        nn = torch.nn

        def block(a: int, b: int, stride: int = 1) -> nn.Module:
            return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1), nn.GroupNorm(min(8, b), b), nn.GELU(),
                                 nn.Conv2d(b, b, 3, 1, 1), nn.GroupNorm(min(8, b), b), nn.GELU())

        widths = [width * 2**level for level in range(levels)]
        self.down = nn.ModuleList([block(c_in, widths[0])] + [block(widths[i - 1], widths[i], 2)
                                                               for i in range(1, levels)])
        self.up = nn.ModuleList([block(widths[i] + widths[i - 1], widths[i - 1]) for i in range(levels - 1, 0, -1)])
        self.extra = nn.ModuleList([block(widths[0], widths[0]) for _ in range(up)])
        self.out = nn.Conv2d(widths[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        interp = torch.nn.functional.interpolate
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        for stage, skip in zip(self.up, reversed(skips[:-1])):
            x = stage(torch.cat([interp(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        for stage in self.extra:
            x = stage(interp(x, scale_factor=2, mode="bilinear", align_corners=False))
        return self.out(x)


class DepthCnnLearner:
    """One frame at a time -> log depth relative to the clip's median, L1 on valid pixels.

    ``--depth-source pixels`` / ``decoded``: the pixel frame ``(3, H, W)`` (the video, or the
    VAE's reconstruction of it) through a 4-level U-Net at ``H x W``; ``latents``: each latent
    frame ``(16, H/8, W/8)`` through a 2-level U-Net at the latent resolution and three x2 stages
    to ``H x W``, 4 output maps for the latent frame's 4 pixel frames (latent frame 0 holds pixel
    frame 0 alone: its first map is used; the VAE's causal grouping). Latents are noised as the
    model's are (``--sigma`` in training, ``EVAL_SIGMA`` when scored). ``thumbnail``: the latent
    path on :func:`thumbnail_code` instead of the latents. The poses it returns are the identity:
    only its depth is a measurement."""

    def __init__(self, args: argparse.Namespace, device: torch.device, clips: ClipSet) -> None:
        self.args, self.device, self.hw = args, device, (args.size, args.size)
        self.source = args.depth_source
        self.cell = args.size // clips.latents.shape[-1]  # pixels per latent cell (the VAE's 8)
        if self.source in ("latents", "thumbnail"):
            up = int(math.log2(self.cell))
            c_in = clips.latents.shape[1] if self.source == "latents" else 3 * VAE_TEMPORAL_STRIDE
            self.net = UNet(c_in, VAE_TEMPORAL_STRIDE, args.depth_width * 2, 2, up).to(device)
        else:
            self.net = UNet(3, 1, args.depth_width, 4).to(device)
        self.params = list(self.net.parameters())

    def _log_depth(self, clips: ClipSet, idx: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator,
                   frames: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted log depth (up to the clip's scale), ``(B, T, H, W)``; with ``frames`` (B, K)
        (pixel sources only) the prediction for those frames only, ``(B, K, H, W)``."""
        b, t = len(idx), self.args.frames
        if self.source in ("latents", "thumbnail"):
            if self.source == "latents":
                latents = clips.latents[idx]
                noise = torch.randn(latents.shape, generator=gen).to(self.device)
                x = add_noise(latents, noise, sigma)  # (B, 16, F, h, w)
            else:
                x = thumbnail_code(clips.video[idx], self.cell)  # (B, 12, F, h, w)
            f = x.shape[2]
            maps = self.net(x.permute(0, 2, 1, 3, 4).flatten(0, 1)).view(b, f, VAE_TEMPORAL_STRIDE, *self.hw)
            return torch.cat([maps[:, 0, :1], maps[:, 1:].flatten(1, 2)], dim=1)
        video = clips.video[idx] if self.source == "pixels" else clips.decoded[idx]  # (B, 3, T, H, W)
        if frames is not None:
            video = video[torch.arange(b, device=video.device)[:, None], :, frames].transpose(1, 2)
            t = frames.shape[1]
        return self.net(video.permute(0, 2, 1, 3, 4).flatten(0, 1)).view(b, t, *self.hw)

    def loss(self, clips: ClipSet, idx: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        gt = clips.select(idx)
        frames = None
        if self.args.depth_frames and self.source in ("pixels", "decoded"):
            # K random frames of each clip, (B, K); medians are then those frames'
            frames = torch.rand(len(idx), self.args.frames, generator=gen).argsort(1)[:, :self.args.depth_frames]
            frames = frames.to(self.device)
        pred = self._log_depth(clips, idx, sigma, gen, frames)
        if frames is not None:
            rows = torch.arange(len(idx), device=self.device)[:, None]
            gt = {k: gt[k][rows, frames] for k in ("depth", "valid")}
        target = clip_relative_log_depth(gt["depth"], gt["valid"])
        valid = gt["valid"].float()
        # the prediction's own clip median removed too: the loss is invariant to the clip's scale
        pred = pred - clip_medians(pred.detach(), gt["valid"])[:, None, None, None]
        residual = (pred - target).abs() * valid
        return residual.sum() / valid.sum().clamp_min(1.0)

    @torch.no_grad()
    def predict(self, clips: ClipSet, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        # the loss leaves each clip's offset free: centred on the clip's median, then bounded to
        # e^+-8 of it (an unbounded output on an unseen input would overflow in float32)
        log_depth = self._log_depth(clips, idx, torch.full((len(idx),), EVAL_SIGMA, device=self.device), gen)
        log_depth = log_depth - log_depth.flatten(1).median(1).values[:, None, None, None]
        depth = log_depth.clamp(-LOG_DEPTH_BOUND, LOG_DEPTH_BOUND).exp()
        self.net.train()
        w2c = torch.eye(4, dtype=torch.float64, device=self.device).repeat(len(idx), self.args.frames, 1, 1)
        return w2c, depth


LEARNERS = {"mlp": MlpLearner, "cnn": CnnLearner, "shift": ShiftEstimator, "depth-cnn": DepthCnnLearner}


def evaluate(learner, clips: ClipSet, limit: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    rows = []
    for start in range(0, min(limit, clips.size), 16):
        idx = torch.arange(start, min(start + 16, limit, clips.size), device=clips.latents.device)
        w2c, depth = learner.predict(clips, idx, gen)
        rows += score(w2c, depth, clips.select(idx))
    return summarise(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    families = [t for t in args.trajectories.split(",") if t]
    worlds = Path(args.worlds_dir or out / "worlds") / "x".join(
        [str(args.clips), str(args.frames), str(args.size)] + (["+".join(families)] if families else []))
    if not (worlds / "metadata.json").is_file():
        synthesize_dataset(worlds, num_clips=args.clips, num_frames=args.frames, height=args.size,
                           width=args.size, seed=0, progress=True, trajectories=families or None)
    torch.manual_seed(args.seed)
    ds = RawClipDataset(worlds, num_frames=args.frames, height=args.size, width=args.size)
    ids = [r.clip_id for r in ds.records]
    train_ids, held_ids = split_clip_ids(ids, 0.2)
    where = {c: i for i, c in enumerate(ids)}
    train_idx = [where[c] for c in train_ids][: args.train_subset or None]
    vae = encoders.load_vae(Path(args.assets) / "vae").to(device)
    text_model, tokenizer = encoders.tiny_text_encoder(d_model=32)
    text_model = text_model.to(device)
    decode = args.learner == "depth-cnn" and args.depth_source == "decoded"
    train = ClipSet(ds, train_idx, vae, text_model, tokenizer, device, decode)
    held = ClipSet(ds, [where[c] for c in held_ids], vae, text_model, tokenizer, device, decode)
    learner = (FantasyWorldLearner(args, device) if args.learner == "fantasyworld"
               else LEARNERS[args.learner](args, device, train))

    if not learner.params:  # an estimator: nothing to train
        args.steps = 0
    opt = torch.optim.AdamW(learner.params or [torch.nn.Parameter(torch.zeros(1))], lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(args.schedule, 20, args.steps))
    gen = torch.Generator().manual_seed(args.seed)
    kind, value = args.sigma.split(":")
    curves, t0 = [], time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, train.size, (args.batch,), generator=gen).to(device)
        if kind == "fixed":
            sigma = torch.full((args.batch,), float(value))
        else:
            sigma = sample_training_sigmas(args.batch, gen, float(value))
        loss = learner.loss(train, idx, sigma.to(device), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(learner.params, args.grad_clip)
        opt.step()
        sched.step()
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            curves.append({"step": step + 1, "loss": loss.item(), "train": evaluate(learner, train, 32),
                           "held_out": evaluate(learner, held, args.eval_clips)})
            print(args.name, json.dumps(curves[-1]), flush=True)
    result = {"settings": vars(args), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "train_worlds": train.size, "held_out_worlds": held.size, "time_s": time.perf_counter() - t0,
              "curves": curves, "train": evaluate(learner, train, 32),
              "held_out": evaluate(learner, held, args.eval_clips)}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(args.name, json.dumps({k: result[k] for k in ("time_s", "train", "held_out")}), flush=True)
    return result


if __name__ == "__main__":
    main()
