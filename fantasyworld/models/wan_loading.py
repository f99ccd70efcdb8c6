"""Load a frozen Wan2.1 transformer from a local directory.

Two layouts are recognised (no network access, ever):

* **diffusers** (``Wan-AI/Wan2.1-*-Diffusers``): ``ROOT/transformer/config.json`` plus
  ``diffusion_pytorch_model.safetensors`` or shards listed in
  ``diffusion_pytorch_model.safetensors.index.json``. ``ROOT`` may also be the
  ``transformer/`` folder itself.
* **original Wan** (``Wan-AI/Wan2.1-*``): ``ROOT/config.json`` with Wan's own keys
  (``dim``, ``num_heads``, ``model_type`` ...) and ``diffusion_pytorch_model*.safetensors``
  shards with Wan's key names (``blocks.0.self_attn.q.weight`` ...), converted with
  diffusers' ``convert_wan_transformer_to_diffusers``.

Loading is strict: missing, unexpected or mis-shaped keys raise :class:`CheckpointError`
naming them. Modules listed in ``WanTransformer3DModel._keep_in_fp32_modules`` stay fp32
whatever ``dtype`` is asked for.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file, save_file

from fantasyworld.errors import CheckpointError
from fantasyworld.models.wan_backbone import build_wan_transformer, rebuild_rope


def describe_key_mismatch(
    missing: list[str], unexpected: list[str], shape_errors: list[str] | None = None, limit: int = 12
) -> str:
    """Human-readable summary of a state-dict mismatch, listing the first ``limit`` names."""
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shape_errors or [])):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
            parts.append(f"{len(items)} {label}: {shown}")
    return "; ".join(parts)


def check_state_dict(
    expected: dict[str, torch.Size], given: dict[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointError` unless ``given`` has exactly the expected keys and shapes."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shape_errors = [
        f"{k} (checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k])})"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or shape_errors:
        raise CheckpointError(f"{source}: " + describe_key_mismatch(missing, unexpected, shape_errors))


# ----------------------------------------------------------------------------- layouts
def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no diffusion_pytorch_model*.safetensors found")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: shard listed in the index is missing")
    return files


def _read_shards(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except Exception as exc:  # safetensors raises several error types
            raise CheckpointError(f"{f}: unreadable safetensors file ({exc})") from exc
        dup = set(part) & set(state)
        if dup:
            raise CheckpointError(f"{f}: keys repeated across shards: {sorted(dup)[:5]}")
        state.update(part)
    return state


def wan_config_to_diffusers(cfg: dict) -> dict:
    """Original Wan ``config.json`` (``dim``, ``num_heads`` ...) -> diffusers kwargs."""
    try:
        dim, heads = int(cfg["dim"]), int(cfg["num_heads"])
        i2v = cfg.get("model_type", "t2v") in ("i2v", "flf2v")
        return dict(
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
            attention_head_dim=dim // heads, in_channels=int(cfg["in_dim"]),
            out_channels=int(cfg["out_dim"]), text_dim=int(cfg.get("text_dim", 4096)),
            freq_dim=int(cfg.get("freq_dim", 256)), ffn_dim=int(cfg["ffn_dim"]),
            num_layers=int(cfg["num_layers"]), cross_attn_norm=bool(cfg.get("cross_attn_norm", True)),
            qk_norm="rms_norm_across_heads" if cfg.get("qk_norm", True) else None,
            eps=float(cfg.get("eps", 1e-6)),
            # Wan's CLIP image tokens are 1280 wide; ``image_dim`` is our extension for tiny tests.
            image_dim=int(cfg.get("image_dim", 1280)) if i2v else None,
            added_kv_proj_dim=dim if i2v else None, rope_max_seq_len=1024, pos_embed_seq_len=None,
        )
    except KeyError as exc:
        raise CheckpointError(f"Wan config.json lacks required key {exc}") from exc


def diffusers_config_to_wan(cfg: dict) -> dict:
    """Inverse of :func:`wan_config_to_diffusers` (used to write the original layout)."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return {
        "_class_name": "WanModel", "model_type": "i2v" if cfg.get("image_dim") else "t2v",
        "patch_size": list(cfg["patch_size"]), "text_len": 512, "in_dim": cfg["in_channels"],
        "dim": dim, "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"], "text_dim": cfg["text_dim"],
        "out_dim": cfg["out_channels"], "num_heads": cfg["num_attention_heads"],
        "num_layers": cfg["num_layers"], "window_size": [-1, -1], "qk_norm": cfg["qk_norm"] is not None,
        "cross_attn_norm": cfg["cross_attn_norm"], "eps": cfg["eps"],
        **({"image_dim": cfg["image_dim"]} if cfg.get("image_dim") not in (None, 1280) else {}),
    }


# diffusers name -> original Wan name, applied in order (inverse of diffusers' converter).
_TO_WAN = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn2", "cross_attn"), ("attn1", "self_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm__swap."), (".norm3.", ".norm2."), (".norm__swap.", ".norm3."),
)


