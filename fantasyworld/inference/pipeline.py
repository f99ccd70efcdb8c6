"""``FantasyWorldPipeline``: prompt (+ image) + camera trajectory -> video and geometry.

    pipe = FantasyWorldPipeline.from_pretrained("outputs/fantasy_world_stage2", backbone="Wan2.1-T2V-1.3B-Diffusers",
                                                vae=".../vae", text_encoder=".../text_encoder", device="cuda",
                                                dtype="bfloat16")
    result = pipe("a courtyard with a fountain", camera="orbit", num_frames=81, height=336, width=592, seed=0)
    result.save("out/")

Steps of a call: encode the prompt and negative prompt (UMT5, or cached embeddings);
for I2V presets encode the first image (CLIP tokens + the VAE conditioning latent);
resolve the camera trajectory at ``(T, H, W)`` and turn it into Plücker rays relative to
frame 0 and then into pose features (once: they do not depend on the timestep); draw the
initial noise from a seeded CPU generator; run the Euler/CFG sampler (heads once, see
:mod:`fantasyworld.inference.sampler`); decode the latents with the Wan VAE (tiled for
large frames); fuse the coloured point cloud. No global random state is read or changed.

Checkpoints whose config has ``official_compat: true`` (the converted official
FantasyWorld-Wan2.1-I2V-14B-480P weights, ``fantasyworld convert-official``) get the
official inference's camera preprocessing instead (:meth:`FantasyWorldPipeline.camera_inputs`):
translations **divided** by a scene scale (given, or from a first-frame depth map or a depth
estimator, :func:`~fantasyworld.inference.official_cameras.official_translation_scale`), the principal
point reset to ``(W/2, H/2)`` and the doubled intrinsics of the official Plücker rays
(:func:`~fantasyworld.inference.official_cameras.official_plucker`); and ``wan_override.safetensors``
beside the weights, if the converter wrote one, is applied to the loaded backbone.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from fantasyworld.data import encoders
from fantasyworld.errors import CheckpointError
from fantasyworld.geometry.pose_encoding import decode_pose
from fantasyworld.inference.official_cameras import official_plucker, official_translation_scale
from fantasyworld.inference.ply import CLOUD_SOURCES, DEFAULT_CONF_PERCENTILE, DEFAULT_MAX_POINTS, fuse_point_cloud
from fantasyworld.inference.result import GenerationResult
from fantasyworld.inference.sampler import Conditioning, initial_noise, sample
from fantasyworld.inference.trajectories import DEFAULT_FOV_DEG, CameraTrajectory, load_trajectory
from fantasyworld.models.config import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, FantasyWorldConfig, get_preset
from fantasyworld.models.fantasyworld import FantasyWorldModel
from fantasyworld.models.official import OVERRIDE_FILE, apply_backbone_override
from fantasyworld.models.wan_backbone import WAN_TEXT_LEN, build_wan_transformer, rebuild_rope
from fantasyworld.models.wan_loading import cast_keeping_fp32, load_wan_transformer

#: Wan2.1's default negative prompt (the official Wan and FantasyWorld scripts use it).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
#: Frames at or above this pixel area are decoded with the VAE's tiling (``vae_tiling="auto"``):
#: at 480x832 tiling trades ~2.5x decode time for ~40% less decoder memory (STACK.md).
VAE_TILING_MIN_AREA = 480 * 832
#: Seed of the random backbone used for tiny presets when no backbone directory is given.
TINY_BACKBONE_SEED = 0
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
#: FoV clamp applied to predicted cameras before export (degrees).
MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 179.0
_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` ... -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_checkpoint(checkpoint: str | Path, preset: str | None = None) -> tuple[Path, FantasyWorldConfig, int]:
    """Find the weights file, the model config and the stage of a checkpoint.

    ``checkpoint`` is a ``.safetensors`` file or a directory; a directory gives its newest
    ``step-N.safetensors`` (else its only ``*.safetensors``). The config is
    ``config.json`` beside the weights, else ``preset``, else the ``preset`` recorded in
    the file's metadata. The stage is the file's ``stage`` metadata (default 2).
    A converted official checkpoint's ``wan_override.safetensors`` (backbone tensors, not
    FantasyWorld weights) is never taken as the weights file.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    if path.is_dir():
        steps = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _STEP_FILE.match(p.name)))
        if steps:
            path = steps[-1][1]
        else:
            files = sorted(p for p in path.glob("*.safetensors") if p.name != OVERRIDE_FILE)
            if len(files) != 1:
                raise CheckpointError(f"{checkpoint}: expected step-N.safetensors files or a single *.safetensors, "
                                      f"found {len(files)} safetensors files")
            path = files[0]
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors checkpoint ({exc})") from exc
    cfg_path = path.parent / "config.json"
    if cfg_path.is_file():
        config = FantasyWorldConfig.load(cfg_path)
    elif preset or meta.get("preset"):
        config = get_preset(preset or meta["preset"])
    else:
        raise CheckpointError(f"{path}: no config.json beside the checkpoint and no preset given (pass preset=...)")
    stage = int(meta.get("stage", 2))
    return path, config, stage


