"""Image and depth-map inputs of a generation: first frames for I2V and the official scale.

Accepted forms: a path, a PIL image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` tensor
in [-1, 1] (images); an array/tensor or a ``.npy``/``.npz`` file (depth maps); cached text
embeddings (a tensor or a safetensors file holding ``text_emb``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

__all__ = ["load_depth_map", "load_image", "raw_image"]


def load_image(image: Any, height: int, width: int) -> torch.Tensor:
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


def raw_image(image: Any) -> np.ndarray:
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


def load_text_embeddings(value: Any, what: str, text_dim: int, length: int | None = None) -> torch.Tensor:
    """Cached text embeddings given to a call: a ``(L, D)``/``(1, L, D)`` tensor or a safetensors
    file holding ``text_emb`` (a ``fantasyworld data cache`` clip file) -> ``(1, L, D)`` float32,
    zero-padded or cut to ``length`` tokens when given. ``what`` names the argument in errors."""
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
    if emb.ndim != 3 or emb.shape[-1] != text_dim:
        raise ValueError(f"{what}: expected (L, {text_dim}) embeddings, got {tuple(emb.shape)}")
    if length is not None and emb.shape[1] != length:
        emb = torch.nn.functional.pad(emb[:, :length], (0, 0, 0, max(0, length - emb.shape[1])))
    return emb