def diffusers_keys_to_wan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers Wan state dict to the original Wan key names."""
    out = {}
    for key, value in state.items():
        new = key
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.startswith("proj_out."):
            new = new.replace("proj_out.", "head.head.", 1)
        elif new.endswith("scale_shift_table"):
            new = new.replace("scale_shift_table", "modulation")
        for a, b in _TO_WAN:
            new = new.replace(a, b)
        out[new] = value
    return out


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """Return ``("diffusers" | "wan", folder holding the weights)`` or raise naming the path."""
    root = Path(root)
    if not root.exists():
        raise CheckpointError(f"{root}: backbone directory does not exist")
    for folder in (root / "transformer", root):
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{cfg}: invalid JSON ({exc})") from exc
            if data.get("_class_name") == "WanTransformer3DModel":
                return "diffusers", folder
            if "dim" in data and "num_heads" in data:
                return "wan", folder
    raise CheckpointError(
        f"{root}: not a Wan2.1 checkpoint directory (expected transformer/config.json with "
        "_class_name WanTransformer3DModel, or a Wan config.json with dim/num_heads)"
    )


def read_wan_config(root: str | Path) -> dict:
    """The diffusers kwargs of the transformer stored under ``root`` (either layout)."""
    layout, folder = detect_layout(root)
    data = json.loads((folder / "config.json").read_text())
    if layout == "wan":
        return wan_config_to_diffusers(data)
    allowed = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}
    cfg = {k: v for k, v in data.items() if not k.startswith("_") and k in allowed}
    cfg["patch_size"] = tuple(cfg.get("patch_size", (1, 2, 2)))
    return cfg


def load_wan_state_dict(root: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``(diffusers kwargs, diffusers-named state dict)`` from either layout."""
    layout, folder = detect_layout(root)
    cfg = read_wan_config(root)
    state = _read_shards(_safetensors_files(folder))
    if layout == "wan":
        state = convert_wan_transformer_to_diffusers(dict(state))
    return cfg, state


def fp32_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters (relative to ``model``) that must stay float32.

    Any module in the tree (not only the root) may declare ``_keep_in_fp32_modules``, a tuple
    of sub-module names, as diffusers' models do: a parameter is kept if one of its path
    components below such a module is listed there. So the Wan transformer's own list
    (``scale_shift_table``, ``time_embedder``, norms ...) and the geometry branch's
    (``time_embedding``, ``time_projection``) are both honoured when the cast starts at the
    :class:`~fantasyworld.models.fantasyworld.FantasyWorldModel` root.
    """
    keep: set[str] = set()
    for prefix, module in model.named_modules():
        names = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
        if not names:
            continue
        for rel, _ in module.named_parameters():
            if any(k in rel.split(".") for k in names):
                keep.add(f"{prefix}.{rel}" if prefix else rel)
    return keep


def cast_keeping_fp32(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating parameters to ``dtype`` in place, except :func:`fp32_parameter_names`."""
    keep = fp32_parameter_names(model)
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        target = torch.float32 if name in keep else dtype
        if param.dtype != target:
            param.data = param.data.to(target)
    return model


def load_wan_transformer(
    root: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    expected_config: dict | None = None,
) -> WanTransformer3DModel:
    """Load a frozen Wan transformer strictly from ``root`` (either layout).

    If ``expected_config`` is given (a preset's ``wan`` dict), the stored config must
    agree with it on every architectural key; a mismatch names the keys.
    """
    cfg, state = load_wan_state_dict(root)
    if expected_config is not None:
        diff = [
            f"{k}: checkpoint {cfg.get(k)!r} vs preset {v!r}"
            for k, v in expected_config.items()
            if k in cfg and (tuple(v) if isinstance(v, list) else v) != cfg.get(k)
        ]
        if diff:
            raise CheckpointError(f"{root}: transformer config differs from the preset: " + "; ".join(diff))
    model = build_wan_transformer(cfg, device="meta")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(expected, state, str(root))
    model.load_state_dict(state, strict=True, assign=True)
    rebuild_rope(model, device)  # rope tables are not in the state dict: still on meta
    model = model.to(device)
    cast_keeping_fp32(model, dtype)
    model.requires_grad_(False)
    return model.eval()


def save_wan_transformer(
    model: WanTransformer3DModel, root: str | Path, layout: str = "diffusers", max_shard_bytes: int | None = None
) -> Path:
    """Write ``model`` in the ``diffusers`` or original ``wan`` layout (tests, exports)."""
    root = Path(root)
    if layout == "diffusers":
        folder = root / "transformer"
        model.save_pretrained(folder, safe_serialization=True,
                              max_shard_size=max_shard_bytes or "10GB")
        return folder
    if layout != "wan":
        raise ValueError(f"unknown layout {layout!r}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(diffusers_config_to_wan(dict(model.config)), indent=2))
    state = {k: v.contiguous() for k, v in diffusers_keys_to_wan(model.state_dict()).items()}
    keys = sorted(state)
    n_shards = 1
    if max_shard_bytes:
        total = sum(v.numel() * v.element_size() for v in state.values())
        n_shards = max(1, -(-total // max_shard_bytes))
    chunks = [keys[i::n_shards] for i in range(n_shards)]
    weight_map = {}
    for i, chunk in enumerate(chunks, start=1):
        name = (f"diffusion_pytorch_model-{i:05d}-of-{n_shards:05d}.safetensors"
                if n_shards > 1 else "diffusion_pytorch_model.safetensors")
        save_file({k: state[k] for k in chunk}, str(root / name))
        weight_map.update({k: name for k in chunk})
    if n_shards > 1:
        (root / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return root