def cameras_from_pose_enc(pose_enc: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``(T, 9)`` pose encodings -> ``w2c`` ``(T, 4, 4)`` and pixel intrinsics
    ``(T, 3, 3)`` (float64), decoded as the model does but with both fields of view clamped
    to [:data:`MIN_FOV_DEG`, :data:`MAX_FOV_DEG`] so that an untrained or degenerate head
    (FoV 0 -> infinite focal length) still yields finite, exportable cameras."""
    enc = torch.from_numpy(np.asarray(pose_enc, dtype=np.float64)).clone()
    enc[..., 7:9] = enc[..., 7:9].clamp(math.radians(MIN_FOV_DEG), math.radians(MAX_FOV_DEG))
    w2c, k = decode_pose(enc, image_hw)
    return w2c.numpy(), k.numpy()


def _fork_rng(seed: int):
    """Context manager: seeded global torch RNG inside, caller's state restored after."""
    class _Ctx:
        def __enter__(self):
            self._ctx = torch.random.fork_rng(devices=[])
            self._ctx.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc):
            return self._ctx.__exit__(*exc)

    return _Ctx()


def _load_image(image: Any, height: int, width: int) -> torch.Tensor:
    """Path / PIL image / ``(H, W, 3)`` uint8 array / ``(3, H, W)`` tensor in [-1, 1] ->
    ``(1, 3, height, width)`` float32 in [-1, 1], resized to cover and centre-cropped."""
    if isinstance(image, torch.Tensor):
        img = image.float()
        if img.ndim == 3:
            img = img[None]
        return torch.nn.functional.interpolate(img, size=(height, width), mode="bilinear", antialias=True,
                                               align_corners=False)
    if isinstance(image, (str, Path)):
        try:
            pil = Image.open(image).convert("RGB")
        except OSError as exc:
            raise ValueError(f"{image}: cannot read image ({exc})") from exc
    elif isinstance(image, np.ndarray):
        pil = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    else:
        pil = image.convert("RGB")
    scale = max(height / pil.height, width / pil.width)
    size = (max(width, round(pil.width * scale)), max(height, round(pil.height * scale)))
    pil = pil.resize(size, Image.Resampling.BICUBIC)
    left, top = (pil.width - width) // 2, (pil.height - height) // 2
    pil = pil.crop((left, top, left + width, top + height))
    arr = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1)[None]


