"""Pretrain a VAE and a Wan backbone for the ``tiny`` preset (the demo's) or the ``small`` one.

Why: the seeded *random* tiny VAE maps a clip to latents whose content varies by ~0.05
around a constant (after Wan's latent normalisation), so a noise level of 0.1 already
drowns the picture, and its random decoder and random DiT turn any latent into noise. The
geometry and video only mean something on top of a VAE and a backbone that were trained on
the kind of video they see. This script trains both, on synthetic worlds
(:mod:`fantasyworld.data.synth`) rendered from seeds that the demo never uses, or on the
videos of a seed-layout dataset (``--data``: e.g. the training split of a run), and writes

``OUT/vae/``        ``AutoencoderKLWan`` (Wan's 4x8x8 compression, 16 latent channels, the
                    preset's ``base_dim``), ``latents_mean`` / ``latents_std`` set to the
                    statistics of its own latents so that normalised latents have unit variance;
``OUT/backbone/``   ``WanTransformer3DModel`` of the preset (its ``wan`` config), a
                    text-to-video flow-matching DiT conditioned on the seeded tiny UMT5
                    (``encoders.tiny_text_encoder(0)``; frozen and random, like the demo's);
``OUT/pretrain.json`` the settings, losses, steps, timings and what stopped each phase, and
                    how much the backbone reads its prompt (``prompt_dependence``: flow MSE
                    with each clip's own prompt, another clip's and the empty one);

both in diffusers' ``save_pretrained`` layout (config.json + safetensors), which the trainer
(``model.backbone_dir``), the cache (``--vae``) and the pipeline load. No geometry label is
used here: depth, points and cameras are learnt by stages 1 and 2. ``--vae DIR`` takes an
earlier run's VAE (its latent statistics re-measured on these clips) and trains the backbone only.

Recipes (:data:`RECIPES`, the defaults of every flag; flags override them):

* ``tiny``: 4000 clips of 9 frames at 32x32 (seed 7919; the demo renders with seeds 0 and 1),
  VAE base_dim 8: 3000 AdamW steps, batch 32, lr 1e-3; backbone: 6000 steps, batch 64, lr 1e-3;
* ``small``: 4000 clips of 17 frames at 128x128, VAE base_dim 16 (0.8M parameters): at most
  3000 steps or 45 s, batch 16; backbone (25M parameters): at most 6000 steps or 60 s, batch
  64, lr 6e-4; bf16 autocast on a GPU. A minute and three quarters of training on one H200.

Both VAEs have the tiny layout (``--vae-dim-mult 1,2,2,2``, ``--vae-res-blocks 1``); Wan2.1's
(``1,2,4,4`` with 2 blocks) is a flag away (docs/evaluation.md, "Where depth is lost", measures both).

Common to both: VAE loss L1 + MSE + 1e-6 KL on posterior samples of whole clips (``--vae-frames``:
sub-clips of 4k+1 frames instead; the causal VAE codes frame 0 alone, then 4 frames per latent
frame with a temporal cache of the frames before, so sub-clips of 5 frames never train the latent
frames after the second: after 500 steps at 32x32 the third reconstructed 5-6 dB worse than
the first two, and at 128x128 with 17 frames the fourth and fifth 7-10 dB worse, docs/benchmarks.md);
backbone flow matching with Wan's shift 5 and its velocity target, 10% of prompts replaced
by the empty prompt (classifier-free guidance), EMA 0.999 of the weights (warmed up as
``min(0.999, (1 + k) / (10 + k))`` at step ``k``) saved. The learning rate follows a warm-up
(4% of the run) and a cosine to 10% over the run's *progress*, the larger of the step
fraction and the wall-clock fraction (``--vae-seconds``, ``--dit-seconds``), so a phase
stopped by its time budget still ends decayed. Run on one GPU::

    python scripts/pretrain_tiny_backbone.py --out fantasyworld/assets/tiny --device cuda
    python scripts/pretrain_tiny_backbone.py --preset small --out outputs/small_assets --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fantasyworld.data.synth import render_clip
from fantasyworld.models import encoders
from fantasyworld.models.config import VAE_TEMPORAL_STRIDE, get_preset
from fantasyworld.models.flow_matching import add_noise, flow_target, sample_training_sigmas, sigma_to_timestep
from fantasyworld.models.inputs import to_device
from fantasyworld.models.wan_backbone import build_wan_transformer

PRETRAIN_SEED = 7919


@dataclass(frozen=True)
class PretrainRecipe:
    """Defaults of one preset's pretraining (every field is also a flag). ``*_seconds``:
    wall-clock budget of a phase (None: steps only)."""

    clips: int
    frames: int
    size: int
    vae_base_dim: int
    vae_steps: int
    vae_batch: int
    vae_lr: float
    dit_steps: int
    dit_batch: int
    dit_lr: float
    vae_seconds: float | None = None
    dit_seconds: float | None = None


#: preset name -> its recipe (module docstring)
RECIPES: dict[str, PretrainRecipe] = {
    "tiny": PretrainRecipe(clips=4000, frames=9, size=32, vae_base_dim=8, vae_steps=3000, vae_batch=32,
                           vae_lr=1e-3, dit_steps=6000, dit_batch=64, dit_lr=1e-3),
    "small": PretrainRecipe(clips=4000, frames=17, size=128, vae_base_dim=16, vae_steps=3000, vae_batch=16,
                            vae_lr=1e-3, dit_steps=6000, dit_batch=64, dit_lr=6e-4, vae_seconds=45.0,
                            dit_seconds=60.0),
}
WARMUP = 0.04  # share of a run's progress spent warming the learning rate up


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


def _read(args: tuple[str, int, int]) -> np.ndarray:
    from fantasyworld.data.formats import read_video

    path, frames, size = args
    video = torch.from_numpy(read_video(Path(path), np.arange(frames))).permute(3, 0, 1, 2)  # (3, T, H, W)
    if video.shape[-2:] != (size, size):  # scale to cover, centre crop
        h, w = video.shape[-2:]
        scale = size / min(h, w)
        video = F.interpolate(video.float(), size=(max(size, round(h * scale)), max(size, round(w * scale))),
                              mode="bilinear", antialias=True).round().clamp(0, 255).byte()
        top, left = (video.shape[-2] - size) // 2, (video.shape[-1] - size) // 2
        video = video[..., top:top + size, left:left + size]
    return video.numpy()


def read_worlds(root: str | Path, num_clips: int, frames: int, size: int, workers: int
                ) -> tuple[torch.Tensor, list[str]]:
    """The first ``num_clips`` videos of a seed-layout dataset: ``(N, 3, T, size, size)`` uint8
    (the first ``frames`` frames, scaled to cover and centre-cropped) and their prompts."""
    from fantasyworld.data.formats import load_metadata

    records = load_metadata(root)[:num_clips]
    jobs = [(str(r.video), frames, size) for r in records]
    with mp.get_context("fork").Pool(workers) as pool:
        out = pool.map(_read, jobs, chunksize=16)
    return torch.from_numpy(np.stack(out)), [r.prompt for r in records]


def resident_or_pinned(video_u8: torch.Tensor, device: torch.device, share: float = 0.25) -> torch.Tensor:
    """The clips ``(N, 3, T, H, W)`` uint8 on the GPU when they take at most ``share`` of its
    free memory (every batch is then gathered there: no host copy per step), else in pinned
    host memory (each gathered batch copied asynchronously)."""
    free, _ = torch.cuda.mem_get_info(device)
    if video_u8.numel() * video_u8.element_size() <= share * free:
        return video_u8.to(device)
    return video_u8.pin_memory()


def _to_float(video_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    # a gathered batch is pageable even when the clips are pinned: pinned first, so the copy
    # does not make the host wait for the device
    return to_device(video_u8, device, pin=True).float().div_(127.5).sub_(1.0)


def _autocast(device: torch.device, cache: bool = True):
    """bf16 autocast on a GPU, nothing on the CPU (``cache=False`` inside a CUDA graph)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


