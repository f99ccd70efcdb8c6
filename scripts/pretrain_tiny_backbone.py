"""Pretrain the tiny VAE and the tiny Wan backbone that ``fantasyworld demo`` loads.

Why: the seeded *random* tiny VAE maps a clip to latents whose content varies by ~0.05
around a constant (after Wan's latent normalisation), so a noise level of 0.1 already
drowns the picture, and its random decoder and random DiT turn any latent into noise. The
demo's geometry and video only mean something on top of a VAE and a backbone that were
trained on the kind of video they see. This script trains both, on synthetic worlds
(:mod:`fantasyworld.data.synth`) rendered from seeds that the demo never uses, and writes

``OUT/vae/``        ``AutoencoderKLWan`` (tiny: base_dim 8, Wan's 4x8x8 compression, 16 latent
                    channels), ``latents_mean`` / ``latents_std`` set to the statistics of its
                    own latents so that normalised latents have unit variance;
``OUT/backbone/``   ``WanTransformer3DModel`` of the ``tiny`` preset (``WAN_TINY``), a
                    text-to-video flow-matching DiT conditioned on the seeded tiny UMT5
                    (``encoders.tiny_text_encoder(0)``; frozen and random, like the demo's);
``OUT/pretrain.json`` the settings, losses and timings of the run;

both in diffusers' ``save_pretrained`` layout (config.json + safetensors). No geometry label
is used here: depth, points and cameras are learnt by the demo's stage 1 and stage 2.

Recipe (defaults): 4000 clips of 9 frames at 32x32 (seed 7919, clip indices 0..3999; the
demo renders with seeds 0 and 1); VAE: 3000 AdamW steps, batch 32, lr 1e-3, loss
L1 + MSE + 1e-6 KL on posterior samples; backbone: 6000 AdamW steps, batch 64, lr 1e-3
(cosine to 1e-4, 200 warm-up), flow matching with Wan's shift 5 and its velocity target, 10%
of prompts replaced by the empty prompt (classifier-free guidance), EMA 0.999 of the weights
saved. Run on one GPU::

    python scripts/pretrain_tiny_backbone.py --out fantasyworld/assets/tiny --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fantasyworld.data.synth import render_clip
from fantasyworld.models import encoders
from fantasyworld.models.config import WAN_TINY
from fantasyworld.models.flow_matching import add_noise, flow_target, sample_training_sigmas, sigma_to_timestep
from fantasyworld.models.wan_backbone import build_wan_transformer

PRETRAIN_SEED = 7919


def _render(args: tuple[int, int, int, int]) -> tuple[np.ndarray, str]:
    index, frames, height, width = args
    clip = render_clip(PRETRAIN_SEED, index, frames, height, width)
    return clip.frames, clip.prompt


def render_worlds(num_clips: int, frames: int, height: int, width: int, workers: int) -> tuple[torch.Tensor, list[str]]:
    """``(N, 3, T, H, W)`` uint8 clips and their prompts."""
    jobs = [(i, frames, height, width) for i in range(num_clips)]
    with mp.get_context("fork").Pool(workers) as pool:
        out = pool.map(_render, jobs, chunksize=16)
    video = torch.from_numpy(np.stack([o[0] for o in out])).permute(0, 4, 1, 2, 3).contiguous()
    return video, [o[1] for o in out]


def _to_float(video_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return video_u8.to(device).float().div_(127.5).sub_(1.0)


def train_vae(video: torch.Tensor, args: argparse.Namespace, device: torch.device, log: dict) -> torch.nn.Module:
    """Autoencoder training of the tiny ``AutoencoderKLWan`` (module docstring)."""
    vae = encoders.tiny_vae(args.seed).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    losses = []
    for step in range(args.vae_steps):
        idx = torch.randint(0, len(video), (args.vae_batch,), generator=gen)
        first = int(torch.randint(0, video.shape[2] - args.vae_frames + 1, (1,), generator=gen))
        x = _to_float(video[idx, :, first:first + args.vae_frames], device)  # (B, 3, vae_frames, H, W)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn_like(post.mean)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == args.vae_steps - 1:
            print(f"vae step {step}: loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    log["vae"] = {"steps": args.vae_steps, "final_loss": float(np.mean(losses[-100:])),
                  "seconds": time.perf_counter() - start}
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def calibrate_vae(vae, video: torch.Tensor, device: torch.device, log: dict) -> torch.Tensor:
    """Set ``latents_mean`` / ``latents_std`` to the per-channel statistics of the posterior
    means; returns the normalised latents ``(N, 16, F, h, w)`` on the CPU."""
    raw = torch.cat([vae.encode(_to_float(video[i:i + 256], device)).latent_dist.mean.cpu()
                     for i in range(0, len(video), 256)])
    mean = raw.mean(dim=(0, 2, 3, 4))
    std = raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])
    rec = vae.decode(raw[:64].to(device)).sample
    psnr = -10 * math.log10(float(F.mse_loss((rec + 1) / 2, (_to_float(video[:64], device) + 1) / 2)))
    log["vae"].update(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std],
                      reconstruction_psnr_db=psnr)
    print(f"vae: reconstruction PSNR {psnr:.1f} dB on 64 training clips", flush=True)
    return (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)


@torch.no_grad()
def encode_prompts(prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny-UMT5 embeddings ``(N, 512, 32)`` of the prompts and ``(1, 512, 32)`` of ``""``."""
    te, tok = encoders.tiny_text_encoder(0)
    te = te.to(device)
    embs = torch.cat([encoders.encode_text(te, tok, prompts[i:i + 256])[0].cpu() for i in range(0, len(prompts), 256)])
    empty = encoders.encode_text(te, tok, [""])[0].cpu()
    return embs, empty