def _raw_image(image: Any) -> np.ndarray:
    """The first frame at its own resolution as ``(H, W, 3)`` uint8 (what the official
    inference hands MoGe; a ``(3, H, W)`` tensor in [-1, 1] is converted back)."""
    if isinstance(image, torch.Tensor):
        img = image.detach().float().cpu()
        img = img[0] if img.ndim == 4 else img
        return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if isinstance(image, (str, Path)):
        try:
            return np.asarray(Image.open(image).convert("RGB"))
        except OSError as exc:
            raise ValueError(f"{image}: cannot read image ({exc})") from exc
    if isinstance(image, np.ndarray):
        return np.asarray(Image.fromarray(image.astype(np.uint8)).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_depth_map(depth: Any) -> np.ndarray:
    """A first-frame depth map for the official translation scale: an array/tensor, or a
    ``.npy`` file, or a ``.npz`` file with a ``depth`` array (or a single array) ->
    ``(H, W)`` float64. Singleton leading/trailing axes are dropped."""
    if isinstance(depth, (str, Path)):
        path = Path(depth)
        try:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                with data:
                    if "depth" in data.files:
                        arr = data["depth"]
                    elif len(data.files) == 1:
                        arr = data[data.files[0]]
                    else:
                        raise ValueError(f"no 'depth' array among {', '.join(data.files)}")
            else:
                arr = data
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read depth map (.npy, or .npz with 'depth'): {exc}") from exc
        what = str(path)
    else:
        arr = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth)
        what = "depth"
    arr = np.asarray(arr, dtype=np.float64)
    while arr.ndim > 2 and (arr.shape[0] == 1 or arr.shape[-1] == 1):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{what}: a depth map must be (H, W), got shape {arr.shape}")
    return arr


@dataclass
class CameraInputs:
    """What conditions the model on the camera (see :meth:`FantasyWorldPipeline.camera_inputs`).

    Attributes:
        plucker: ``(1, T, 6, H, W)`` float32 Plücker rays fed to the pose encoder.
        trajectory: the conditioning cameras, relative to frame 0 with the translation
            scale applied (reported as the requested cameras), real pixel intrinsics.
        translation_scale: the factor applied to the translations (multiplied on our own
            checkpoints, **divided** under ``official_compat``).
        scale_source: ``"given"``, ``"depth"``, ``"depth_estimator"`` or ``"default"``.
        official_compat: whether the official preprocessing was used.
    """

    plucker: torch.Tensor
    trajectory: CameraTrajectory
    translation_scale: float
    scale_source: str
    official_compat: bool
    extra: dict = field(default_factory=dict)