class _VAEPass(torch.nn.Module):
    """One autoencoder pass as a module of tensors, ``x -> (reconstruction, mean, var, logvar)``
    (fp32), with a posterior sample in between: what ``--cuda-graphs`` captures."""

    def __init__(self, vae: torch.nn.Module, graphed: bool) -> None:
        super().__init__()
        self.vae, self.graphed = vae, graphed

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with _autocast(x.device, cache=not self.graphed):
            post = self.vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn_like(post.mean)
            rec = self.vae.decode(z).sample.float()
        return rec, post.mean.float(), post.var.float(), post.logvar.float()


class _FlowPass(torch.nn.Module):
    """The backbone's velocity prediction as a module of tensors (what ``--cuda-graphs`` captures)."""

    def __init__(self, model: torch.nn.Module, graphed: bool) -> None:
        super().__init__()
        self.model, self.graphed = model, graphed

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with _autocast(x_t.device, cache=not self.graphed):
            return self.model(x_t, timestep, context, return_dict=False)[0]


def _graphed(module: torch.nn.Module, sample: tuple[torch.Tensor, ...], on: bool) -> Any:
    """``module`` itself, or (``--cuda-graphs``) its forward and backward captured as CUDA graphs
    (``torch.cuda.make_graphed_callables``: three warm-up passes that leave the weights and
    their gradients untouched, then every call replays; inputs of the sample's shapes only)."""
    return torch.cuda.make_graphed_callables(module, sample) if on else module