def train_backbone(latents: torch.Tensor, text: torch.Tensor, empty: torch.Tensor, args: argparse.Namespace,
                   device: torch.device, log: dict) -> torch.nn.Module:
    """Flow-matching text-to-video training of the tiny Wan DiT (module docstring)."""
    torch.manual_seed(args.seed)
    model = build_wan_transformer(WAN_TINY, device).train()
    ema = build_wan_transformer(WAN_TINY, device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.dit_lr, weight_decay=0.01)
    warm = 200

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = (step - warm) / max(1, args.dit_steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed + 1)
    latents, text, empty = latents.to(device), text.to(device), empty.to(device)
    start = time.perf_counter()
    losses = []
    for step in range(args.dit_steps):
        idx = torch.randint(0, len(latents), (args.dit_batch,), generator=gen).to(device)
        x0 = latents[idx]
        ctx = text[idx]
        drop = (torch.rand(args.dit_batch, generator=gen) < args.cfg_dropout).to(device)
        ctx = torch.where(drop[:, None, None], empty.expand_as(ctx), ctx)
        sigma = sample_training_sigmas(args.dit_batch, gen, args.shift).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        pred = model(add_noise(x0, noise, sigma), sigma_to_timestep(sigma), ctx, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), flow_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - args.ema)
        losses.append(loss.item())
        if step % 500 == 0 or step == args.dit_steps - 1:
            print(f"backbone step {step}: flow loss {np.mean(losses[-100:]):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    log["backbone"] = {"steps": args.dit_steps, "final_flow_loss": float(np.mean(losses[-200:])),
                       "seconds": time.perf_counter() - start}
    return ema


@torch.no_grad()
def sample_preview(backbone, vae, text: torch.Tensor, device: torch.device, path: Path, steps: int = 30) -> None:
    """Euler samples (shift 5, no CFG) for 4 prompts, decoded, saved as one PNG strip."""
    from PIL import Image

    from fantasyworld.models.flow_matching import euler_step, inference_sigmas

    gen = torch.Generator().manual_seed(0)
    t_lat = 3
    x = torch.randn((4, 16, t_lat, 4, 4), generator=gen).to(device)
    ctx = text[:4].to(device)
    sig = inference_sigmas(steps, 5.0).to(device)
    for i in range(steps):
        v = backbone(x, sigma_to_timestep(sig[i].expand(4)), ctx, return_dict=False)[0]
        x = euler_step(x, v, sig[i], sig[i + 1])
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    video = vae.decode(x * std + mean).sample  # (4, 3, T, H, W)
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()
    rows = [np.concatenate(list(clip), axis=1) for clip in frames]
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (rows[0].shape[1] * 3, len(rows) * rows[0].shape[0] * 3), Image.Resampling.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="fantasyworld/assets/tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clips", type=int, default=4000)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--workers", type=int, default=max(1, mp.cpu_count()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-frames", type=int, default=5, help="4k+1 frames per VAE training sub-clip")
    p.add_argument("--dit-steps", type=int, default=6000)
    p.add_argument("--dit-batch", type=int, default=64)
    p.add_argument("--dit-lr", type=float, default=1e-3)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--preview", default=None, help="write a PNG of decoded samples here")
    args = p.parse_args()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {"args": vars(args), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "pretrain_seed": PRETRAIN_SEED}
    t0 = time.perf_counter()
    video, prompts = render_worlds(args.clips, args.frames, args.size, args.size, args.workers)
    log["render_seconds"] = time.perf_counter() - t0
    print(f"rendered {len(video)} clips {tuple(video.shape[1:])} in {log['render_seconds']:.0f} s", flush=True)
    vae = train_vae(video, args, device, log)
    latents = calibrate_vae(vae, video, device, log)
    text, empty = encode_prompts(prompts, device)
    backbone = train_backbone(latents, text, empty, args, device, log)
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    backbone.to("cpu").save_pretrained(out / "backbone", safe_serialization=True)
    log["total_seconds"] = time.perf_counter() - t0
    (out / "pretrain.json").write_text(json.dumps(log, indent=1) + "\n")
    if args.preview:
        sample_preview(backbone.to(device), vae.to(device), text, device, Path(args.preview))
    print(f"wrote {out} in {log['total_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