class FantasyWorldPipeline:
    """Generation with a trained FantasyWorld model (stage-2 weights) and its encoders.

    Attributes:
        model: :class:`FantasyWorldModel` in eval mode.
        vae: diffusers ``AutoencoderKLWan`` (decoding, and the I2V conditioning latent).
        text_encoder, tokenizer: UMT5 encoder and tokenizer (``None`` if only cached
            embeddings are used).
        image_encoder, image_processor: CLIP vision model and processor (I2V presets).
        device, dtype: where and in which precision the transformer runs (the sampler's
            Euler state and the VAE stay fp32).
    """

    def __init__(self, model: FantasyWorldModel, vae, text_encoder=None, tokenizer=None, image_encoder=None,
                 image_processor=None, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32,
                 source: str = "") -> None:
        self.model = model.eval()
        self.vae = vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.device = torch.device(device)
        self.dtype = as_dtype(dtype)
        self.source = source
        #: Wan transformer tensors replaced from ``wan_override.safetensors`` (official checkpoints).
        self.backbone_override: list[str] = []
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def config(self) -> FantasyWorldConfig:
        return self.model.config

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        backbone: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        tokenizer: str | Path | None = None,
        image_encoder: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        preset: str | None = None,
        stage: int | None = None,
    ) -> FantasyWorldPipeline:
        """Load a checkpoint and its frozen components (local files only, nothing downloaded).

        Args:
            checkpoint: a stage-2 ``.safetensors`` (``step-N.safetensors``) or its directory
                (newest step); ``config.json`` beside it gives the architecture.
            backbone: Wan2.1 transformer directory (diffusers or original layout). Default:
                ``<checkpoint dir>/backbone`` if present; for tiny presets, ``"random"`` (or
                the preset's name) builds the seeded random tiny backbone
                (seed :data:`TINY_BACKBONE_SEED`, the one the tiny tests and demo use).
            vae, text_encoder, image_encoder: local directories (``from_pretrained``), or
                ``"tiny"`` for the tiny random encoders of :mod:`fantasyworld.data.encoders`.
                Default: ``<checkpoint dir>/<name>`` if present, else ``"tiny"`` for tiny presets.
                ``text_encoder`` may stay unset when every call passes ``prompt_embeds``.
            tokenizer: tokenizer directory (default: next to the text encoder).
            device, dtype: transformer placement and precision (``float32``, ``bfloat16``...).
                Every module that a ``_keep_in_fp32_modules`` list names stays fp32 (Wan's
                ``scale_shift_table``, ``time_embedder`` and norms, the geometry timestep MLPs).
            preset: preset name when the checkpoint has no ``config.json``.
            stage: override the checkpoint's ``stage`` metadata (1 loads a stage-1 file:
                geometry only, no camera conditioning).

        A checkpoint with ``official_compat: true`` whose directory holds
        ``wan_override.safetensors`` (written by ``convert-official --backbone-override``)
        gets those tensors copied into the backbone after it is loaded
        (:func:`~fantasyworld.models.official.apply_backbone_override`); an override whose
        names or shapes do not fit the backbone raises :class:`CheckpointError`. An override
        file beside a checkpoint without ``official_compat`` is refused (only the converter
        writes one; dropping it silently would run another model).
        """
        weights, config, file_stage = resolve_checkpoint(checkpoint, preset)
        stage = stage or file_stage
        root = weights.parent
        device = torch.device(device)
        dtype = as_dtype(dtype)
        tiny = config.name.startswith("tiny")

        def component(spec, name: str, required: bool = True):
            if spec is not None:
                return str(spec)
            if (root / name).is_dir():
                return str(root / name)
            if tiny:
                return "tiny"
            if required:
                raise CheckpointError(f"{checkpoint}: pass {name}=DIR (a local Wan2.1 {name} directory)")
            return None

        # 1. backbone
        spec = component(backbone, "backbone")
        if spec in ("tiny", "random", config.name):
            if not tiny:
                raise CheckpointError(f"a random backbone is only available for tiny presets, not {config.name}")
            with _fork_rng(TINY_BACKBONE_SEED):
                transformer = build_wan_transformer(config.wan, device)
        else:
            transformer = load_wan_transformer(spec, torch.float32, device, expected_config=config.wan)
        overridden: list[str] = []
        if (root / OVERRIDE_FILE).is_file():
            if not config.official_compat:
                raise CheckpointError(
                    f"{root / OVERRIDE_FILE}: a backbone override beside a checkpoint whose config.json has "
                    "official_compat false; only convert-official writes one (remove it, or use the converted "
                    "checkpoint's config.json)")
            overridden = apply_backbone_override(root, transformer)  # fp32 copy, before any cast
        # 2. FantasyWorld modules (random init is overwritten; keep the caller's RNG untouched)
        with _fork_rng(0):
            model = FantasyWorldModel(config, transformer, device=device)
        model.load_fantasyworld(weights, stage=stage)
        if dtype != torch.float32:
            cast_keeping_fp32(model, dtype)
            rebuild_rope(model.transformer, device)
        model.eval().requires_grad_(False)
        # 3. encoders
        vae_spec = component(vae, "vae")
        with _fork_rng(0):
            vae_model = encoders.tiny_vae(0).to(device) if vae_spec == "tiny" else encoders.load_vae(vae_spec, device)
        te_spec = component(text_encoder, "text_encoder", required=False)
        te = tok = None
        if te_spec == "tiny":
            with _fork_rng(0):
                te, tok = encoders.tiny_text_encoder(0)
            te = te.to(device)
        elif te_spec is not None:
            # UMT5 overflows in float16 (NaN activations): run it in bfloat16 instead
            te_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
            te, tok = encoders.load_text_encoder(te_spec, tokenizer, device, te_dtype)
        ie = proc = None
        if config.is_i2v:
            ie_spec = component(image_encoder, "image_encoder")
            if ie_spec == "tiny":
                with _fork_rng(0):
                    ie, proc = encoders.tiny_image_encoder(0)
                ie = ie.to(device)
            else:
                ie, proc = encoders.load_image_encoder(ie_spec, device, dtype)
        pipe = cls(model, vae_model, te, tok, ie, proc, device, dtype, source=str(weights))
        pipe.backbone_override = overridden
        return pipe

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """``(1, 512, text_dim)`` fp32 UMT5 embeddings (zero after the prompt's tokens),
        memoised per prompt on the CPU."""
        if prompt not in self._text_cache:
            if self.text_encoder is None:
                raise ValueError("no text encoder loaded: pass text_encoder= to from_pretrained or prompt_embeds=")
            emb, _ = encoders.encode_text(self.text_encoder, self.tokenizer, [prompt], max_length=WAN_TEXT_LEN)
            self._text_cache[prompt] = emb.cpu()
        return self._text_cache[prompt].to(self.device)

    def _embeddings(self, value: Any, what: str) -> torch.Tensor:
        """Cached text embeddings: a ``(L, D)``/``(1, L, D)`` tensor or a safetensors file
        holding ``text_emb`` (a ``fantasyworld data cache`` clip file) -> ``(1, L, D)``."""
        if isinstance(value, (str, Path)):
            path = Path(value)
            try:
                with safe_open(str(path), framework="pt") as fh:
                    value = fh.get_tensor("text_emb")
            except Exception as exc:
                raise ValueError(f"{path}: cannot read {what} (a safetensors file with a 'text_emb' tensor): "
                                 f"{exc}") from exc
        emb = torch.as_tensor(value).float()
        if emb.ndim == 2:
            emb = emb[None]
        if emb.ndim != 3 or emb.shape[-1] != self.config.wan["text_dim"]:
            raise ValueError(f"{what}: expected (L, {self.config.wan['text_dim']}) embeddings, got {tuple(emb.shape)}")
        if self.config.is_i2v and emb.shape[1] != WAN_TEXT_LEN:
            emb = torch.nn.functional.pad(emb[:, :WAN_TEXT_LEN], (0, 0, 0, max(0, WAN_TEXT_LEN - emb.shape[1])))
        return emb.to(self.device)

    @torch.no_grad()
    def encode_image(self, image: Any, num_frames: int, height: int, width: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """I2V conditioning: ``(cond_latent (1, 20, F, H/8, W/8), clip tokens (1, N, image_dim),
        first frame (1, 3, H, W) in [-1, 1])`` built exactly as the latent cache builds them."""
        if self.image_encoder is None:
            raise ValueError(f"preset {self.config.name} is image-to-video but no image encoder is loaded")
        first = _load_image(image, height, width).to(self.device)
        video = torch.zeros(1, 3, num_frames, height, width, device=self.device)
        video[:, :, 0] = first[0]
        vae_dtype = next(self.vae.parameters()).dtype
        cond = encoders.i2v_condition_latent(self.vae, video.to(vae_dtype)).float()
        clip = encoders.encode_image_clip(self.image_encoder, self.image_processor, first).float()
        return cond, clip, first

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiling: bool | str = "auto") -> np.ndarray:
        """Normalised latents ``(B, 16, F, h, w)`` -> ``(B, T, H, W, 3)`` uint8 frames.

        De-normalises as ``z * std + mean`` (the VAE config's statistics) and decodes with
        ``AutoencoderKLWan.decode``; ``tiling="auto"`` tiles frames of at least
        :data:`VAE_TILING_MIN_AREA` pixels.
        """
        vae = self.vae
        param = next(vae.parameters())
        z = latents.to(param.device, torch.float32)
        mean = torch.tensor(vae.config.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        z = z * std + mean
        area = z.shape[-2] * z.shape[-1] * VAE_SPATIAL_STRIDE**2
        use_tiling = area >= VAE_TILING_MIN_AREA if tiling == "auto" else bool(tiling)
        if use_tiling:
            vae.enable_tiling()
        try:
            video = vae.decode(z.to(param.dtype)).sample.float()  # (B, 3, T, H, W) in ~[-1, 1]
        finally:
            if use_tiling:
                vae.disable_tiling()
        video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().numpy()

    # ------------------------------------------------------------------ cameras
    def camera_inputs(
        self,
        camera: CameraTrajectory | np.ndarray | str | Path,
        num_frames: int,
        height: int,
        width: int,
        *,
        image: Any = None,
        camera_magnitude: float | None = None,
        camera_format: str = "auto",
        fov_deg: float = DEFAULT_FOV_DEG,
        resample_camera: bool = False,
        translation_scale: float | None = None,
        scale_depth: Any = None,
        depth_estimator: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> CameraInputs:
        """Resolve the camera and build the Plücker rays the pose encoder reads.

        Our checkpoints: poses relative to frame 0, translations **multiplied** by
        ``translation_scale`` (default 1), rays with the real pixel intrinsics.

        ``official_compat`` checkpoints (the official inference's recipe): translations
        **divided** by a scale taken from exactly one of ``translation_scale`` (given),
        ``scale_depth`` (first-frame depth map: array or ``.npy``/``.npz`` file) or
        ``depth_estimator(first image at its own resolution)`` (MoGe-2 in the official),
        the depth unprojected with frame 0's intrinsics at ``(height, width)``
        (:func:`~fantasyworld.inference.official_cameras.official_translation_scale`); none of them
        means scale 1 (the official ``--using_scale False``) with a warning. The rays are
        :func:`~fantasyworld.inference.official_cameras.official_plucker` (principal point reset to
        ``(W/2, H/2)``, doubled intrinsics).
        """
        traj = load_trajectory(camera, num_frames, height, width, magnitude=camera_magnitude, fmt=camera_format,
                               fov_deg=fov_deg, resample=resample_camera)
        if not self.config.official_compat:
            if scale_depth is not None or depth_estimator is not None:
                raise ValueError("scale_depth / depth_estimator set the official translation scale and only apply "
                                 f"to official_compat checkpoints ({self.config.name} is not one); use "
                                 "translation_scale to multiply the translations")
            factor = 1.0 if translation_scale is None else float(translation_scale)
            rel = traj.scaled(factor) if factor != 1.0 else traj.relative()
            return CameraInputs(rel.plucker(False), rel, factor, "given" if translation_scale is not None
                                else "default", False)
        given = [s is not None for s in (translation_scale, scale_depth, depth_estimator)]
        if sum(given) > 1:
            raise ValueError("official_compat: give at most one translation-scale source (translation_scale, "
                             "scale_depth or depth_estimator)")
        if not any(given):
            warnings.warn("official_compat checkpoint without a translation scale: translations are used as given "
                          "(scale 1, the official --using_scale False); the official inference divides them by "
                          "the first frame's MoGe depth scale; pass translation_scale, scale_depth or "
                          "depth_estimator", stacklevel=3)
            scale, source = 1.0, "default"
        elif translation_scale is not None:
            scale, source = official_translation_scale(traj.K, scale=float(translation_scale)), "given"
        elif scale_depth is not None:
            scale, source = official_translation_scale(traj.K, depth=load_depth_map(scale_depth)), "depth"
        else:
            if image is None:
                raise ValueError("depth_estimator needs the first-frame image (image=)")
            scale = official_translation_scale(traj.K, image=_raw_image(image), depth_estimator=depth_estimator)
            source = "depth_estimator"
        plucker = official_plucker(traj.w2c, traj.K, height, width, scale)
        return CameraInputs(plucker, traj.scaled(1.0 / scale), scale, source, True)

    # ------------------------------------------------------------------ generation
    def __call__(
        self,
        prompt: str = "",
        negative_prompt: str | None = None,
        image: Any = None,
        camera: CameraTrajectory | np.ndarray | str | Path = "static",
        num_frames: int = 81,
        height: int = 336,
        width: int = 592,
        num_steps: int = 50,
        guidance_scale: float = 5.0,
        shift: float = 5.0,
        seed: int = 0,
        *,
        camera_magnitude: float | None = None,
        camera_format: str = "auto",
        fov_deg: float = DEFAULT_FOV_DEG,
        resample_camera: bool = False,
        translation_scale: float | None = None,
        scale_depth: Any = None,
        depth_estimator: Callable[[np.ndarray], np.ndarray] | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        geometry: str = "final",
        cfg_batch: bool = True,
        vae_tiling: bool | str = "auto",
        cloud_source: str = "depth",
        conf_percentile: float = DEFAULT_CONF_PERCENTILE,
        max_points: int = DEFAULT_MAX_POINTS,
        fps: float = 16.0,
        progress: bool = True,
    ) -> GenerationResult:
        """Generate one clip and its geometry.

        Args:
            prompt, negative_prompt: text; the negative prompt defaults to Wan's
                (:data:`WAN_NEGATIVE_PROMPT`); ``""`` is an empty negative prompt.
            image: first frame for I2V presets (path, PIL image, ``(H, W, 3)`` uint8 array
                or ``(3, H, W)`` tensor in [-1, 1]); resized to cover and centre-cropped.
            camera: named path (``"orbit"``, ``"dolly-in:1.0"`` ...), camera file/dir, w2c
                array ``(T, 4, 4)`` or :class:`CameraTrajectory` (see
                :mod:`fantasyworld.inference.trajectories`).
            num_frames: ``T = 4k + 1``; height, width: multiples of 16.
            num_steps, guidance_scale, shift: Euler steps, CFG scale, schedule shift.
            seed: the initial noise comes from ``torch.Generator('cpu').manual_seed(seed)``.
            camera_magnitude, camera_format, fov_deg, resample_camera: see
                :func:`~fantasyworld.inference.trajectories.load_trajectory`.
            translation_scale: our checkpoints: multiplies the requested (relative)
                translations, to bring a file's units to the model's scene scale (default 1).
                ``official_compat`` checkpoints: the official scene scale the translations
                are **divided** by (see :meth:`camera_inputs`).
            scale_depth, depth_estimator: ``official_compat`` only: take that scale from a
                first-frame depth map (array or ``.npy``/``.npz``) or from
                ``depth_estimator(image)`` instead (:meth:`camera_inputs`).
            prompt_embeds, negative_prompt_embeds: cached text embeddings (tensor or
                safetensors file with ``text_emb``) instead of running the text encoder; a
                missing negative with no text encoder uses zeros.
            geometry: ``"final"``, ``"last-step"`` or ``"none"`` (see the sampler).
            cfg_batch: batch the CFG passes in one forward (default) or run them apart.
            vae_tiling: ``"auto"``, True or False.
            cloud_source: fused cloud from ``"depth"`` (depth + predicted cameras, VGGT's
                recommendation) or ``"points"`` (the point-map head).
            conf_percentile, max_points: point-cloud confidence filter and size cap.
            fps: frame rate of the written videos.
            progress: show tqdm bars.
        """
        t0 = time.perf_counter()
        cfg = self.config
        if (num_frames - 1) % VAE_TEMPORAL_STRIDE:
            raise ValueError(f"num_frames must be 4k+1 (the Wan VAE packs 4 frames per latent), got {num_frames}")
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of 16 (8x VAE, 2x2 patches), "
                             f"got {height}x{width}")
        if cloud_source not in CLOUD_SOURCES:
            raise ValueError(f"cloud_source must be one of {CLOUD_SOURCES}, got {cloud_source!r}")
        if cfg.is_i2v and image is None:
            raise ValueError(f"preset {cfg.name} is image-to-video: pass image=")
        timings: dict[str, float] = {}
        negative = WAN_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt

        # 1. camera trajectory -> Plücker rays -> pose features (once)
        start = time.perf_counter()
        cams = self.camera_inputs(camera, num_frames, height, width, image=image, camera_magnitude=camera_magnitude,
                                  camera_format=camera_format, fov_deg=fov_deg, resample_camera=resample_camera,
                                  translation_scale=translation_scale, scale_depth=scale_depth,
                                  depth_estimator=depth_estimator)
        traj = cams.trajectory
        plucker = cams.plucker.to(self.device)
        with torch.no_grad():
            pose_feature = self.model.encode_camera(plucker.to(self.dtype)) if self.model.stage == 2 else None
        timings["camera"] = time.perf_counter() - start

        # 2. text (and image) conditioning
        start = time.perf_counter()
        use_cfg = guidance_scale != 1.0
        text = self._embeddings(prompt_embeds, "prompt_embeds") if prompt_embeds is not None \
            else self.encode_prompt(prompt)
        neg = None
        if use_cfg:
            if negative_prompt_embeds is not None:
                neg = self._embeddings(negative_prompt_embeds, "negative_prompt_embeds")
            elif self.text_encoder is not None:
                neg = self.encode_prompt(negative)
            else:
                neg = torch.zeros_like(text)
        timings["encode_text"] = time.perf_counter() - start
        cond_latent = image_emb = None
        if cfg.is_i2v:
            start = time.perf_counter()
            cond_latent, image_emb, _ = self.encode_image(image, num_frames, height, width)
            timings["encode_image"] = time.perf_counter() - start
        cond = Conditioning(text, neg, pose_feature, cond_latent, image_emb)

        # 3. sampling
        f = (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1
        shape = (1, cfg.latent_channels, f, height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
        noise = initial_noise(shape, seed, self.device)
        res = sample(self.model, noise, cond, num_steps=num_steps, guidance_scale=guidance_scale, shift=shift,
                     geometry=geometry, cfg_batch=cfg_batch, progress=progress)
        timings.update(res.timings)

        # 4. decode
        start = time.perf_counter()
        video = self.decode(res.latents, vae_tiling)[0]
        timings["decode"] = time.perf_counter() - start

        # 5. geometry arrays and the fused cloud
        geo = {k: v[0].cpu().numpy() for k, v in res.geometry.items() if isinstance(v, torch.Tensor)}
        w2c = k = None
        if "pose_enc" in geo:
            w2c, k = cameras_from_pose_enc(geo["pose_enc"], (height, width))
        cloud = None
        start = time.perf_counter()
        if cloud_source == "depth" and "depth" in geo and w2c is not None:
            cloud = fuse_point_cloud(video, geo["depth_conf"], depth=geo["depth"], w2c=w2c, intrinsics=k,
                                     conf_percentile=conf_percentile, max_points=max_points, seed=seed)
        elif cloud_source == "points" and "world_points" in geo:
            cloud = fuse_point_cloud(video, geo["world_points_conf"], world_points=geo["world_points"],
                                     conf_percentile=conf_percentile, max_points=max_points, seed=seed)
        timings["fuse"] = time.perf_counter() - start
        timings["total"] = time.perf_counter() - t0
        settings = {
            "prompt": prompt if prompt_embeds is None else f"<embeddings> {prompt}".strip(),
            "negative_prompt": negative if negative_prompt_embeds is None else "<embeddings>",
            "image": None if image is None else (str(image) if isinstance(image, (str, Path)) else "<array>"),
            "camera": traj.source, "camera_magnitude": traj.extra.get("magnitude", camera_magnitude),
            "translation_scale": cams.translation_scale, "translation_scale_source": cams.scale_source,
            "official_compat": cfg.official_compat, "num_frames": num_frames, "height": height, "width": width,
            "num_steps": num_steps, "guidance_scale": guidance_scale, "shift": shift, "seed": seed,
            "geometry": geometry, "geometry_timestep": res.geometry_timestep, "cfg_batch": cfg_batch,
            "cloud_source": cloud_source, "conf_percentile": conf_percentile, "max_points": max_points,
            "preset": cfg.name, "checkpoint": self.source, "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""), "fps": fps,
        }
        if self.backbone_override:
            settings["backbone_override"] = len(self.backbone_override)
        return GenerationResult(
            video=video, latents=res.latents[0].cpu().numpy(),
            depth=geo.get("depth"), depth_conf=geo.get("depth_conf"),
            world_points=geo.get("world_points"), world_points_conf=geo.get("world_points_conf"),
            pose_enc=geo.get("pose_enc"), w2c=w2c, intrinsics=k,
            requested_w2c=traj.w2c, requested_intrinsics=traj.K, cloud=cloud,
            settings=settings, timings=timings, fps=fps,
        )