class Progress:
    """A phase's progress in [0, 1]: the larger of the step and the wall-clock fractions."""

    def __init__(self, steps: int, seconds: float | None) -> None:
        self.steps, self.seconds, self.start = steps, seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, step: int) -> float:
        by_time = self.elapsed() / self.seconds if self.seconds else 0.0
        return max(step / self.steps, by_time)

    def stopped_by(self, step: int) -> str:
        return "steps" if step >= self.steps else "time"


def lr_multiplier(progress: float, floor: float = 0.1) -> float:
    """Linear warm-up over :data:`WARMUP` of the progress, then a cosine down to ``floor``."""
    if progress < WARMUP:
        return max(progress / WARMUP, 0.01)
    p = min(1.0, (progress - WARMUP) / (1.0 - WARMUP))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _report(name: str, step: int, losses: list[torch.Tensor], progress: Progress) -> float:
    value = float(torch.stack(losses[-100:]).mean())  # one device synchronisation per report
    print(f"{name} step {step}: loss {value:.4f} ({progress.elapsed():.0f} s)", flush=True)
    return value


def train_vae(video: torch.Tensor, args: argparse.Namespace, device: torch.device, log: dict) -> torch.nn.Module:
    """Autoencoder training of the VAE (module docstring)."""
    vae = encoders.tiny_vae(args.seed, base_dim=args.vae_base_dim, dim_mult=args.vae_dim_mult,
                            num_res_blocks=args.vae_res_blocks).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    progress = Progress(args.vae_steps, args.vae_seconds)
    losses: list[torch.Tensor] = []
    step = 0
    vae_pass = None  # built at the first batch (a graph needs its shapes)
    while progress(step) < 1.0:
        for group in opt.param_groups:
            group["lr"] = args.vae_lr * lr_multiplier(progress(step))
        idx = to_device(torch.randint(0, len(video), (args.vae_batch,), generator=gen), video.device, pin=True)
        first = int(torch.randint(0, video.shape[2] - args.vae_frames + 1, (1,), generator=gen))
        x = _to_float(video[idx, :, first:first + args.vae_frames], device)  # (B, 3, vae_frames, H, W)
        if vae_pass is None:
            vae_pass = _graphed(_VAEPass(vae, args.cuda_graphs), (x,), args.cuda_graphs)
        rec, mean, var, logvar = vae_pass(x)
        kl = 0.5 * (mean.pow(2) + var - 1.0 - logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
        step += 1
        if step % 500 == 1:
            _report("vae", step, losses, progress)
    log["vae"] = {"steps": step, "stopped_by": progress.stopped_by(step), "base_dim": args.vae_base_dim,
                  "dim_mult": list(args.vae_dim_mult), "num_res_blocks": args.vae_res_blocks,
                  "parameters": sum(p.numel() for p in vae.parameters()),
                  "final_loss": _report("vae", step, losses, progress), "seconds": progress.elapsed()}
    return vae.eval().requires_grad_(False)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two images or videos in [-1, 1], measured on [0, 1] (at most 120 dB)."""
    return -10 * math.log10(max(float(F.mse_loss((a.float() + 1) / 2, (b.float() + 1) / 2)), 1e-12))


def pooled_psnr_db(video: torch.Tensor, factor: int = 8) -> float:
    """PSNR (dB, on [0, 1]) of each frame of ``video`` ``(N, 3, T, H, W)`` in [-1, 1] against its
    ``factor`` x ``factor`` average-pooled thumbnail upsampled bilinearly: what a code with no
    learning, the mean colour of every cell of the VAE's spatial compression, reconstructs. A VAE
    of 16 channels per 8 x 8 x 4 cell can store those means (12 numbers) and more, so its own
    PSNR below this one says its latents are blurrier than a thumbnail."""
    frames = video.transpose(1, 2).flatten(0, 1).float()  # (N*T, 3, H, W)
    thumb = F.interpolate(F.avg_pool2d(frames, factor), size=frames.shape[-2:], mode="bilinear", align_corners=False)
    return psnr_db(thumb, frames)


def latent_frame_psnr_db(rec: torch.Tensor, target: torch.Tensor) -> list[float]:
    """PSNR (dB) of ``rec`` against ``target`` ``(N, 3, T, H, W)``, T = 4k+1, per latent frame's
    pixel frames: frame 0, then frames 1-4, 5-8, ... (the causal VAE's temporal groups)."""
    t, stride = rec.shape[2], VAE_TEMPORAL_STRIDE
    groups = [(0, 1)] + [(i, min(i + stride, t)) for i in range(1, t, stride)]
    return [psnr_db(rec[:, :, a:b], target[:, :, a:b]) for a, b in groups]


@torch.no_grad()
def calibrate_vae(vae, video: torch.Tensor, device: torch.device, log: dict) -> torch.Tensor:
    """Set ``latents_mean`` / ``latents_std`` to the per-channel statistics of the posterior
    means; returns the normalised latents ``(N, 16, F, h, w)`` on the CPU."""
    chunk = int(max(1, min(256, 2**22 // math.prod(video.shape[2:]))))  # clips per encoder call
    raw = torch.cat([vae.encode(_to_float(video[i:i + chunk], device)).latent_dist.mean.float().cpu()
                     for i in range(0, len(video), chunk)])
    mean = raw.mean(dim=(0, 2, 3, 4))
    std = raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])
    n = min(64, chunk, len(video))
    rec = vae.decode(raw[:n].to(device)).sample
    target = _to_float(video[:n], device)
    psnr = psnr_db(rec, target)
    pooled = pooled_psnr_db(target)
    by_latent = latent_frame_psnr_db(rec, target)
    log["vae"].update(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std],
                      reconstruction_psnr_db=psnr, pooled_psnr_db=pooled, psnr_db_by_latent_frame=by_latent)
    print(f"vae: reconstruction PSNR {psnr:.1f} dB on {n} training clips (8x pooled thumbnail: {pooled:.1f} dB); "
          f"by latent frame {' '.join(f'{v:.1f}' for v in by_latent)}", flush=True)
    return (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)


@torch.no_grad()
def encode_prompts(prompts: list[str], device: torch.device, text_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny-UMT5 embeddings ``(N, 512, text_dim)`` of the prompts and ``(1, 512, text_dim)`` of ``""``."""
    te, tok = encoders.tiny_text_encoder(0, d_model=text_dim)
    te = te.to(device)
    embs = torch.cat([encoders.encode_text(te, tok, prompts[i:i + 256])[0].cpu() for i in range(0, len(prompts), 256)])
    empty = encoders.encode_text(te, tok, [""])[0].cpu()
    return embs, empty


def train_backbone(latents: torch.Tensor, text: torch.Tensor, empty: torch.Tensor, wan_config: dict[str, Any],
                   args: argparse.Namespace, device: torch.device, log: dict) -> torch.nn.Module:
    """Flow-matching text-to-video training of the preset's Wan DiT (module docstring)."""
    torch.manual_seed(args.seed)
    model = build_wan_transformer(wan_config, device).train()
    ema = build_wan_transformer(wan_config, device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.dit_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed + 1)
    latents, text, empty = latents.to(device), text.to(device), empty.to(device)
    progress = Progress(args.dit_steps, args.dit_seconds)
    losses: list[torch.Tensor] = []
    step = 0
    flow_pass = None  # built at the first batch (a graph needs its shapes)
    while progress(step) < 1.0:
        for group in opt.param_groups:
            group["lr"] = args.dit_lr * lr_multiplier(progress(step))
        # host-drawn randomness (seeded), copied without making the host wait for the device
        idx = to_device(torch.randint(0, len(latents), (args.dit_batch,), generator=gen), device, pin=True)
        x0 = latents[idx]
        ctx = text[idx]
        drop = to_device(torch.rand(args.dit_batch, generator=gen) < args.cfg_dropout, device, pin=True)
        ctx = torch.where(drop[:, None, None], empty.expand_as(ctx), ctx)
        sigma = to_device(sample_training_sigmas(args.dit_batch, gen, args.shift), device, pin=True)
        noise = to_device(torch.randn(x0.shape, generator=gen), device, pin=True)
        x_t, timestep = add_noise(x0, noise, sigma), sigma_to_timestep(sigma)
        if flow_pass is None:
            flow_pass = _graphed(_FlowPass(model, args.cuda_graphs), (x_t, timestep, ctx), args.cuda_graphs)
        pred = flow_pass(x_t, timestep, ctx)
        loss = F.mse_loss(pred.float(), flow_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        losses.append(loss.detach())
        step += 1
        if step % 500 == 1:
            _report("backbone", step, losses, progress)
    log["backbone"] = {"steps": step, "stopped_by": progress.stopped_by(step),
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "final_flow_loss": _report("backbone", step, losses, progress), "seconds": progress.elapsed()}
    return ema


@torch.no_grad()
def prompt_dependence(backbone: torch.nn.Module, latents: torch.Tensor, text: torch.Tensor, empty: torch.Tensor,
                      device: torch.device, clips: int = 256, sigmas: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9),
                      seed: int = 0) -> dict[str, float]:
    """How much the backbone reads its prompt: the flow MSE of the first ``clips`` clips
    ``latents`` ``(N, 16, F, h, w)`` with their own prompt embeddings ``text`` ``(N, L, D)``, with
    the embedding of another clip whose prompt differs (the next one along with a different
    embedding), and with the empty prompt ``empty`` ``(1, L, D)``; the same noise and the noise
    levels ``sigmas`` for all three. ``other_over_own`` > 1 says the prompt is used (the synthetic
    prompts name the camera motion, what the geometry branch's camera head needs to see)."""
    n = min(clips, len(latents))
    x0, ctx = latents[:n].to(device), text[:n].to(device)
    flat = ctx.flatten(1)
    other = torch.empty(n, dtype=torch.long)
    for i in range(n):  # the nearest following clip whose prompt embedding differs
        other[i] = next((j % n for j in range(i + 1, i + n) if not torch.equal(flat[i], flat[j % n])), i)
    prompts = {"own": ctx, "other": ctx[other.to(device)], "empty": empty.to(device).expand_as(ctx)}
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(prompts, 0.0)
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=gen).to(device)
        sigma = torch.full((n,), s, device=device)
        x_t, timestep = add_noise(x0, noise, sigma), sigma_to_timestep(sigma)
        target = flow_target(x0, noise).float()
        for key, c in prompts.items():
            for lo in range(0, n, 64):
                pred = backbone(x_t[lo:lo + 64], timestep[lo:lo + 64], c[lo:lo + 64], return_dict=False)[0]
                sums[key] += F.mse_loss(pred.float(), target[lo:lo + 64], reduction="sum").item()
    count = len(sigmas) * x0.numel()
    out = {f"flow_mse_{k}_prompt": v / count for k, v in sums.items()}
    out["other_over_own"] = out["flow_mse_other_prompt"] / out["flow_mse_own_prompt"]
    out["empty_over_own"] = out["flow_mse_empty_prompt"] / out["flow_mse_own_prompt"]
    out.update(clips=n, sigmas=list(sigmas), distinct_pairs=int((other != torch.arange(n)).sum()))
    return out


@torch.no_grad()
def sample_preview(backbone, vae, text: torch.Tensor, device: torch.device, path: Path, frames: int, size: int,
                   steps: int = 30) -> None:
    """Euler samples (shift 5, no CFG) for 4 prompts, decoded, saved as one PNG strip."""
    from PIL import Image

    from fantasyworld.models.flow_matching import euler_step, inference_sigmas

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((4, 16, (frames - 1) // 4 + 1, size // 8, size // 8), generator=gen).to(device)
    ctx = text[:4].to(device)
    sig = inference_sigmas(steps, 5.0).to(device)
    for i in range(steps):
        v = backbone(x, sigma_to_timestep(sig[i].expand(4)), ctx, return_dict=False)[0]
        x = euler_step(x, v, sig[i], sig[i + 1])
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    video = vae.decode(x * std + mean).sample  # (4, 3, T, H, W)
    frames_u8 = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()
    rows = [np.concatenate(list(clip), axis=1) for clip in frames_u8]
    zoom = max(1, 96 // size)
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (rows[0].shape[1] * zoom, len(rows) * rows[0].shape[0] * zoom), Image.Resampling.NEAREST).save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; those left unset take the preset's :data:`RECIPES` values."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=tuple(RECIPES), help="whose VAE and backbone (default tiny)")
    p.add_argument("--out", default=None, help="output folder (default fantasyworld/assets/tiny for tiny, "
                                               "outputs/<preset>_assets otherwise)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="train on the videos of this seed-layout dataset instead of "
                                                "rendering (e.g. a run's training split)")
    p.add_argument("--workers", type=int, default=max(1, mp.cpu_count()))
    p.add_argument("--seed", type=int, default=0)
    for name, value in asdict(RECIPES["tiny"]).items():
        kind = float if isinstance(value, float) or name.endswith("seconds") else int
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    p.add_argument("--vae-dim-mult", default=",".join(map(str, encoders.TINY_VAE_DIM_MULT)), metavar="A,B,C,D",
                   help="the VAE's width multipliers of its four stages (default the tiny VAE's 1,2,2,2; Wan2.1's "
                        "1,2,4,4)")
    p.add_argument("--vae-res-blocks", type=int, default=1, help="residual blocks per VAE stage (Wan2.1's: 2)")
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-frames", type=int, default=0,
                   help="4k+1 frames per VAE training sub-clip (default 0: whole clips, every latent frame the "
                        "cache will encode)")
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--vae", default=None, help="use this diffusers AutoencoderKLWan folder (e.g. an earlier run's "
                   "OUT/vae) instead of training a VAE; its latent statistics are re-measured on these clips")
    p.add_argument("--preview", default=None, help="write a PNG of decoded samples here")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each VAE and backbone forward and backward as CUDA graphs (GPU only)")
    args = p.parse_args(argv)
    if args.cuda_graphs and not str(args.device).startswith("cuda"):
        p.error(f"--cuda-graphs needs a CUDA device (--device {args.device})")
    for name, value in asdict(RECIPES[args.preset]).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.vae_dim_mult = tuple(int(v) for v in str(args.vae_dim_mult).split(","))
        encoders.check_vae_layout(args.vae_dim_mult, args.vae_res_blocks)
    except ValueError as err:
        p.error(f"--vae-dim-mult {args.vae_dim_mult!r} / --vae-res-blocks {args.vae_res_blocks}: {err}")
    if args.vae_frames == 0:
        args.vae_frames = args.frames
    if (args.vae_frames - 1) % VAE_TEMPORAL_STRIDE or not 1 <= args.vae_frames <= args.frames:
        p.error(f"--vae-frames {args.vae_frames}: a VAE sub-clip has 4k+1 frames, at most the clips' {args.frames}")
    if args.out is None:
        args.out = "fantasyworld/assets/tiny" if args.preset == "tiny" else f"outputs/{args.preset}_assets"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the pretraining (module docstring); returns what ``OUT/pretrain.json`` holds."""
    args = parse_args(argv)
    device = torch.device(args.device)
    wan_config = get_preset(args.preset).wan
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {"args": vars(args), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "pretrain_seed": None if args.data else PRETRAIN_SEED}
    t0 = time.perf_counter()
    if args.data:
        video, prompts = read_worlds(args.data, args.clips, args.frames, args.size, args.workers)
    else:
        video, prompts = render_worlds(args.clips, args.frames, args.size, args.size, args.workers)
    if device.type == "cuda":
        video = resident_or_pinned(video, device)
    log["clips_on"] = str(video.device)
    log["render_seconds"] = time.perf_counter() - t0
    print(f"{'read' if args.data else 'rendered'} {len(video)} clips {tuple(video.shape[1:])} in "
          f"{log['render_seconds']:.0f} s", flush=True)
    if args.vae:  # an earlier run's VAE: only the backbone is trained here
        vae = encoders.load_vae(args.vae, device)
        log["vae"] = {"from": str(args.vae), "steps": 0, "parameters": sum(p.numel() for p in vae.parameters())}
        print(f"vae: {args.vae} (not trained here)", flush=True)
    else:
        vae = train_vae(video, args, device, log)
    latents = calibrate_vae(vae, video, device, log)
    text, empty = encode_prompts(prompts, device, int(wan_config["text_dim"]))
    # the backbone's one convolution (patch embedding) has fixed shapes: autotuned once. Not the VAE's
    # many causal-convolution shapes, whose first-call autotuning took 21 of its 38 s (measured)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or benchmark
    backbone = train_backbone(latents, text, empty, wan_config, args, device, log)
    torch.backends.cudnn.benchmark = benchmark
    log["prompt_dependence"] = prompt_dependence(backbone, latents, text, empty, device)
    print("backbone: flow MSE with its own / another / the empty prompt {flow_mse_own_prompt:.4f} / "
          "{flow_mse_other_prompt:.4f} / {flow_mse_empty_prompt:.4f}".format(**log["prompt_dependence"]), flush=True)
    if args.preview:
        sample_preview(backbone, vae, text, device, Path(args.preview), args.frames, args.size)
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    backbone.to("cpu").save_pretrained(out / "backbone", safe_serialization=True)
    log["total_seconds"] = time.perf_counter() - t0
    (out / "pretrain.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {out} in {log['total_seconds']:.0f} s", flush=True)
    return log


if __name__ == "__main__":
    main()
