"""Monocular depth from transformers models loaded from a local directory.

``depth-anything``: ``DepthAnythingForDepthEstimation`` (Depth Anything V2; the relative
checkpoints predict disparity up to scale and shift -> ``inverse_depth``; the metric ones,
``depth_estimation_type: metric``, predict metres -> metric ``depth``).
``depth-pro``: ``DepthProForDepthEstimation`` (canonical inverse depth and, with its field
of view head, metric depth as its image processor computes it:
``depth = f / (W * prediction)``, ``f = W / (2 tan(fov / 2))``).

The directory is a ``save_pretrained`` folder (``config.json`` + safetensors), loaded with
``local_files_only=True``: nothing is downloaded. The images are prepared as the models'
image processors do, in torch (batched, on the GPU when there is one): resized to the
processor's size (``preprocessor_config.json`` when the folder has one; else 518 px with
the aspect ratio kept and sides a multiple of 14 for Depth Anything, 1536 x 1536 for
Depth Pro), scaled to [0, 1] and normalised with its mean and std. The prediction is
resized back to the frame size (bilinear).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fantasyworld.data.annotate.estimators import ClipContext, DepthPrediction
from fantasyworld.errors import EstimatorError

MODEL_TYPES = {"depth-anything": "depth_anything", "depth-pro": "depth_pro"}
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _constrain(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def input_size(height: int, width: int, size: tuple[int, int], keep_aspect: bool, multiple: int) -> tuple[int, int]:
    """Network input size for a ``height x width`` frame, as the DPT image processor
    computes it: with ``keep_aspect`` the scale of the side closer to its target size is
    used for both, then each side is rounded to a multiple of ``multiple``."""
    sh, sw = size[0] / height, size[1] / width
    if keep_aspect:
        if abs(1 - sw) < abs(1 - sh):
            sh = sw
        else:
            sw = sh
    return _constrain(sh * height, multiple), _constrain(sw * width, multiple)


def check_model_dir(name: str, model_dir: str | Path | None) -> dict:
    """The ``config.json`` of a model folder for ``--depth name``, checked without loading
    the weights; raises :class:`EstimatorError` (missing folder, no config, other model)."""
    if name not in MODEL_TYPES:
        raise EstimatorError(f"--depth {name!r}: not a transformers depth model ({', '.join(MODEL_TYPES)})")
    if model_dir is None:
        raise EstimatorError(f"--depth {name}: give the model folder with --depth-model DIR (a local "
                             f"save_pretrained folder; nothing is downloaded)")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EstimatorError(f"--depth-model {model_dir}: folder does not exist")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise EstimatorError(f"--depth-model {model_dir}: no config.json (not a transformers model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EstimatorError(f"--depth-model {cfg_path}: not valid JSON ({exc})") from None
    want = MODEL_TYPES[name]
    got = cfg.get("model_type") if isinstance(cfg, dict) else None
    if got != want:
        other = {v: k for k, v in MODEL_TYPES.items()}.get(got)
        hint = f" (use --depth {other})" if other else ""
        raise EstimatorError(f"--depth-model {model_dir}: holds a {got!r} model, --depth {name} needs "
                             f"{want!r}{hint}")
    return cfg


class TransformersDepth:
    """A Depth Anything V2 or Depth Pro model from ``model_dir`` (module docstring).

    Raises:
        EstimatorError: the folder does not exist, has no ``config.json``, holds another
            model type, or its weights do not load.
    """

    def __init__(self, name: str, model_dir: str | Path | None, device: str = "cpu", batch_size: int = 8):
        check_model_dir(name, model_dir)
        model_dir = Path(model_dir)
        want = MODEL_TYPES[name]
        import torch
        from transformers import DepthAnythingForDepthEstimation, DepthProForDepthEstimation

        cls = DepthAnythingForDepthEstimation if name == "depth-anything" else DepthProForDepthEstimation
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one progress bar (the clips') is enough
        try:
            self.model = cls.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EstimatorError(f"--depth-model {model_dir}: cannot load the {want} weights ({exc})") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.name = name
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        self.batch_size = max(1, int(batch_size))
        self.metric = name == "depth-anything" and getattr(self.model.config, "depth_estimation_type",
                                                            "relative") == "metric"
        proc = {}
        proc_path = model_dir / "preprocessor_config.json"
        if proc_path.is_file():
            try:
                proc = json.loads(proc_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise EstimatorError(f"--depth-model {proc_path}: not valid JSON ({exc})") from None
        if name == "depth-anything":
            default_size, keep, multiple, (mean, std) = (518, 518), True, 14, _IMAGENET
        else:
            cfg_obj = self.model.config
            side = int(round(cfg_obj.patch_size / min(cfg_obj.scaled_images_ratios)))
            default_size, keep, multiple, (mean, std) = (side, side), False, 1, ([0.5] * 3, [0.5] * 3)
        size = proc.get("size") or {}
        self.size = (int(size.get("height", default_size[0])), int(size.get("width", default_size[1])))
        self.keep_aspect = bool(proc.get("keep_aspect_ratio", keep))
        self.multiple = int(proc.get("ensure_multiple_of", multiple) or 1)
        self.mean = torch.tensor(proc.get("image_mean", mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(proc.get("image_std", std), dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, frames: np.ndarray, context: ClipContext | None = None) -> DepthPrediction:
        import torch
        import torch.nn.functional as F

        t, h, w = frames.shape[:3]
        in_h, in_w = input_size(h, w, self.size, self.keep_aspect, self.multiple)
        outs = []
        use_amp = self.device.type == "cuda"
        with torch.no_grad():
            for i in range(0, t, self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(frames[i:i + self.batch_size])).to(self.device)
                x = x.permute(0, 3, 1, 2).float().div_(255.0)
                x = F.interpolate(x, size=(in_h, in_w), mode="bicubic", align_corners=False,
                                  antialias=in_h < h or in_w < w).clamp_(0.0, 1.0)
                x = (x - self.mean.to(self.device)) / self.std.to(self.device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    out = self.model(pixel_values=x)
                pred = out.predicted_depth.float()
                if pred.ndim == 4:
                    pred = pred[:, 0]
                if self.name == "depth-pro":
                    fov = getattr(out, "field_of_view", None)
                    if fov is not None:
                        focal = 0.5 * w / torch.tan(0.5 * torch.deg2rad(fov.float().reshape(-1)))
                        pred = pred * (w / focal)[:, None, None]
                    pred = F.interpolate(pred[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                    pred = 1.0 / pred.clamp(min=1e-4, max=1e4)
                else:
                    pred = F.interpolate(pred[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                outs.append(pred.cpu().numpy())
        values = np.concatenate(outs).astype(np.float32)
        if self.name == "depth-pro":
            metric = getattr(self.model.config, "use_fov_model", False)
            return DepthPrediction(values, "depth", metric=bool(metric))
        return DepthPrediction(values, "depth" if self.metric else "inverse_depth", metric=self.metric)
