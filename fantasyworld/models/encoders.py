"""Frozen encoders: Wan VAE, UMT5 text encoder, CLIP vision (I2V), used by the cache, training and inference.

Loading goes through the libraries' own ``from_pretrained`` on **local directories only**
(``local_files_only=True``; nothing is downloaded). The tiny random configurations below
are used by tests and the demo: they run the same loading code on directories written with
``save_pretrained``.

Conventions:

* video in ``[-1, 1]``, ``(B, 3, T, H, W)``, ``T = 4k + 1``; latents ``(B, 16, F, H/8, W/8)``
  normalised as ``(z - latents_mean) / latents_std`` (the VAE config's statistics, the
  Wan2.1 values of SPEC 3.1 in the real model and in :func:`tiny_vae`);
* text embeddings ``(B, 512, D)``: UMT5 last hidden state, zero after the prompt's tokens
  (as Wan's pipelines build them);
* I2V: CLIP penultimate hidden states ``(B, 257, 1280)`` for ViT-H/14 at 224 px, and the
  conditioning latent ``(B, 20, F, h, w)`` = 4 mask channels + 16 latent channels of the
  VAE-encoded clip ``[first frame, zeros...]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fantasyworld.errors import CheckpointError

TEXT_LEN = 512
_TINY_WORDS = (
    "a an the and with of to in around while keeping centre center view scene camera room courtyard open "
    "sky floor walls wall containing ball box pillar moves forward pulls back orbits slides sideways left "
    "right turns rises tilts down lowers up arcs checkered striped mottled tiled plain red orange yellow "
    "green teal blue purple pink white grey gray brown black beige cyan"
).split()


#: What a library's ``from_pretrained`` raises for a directory it cannot load.
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError)


def _component_dir(path: str | Path, what: str) -> Path:
    """``path`` as a directory holding ``config.json``, else :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: {what} directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: the {what} must be a directory (from_pretrained layout), got a file")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json in this {what} directory (from_pretrained layout expected)")
    return path


def _from_pretrained(cls, path: str | Path, what: str, **kwargs):
    """``cls.from_pretrained(path, local_files_only=True, **kwargs)``; what the library raises for
    a directory it cannot load becomes a :class:`CheckpointError` naming ``path`` and the reason."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except _LOAD_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load the {what} ({type(exc).__name__}: {reason})") from exc


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``AutoencoderKLWan.from_pretrained(path)`` (local directory, eval mode).

    Raises:
        CheckpointError: ``path`` is not a loadable VAE directory (the message names it).
    """
    from diffusers import AutoencoderKLWan

    path = _component_dir(path, "VAE")
    vae = _from_pretrained(AutoencoderKLWan, path, "AutoencoderKLWan VAE", torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


def load_text_encoder(path: str | Path, tokenizer_path: str | Path | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(UMT5EncoderModel, tokenizer)`` from local directories. The tokenizer defaults to
    ``path/../tokenizer`` (diffusers repo layout) if it exists, else ``path``.

    Raises:
        CheckpointError: either directory cannot be loaded (the message names it).
    """
    from transformers import AutoTokenizer, UMT5EncoderModel

    path = _component_dir(path, "text encoder")
    if tokenizer_path is None:
        sibling = path.parent / "tokenizer"
        tokenizer_path = sibling if sibling.is_dir() else path
    elif not Path(tokenizer_path).is_dir():
        raise CheckpointError(f"{tokenizer_path}: tokenizer directory does not exist")
    model = _from_pretrained(UMT5EncoderModel, path, "UMT5 text encoder", dtype=dtype)
    tokenizer = _from_pretrained(AutoTokenizer, tokenizer_path, "tokenizer")
    return model.to(device).eval().requires_grad_(False), tokenizer


def load_image_encoder(path: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32):
    """``(CLIPVisionModel, CLIPImageProcessor)`` from a local directory (processor files
    may sit in ``path`` or in ``path/../image_processor``).

    Raises:
        CheckpointError: the model or its processor cannot be loaded (the message names the directory).
    """
    from transformers import CLIPImageProcessor, CLIPVisionModel

    path = _component_dir(path, "image encoder")
    proc_dir = path.parent / "image_processor"
    proc_dir = proc_dir if proc_dir.is_dir() else path
    model = _from_pretrained(CLIPVisionModel, path, "CLIP vision encoder", dtype=dtype)
    processor = _from_pretrained(CLIPImageProcessor, proc_dir, "CLIP image processor")
    return model.to(device).eval().requires_grad_(False), processor


# ----------------------------------------------------------------------------------------
# encoding
def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=like.dtype, device=like.device).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=like.dtype, device=like.device).view(1, z, 1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` in [-1, 1] -> normalised latent mean ``(B, 16, F, H/8, W/8)`` fp32."""
    param = next(vae.parameters())
    dist = vae.encode(video.to(param.device, param.dtype)).latent_dist
    z = dist.mean.float()
    mean, std = _latent_stats(vae, z)
    return (z - mean) / std


@torch.no_grad()
def decode_video(vae, latents: torch.Tensor, tiling: bool = False) -> torch.Tensor:
    """Normalised latents ``(B, 16, F, h, w)`` -> video ``(B, 3, T, H, W)`` fp32 in ~[-1, 1]
    (de-normalised as ``z * std + mean`` with the VAE config's statistics, then
    ``AutoencoderKLWan.decode``, with the VAE's spatial tiling if ``tiling``)."""
    param = next(vae.parameters())
    z = latents.to(param.device, torch.float32)
    mean, std = _latent_stats(vae, z)
    z = z * std + mean
    if tiling:
        vae.enable_tiling()
    try:
        return vae.decode(z.to(param.dtype)).sample.float()
    finally:
        if tiling:
            vae.disable_tiling()


@torch.no_grad()
def encode_text(text_encoder, tokenizer, prompts: list[str], max_length: int = TEXT_LEN
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> ``(B, max_length, D)`` fp32 embeddings zeroed after each prompt's tokens,
    and the token counts ``(B,)``."""
    param = next(text_encoder.parameters())
    tok = tokenizer([p.strip() for p in prompts], padding="max_length", max_length=max_length,
                    truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids = tok.input_ids.to(param.device)
    mask = tok.attention_mask.to(param.device)
    hidden = text_encoder(ids, attention_mask=mask).last_hidden_state.float()
    # an encoder under HostOffload keeps its token table (the first parameter) on the host:
    # its output then lives on the GPU while the mask stays where the table is
    hidden = hidden * mask[..., None].to(hidden.device, hidden.dtype)
    return hidden, mask.sum(1).long()


@torch.no_grad()
def encode_image_clip(image_encoder, processor, frames: torch.Tensor) -> torch.Tensor:
    """First frames ``(B, 3, H, W)`` in [-1, 1] -> CLIP penultimate hidden states
    ``(B, N, D)`` fp32 (``(B, 257, 1280)`` for Wan's ViT-H/14)."""
    param = next(image_encoder.parameters())
    images = [((f.permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
              for f in frames]
    pixel = processor(images=images, return_tensors="pt").pixel_values.to(param.device, param.dtype)
    return image_encoder(pixel_values=pixel, output_hidden_states=True).hidden_states[-2].float()


@torch.no_grad()
def i2v_condition_latent(vae, video: torch.Tensor) -> torch.Tensor:
    """Wan I2V conditioning ``(B, 20, F, H/8, W/8)``: 4 mask channels (1 on the first
    pixel frame's 4 slots, 0 elsewhere) followed by the normalised latent of
    ``[first frame, zeros for the remaining T - 1 frames]``."""
    b, _, t, h, w = video.shape
    cond_video = torch.cat([video[:, :, :1], torch.zeros_like(video[:, :, 1:])], dim=2)
    latent = encode_video(vae, cond_video)  # (B, 16, F, h, w)
    f, lh, lw = latent.shape[2:]
    mask = torch.zeros(b, 1, t + 3, lh, lw, dtype=latent.dtype, device=latent.device)
    mask[:, :, :4] = 1.0  # the first frame counts 4 times (Wan's temporal packing)
    mask = mask.view(b, f, 4, lh, lw).transpose(1, 2)  # (B, 4, F, h, w)
    return torch.cat([mask, latent], dim=1)


# ----------------------------------------------------------------------------------------
# tiny random encoders (tests, demo)
TINY_VAE_DIM_MULT = (1, 2, 2, 2)  # Wan2.1's is (1, 2, 4, 4), with 2 residual blocks a stage


def check_vae_layout(dim_mult: tuple[int, ...], num_res_blocks: int) -> None:
    """``ValueError`` unless ``dim_mult`` has four positive stages (three of them downsample: Wan's
    8x spatial compression) and ``num_res_blocks`` is at least 1."""
    if len(dim_mult) != 4 or min(dim_mult) < 1 or num_res_blocks < 1:
        raise ValueError(f"the VAE's dim_mult {tuple(dim_mult)} needs four positive stages (8x spatial "
                         f"compression) and num_res_blocks {num_res_blocks} at least 1")


def tiny_vae(seed: int = 0, base_dim: int = 8, dim_mult: tuple[int, ...] = TINY_VAE_DIM_MULT,
             num_res_blocks: int = 1):
    """A random ``AutoencoderKLWan`` with Wan's compression (4x temporal, 8x spatial, 16
    latent channels) and Wan2.1's latent statistics: ~0.2M parameters at the defaults
    (``base_dim`` 8, ``dim_mult`` (1, 2, 2, 2), one residual block a stage; Wan2.1's ``base_dim``
    is 96, ``dim_mult`` (1, 2, 4, 4), two blocks; parameters grow with the square of the widths).
    ``dim_mult`` has four stages: three of them downsample, as Wan's 8x spatial compression needs."""
    from diffusers import AutoencoderKLWan

    check_vae_layout(dim_mult, num_res_blocks)
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=base_dim, z_dim=16, dim_mult=list(dim_mult), num_res_blocks=num_res_blocks,
                            temperal_downsample=[False, True, True]).eval()


def tiny_tokenizer(words: list[str] | None = None):
    """An offline word-level ``PreTrainedTokenizerFast`` with UMT5's special ids
    (``<pad>`` 0, ``</s>`` 1 appended to every prompt, ``<unk>`` 2), lower-cased,
    splitting on whitespace and punctuation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in sorted(set(words or _TINY_WORDS) | {".", ","}):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=TEXT_LEN)


def tiny_text_encoder(seed: int = 0, d_model: int = 32):
    """``(UMT5EncoderModel, tokenizer)``: 2 layers, width ``d_model``, random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                        decoder_start_token_id=0)
    return UMT5EncoderModel(config).eval(), tokenizer


def tiny_image_encoder(seed: int = 0):
    """``(CLIPVisionModel, CLIPImageProcessor)``: 28 px input, patch 14 -> 5 tokens of 32."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32)
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return CLIPVisionModel(config).eval(), processor


def save_tiny_encoders(out_dir: str | Path, image_encoder: bool = False, seed: int = 0) -> dict[str, Path]:
    """Write tiny random encoders in diffusers' repo layout (``vae/``, ``text_encoder/``,
    ``tokenizer/``, optionally ``image_encoder/`` + ``image_processor/``); returns the paths."""
    out = Path(out_dir)
    vae = tiny_vae(seed)
    vae.save_pretrained(out / "vae")
    model, tokenizer = tiny_text_encoder(seed)
    model.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    paths = {"vae": out / "vae", "text_encoder": out / "text_encoder", "tokenizer": out / "tokenizer"}
    if image_encoder:
        clip, processor = tiny_image_encoder(seed)
        clip.save_pretrained(out / "image_encoder")
        processor.save_pretrained(out / "image_processor")
        paths["image_encoder"] = out / "image_encoder"
    return paths


# ----------------------------------------------------------------------------------------
# an encoder named by a spec: a local directory, or TINY for the seeded tiny random one
#: The spec that names the seeded tiny random encoders (seed 0) instead of a directory; the
#: trainer's configs, ``data cache`` and the pipelines all accept it.
TINY = "tiny"


def _seeded_tiny(make, *args, **kwargs):
    """``make(*args, **kwargs)`` (a ``tiny_*`` constructor, which seeds torch) with the caller's
    global RNG state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        return make(*args, **kwargs)


def load_vae_spec(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The VAE of ``spec``: :func:`load_vae` of a directory (in ``dtype``), or :func:`tiny_vae`
    (seed 0, always float32, as every tiny encoder) for :data:`TINY`; on ``device``, eval mode,
    frozen."""
    if str(spec) == TINY:
        return _seeded_tiny(tiny_vae, 0).to(device).requires_grad_(False)
    return load_vae(spec, device, dtype)


def load_text_encoder_spec(spec: str | Path, tokenizer_path: str | Path | None = None,
                           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           tiny_dim: int = 32):
    """``(UMT5 encoder, tokenizer)`` of ``spec``: :func:`load_text_encoder` of a directory, or
    :func:`tiny_text_encoder` (seed 0, width ``tiny_dim``: the preset's ``text_dim``; float32) for
    :data:`TINY`."""
    if str(spec) == TINY:
        model, tokenizer = _seeded_tiny(tiny_text_encoder, 0, d_model=tiny_dim)
        return model.to(device).requires_grad_(False), tokenizer
    return load_text_encoder(spec, tokenizer_path, device, dtype)


def load_image_encoder_spec(spec: str | Path, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float32):
    """``(CLIP vision model, processor)`` of ``spec``: :func:`load_image_encoder` of a directory,
    or :func:`tiny_image_encoder` (seed 0, float32) for :data:`TINY`."""
    if str(spec) == TINY:
        model, processor = _seeded_tiny(tiny_image_encoder, 0)
        return model.to(device).requires_grad_(False), processor
    return load_image_encoder(spec, device, dtype)
