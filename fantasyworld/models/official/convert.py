"""Converting the released ``model.pth`` into a FantasyWorld checkpoint (and back).

The converter never executes pickled code: ``model.pth`` is read with
``torch.load(weights_only=True)`` (memory-mapped when the file is in the zip format), so a
file that needs anything beyond tensors and plain containers is refused.

The Wan weights are not part of a FantasyWorld checkpoint. The official file carries
copies of the IRG Wan blocks (``IRGBlock.i.x_dit``; ~9.7B parameters); the converter
compares every one of them (and any ``pipe.dit`` tensor present) with the Wan base
weights and refuses when one differs, because a fine-tuned backbone is a different
model. With ``backbone_override=True`` the differing tensors are written next to the
checkpoint as ``wan_override.safetensors`` (diffusers names) instead, to be applied with
:func:`apply_backbone_override` after loading the base transformer.

The key mapping lives in :mod:`fantasyworld.models.official.keys`; the official inference's
camera quirks in :mod:`fantasyworld.inference.official_cameras`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fantasyworld.errors import CheckpointError
from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.lora import LoraTerm, merged_weight, read_lora
from fantasyworld.models.official.keys import (
    CONFIG_FILE,
    OFFICIAL_PRESET,
    OVERRIDE_FILE,
    REPORT_FILE,
    WEIGHTS_FILE,
    KeyTarget,
    MappingResult,
    OfficialCheckpointError,
    OfficialKeyMap,
    map_official_keys,
    our_reference_shapes,
)
from fantasyworld.models.official.reading import (  # noqa: F401  (re-exported)
    _WRAPPER_KEYS,
    WanBaseReader,
    _classify_load_error,
    _looks_like_legacy_torch,
    read_official_state_dict,
)
from fantasyworld.models.wan22 import CONTROL_PREFIX, OFFICIAL_LORA_MULTIPLIER, check_wan22_config, expert_dir
from fantasyworld.models.wan_loading import (
    describe_key_mismatch,
    read_wan_config,
)


def tensors_equal_at_common_precision(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    """Exact equality after casting both to the less precise of their dtypes (the official
    file is bf16, the Wan base fp32: a bf16 copy of the base compares equal).

    Returns ``(equal, max abs difference in float32)``.
    """
    if a.shape != b.shape:
        return False, float("inf")
    if a.dtype != b.dtype:
        low = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(b.dtype).eps else b.dtype
        a, b = a.to(low), b.to(low)
    if torch.equal(a, b):
        return True, 0.0
    return False, float((a.float() - b.float()).abs().max())


@dataclass
class BackboneDifference:
    """One official Wan tensor that differs from the Wan base (or is absent there)."""

    official_key: str
    ours: str
    max_abs_diff: float
    reason: str = "differs"

    def __str__(self) -> str:
        if self.reason != "differs":
            return f"{self.official_key} ({self.reason})"
        return f"{self.official_key} (max |diff| {self.max_abs_diff:.3g})"


def equal_up_to_one_rounding(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    """Equality within one rounding step of the less precise dtype, element by element:
    ``|a - b| <= eps * max(|a|, |b|)`` (for a LoRA-merged weight, whose merge order of
    operations in the official script is not known to the last bit).

    Returns ``(close, max abs difference in float32)``.
    """
    if a.shape != b.shape:
        return False, float("inf")
    eps = max(torch.finfo(a.dtype).eps, torch.finfo(b.dtype).eps)
    a32, b32 = a.float(), b.float()
    diff = (a32 - b32).abs()
    close = bool((diff <= eps * torch.maximum(a32.abs(), b32.abs())).all())
    return close, float(diff.max()) if diff.numel() else 0.0


def compare_backbone(
    state: Mapping[str, torch.Tensor], wan_targets: Mapping[str, KeyTarget], reader: WanBaseReader,
    lora: Mapping[str, LoraTerm] | None = None, lora_multiplier: float = OFFICIAL_LORA_MULTIPLIER,
) -> list[BackboneDifference]:
    """Compare each official Wan DiT tensor with the base; return those that differ.

    With ``lora`` (original Wan weight name -> term), the base of each LoRA target is
    merged first (``W + m * alpha / r * up @ down`` in float32) and compared within one
    rounding step (:func:`equal_up_to_one_rounding`); every other tensor must be equal.
    """
    diffs = []
    for key, target in wan_targets.items():
        assert target.wan_name is not None and target.ours is not None
        if not reader.has(target.wan_name):
            diffs.append(BackboneDifference(key, target.ours, float("inf"), "absent from the Wan base files"))
            continue
        base = reader.get(target.wan_name)
        term = (lora or {}).get(target.wan_name)
        if term is not None:
            equal, delta = equal_up_to_one_rounding(state[key], merged_weight(base.float(), term, lora_multiplier))
        else:
            equal, delta = tensors_equal_at_common_precision(state[key], base)
        if not equal:
            diffs.append(BackboneDifference(key, target.ours, delta))
    return diffs


def check_wan_config(wan_dir: str | Path, config: FantasyWorldConfig) -> None:
    """Raise :class:`OfficialCheckpointError` unless the Wan dir's transformer is the preset's."""
    cfg = read_wan_config(wan_dir)
    diff = [f"{k}: backbone {cfg.get(k)!r} vs preset {v!r}" for k, v in config.wan.items()
            if k in cfg and (tuple(v) if isinstance(v, list) else v) != cfg.get(k)]
    if diff:
        raise OfficialCheckpointError(f"{wan_dir}: the Wan transformer is not the one the official model was "
                                      f"built on: " + "; ".join(diff))


# ------------------------------------------------------------------------------ convert
@dataclass
class ConversionReport:
    """What :func:`convert_official` did."""

    out_dir: Path
    mapping: MappingResult
    notes: list[str] = field(default_factory=list)
    filled_compat_only: list[str] = field(default_factory=list)
    backbone_checked: int = 0
    backbone_overridden: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        m = self.mapping
        return {
            "out_dir": str(self.out_dir),
            "groups": {g: {"keys": c.keys, "params": c.params} for g, c in m.groups.items() if c.keys},
            "converted_keys": len(m.fantasyworld),
            "wan_tensors_checked_equal_to_base": self.backbone_checked - len(self.backbone_overridden),
            "wan_tensors_overridden": self.backbone_overridden,
            "not_converted_wan_components": len(m.wan_other),
            "filled_compatibility_only_keys": self.filled_compat_only,
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        lines = [f"converted {len(self.mapping.fantasyworld)} official keys into {self.out_dir}",
                 self.mapping.summary()]
        lines.append(f"  Wan DiT tensors compared with the base: {self.backbone_checked} "
                     f"({len(self.backbone_overridden)} differ, written as an override)")
        if self.filled_compat_only:
            lines.append(f"  compatibility-only keys absent from the file, zero-filled: {len(self.filled_compat_only)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fail_mapping(source: Path, res: MappingResult) -> None:
    parts = []
    if res.unmapped:
        text = describe_key_mismatch([], res.unmapped, limit=20)
        parts.append(text.replace("unexpected keys", "unmapped official keys"))
    if res.shape_errors:
        parts.append(describe_key_mismatch([], [], res.shape_errors, limit=20))
    hard_missing = sorted(set(res.missing) - set(res.missing_compat_only))
    if hard_missing:
        parts.append(describe_key_mismatch(hard_missing, [], limit=20).replace(
            "missing keys", "keys of our model that no official key provides"))
    raise OfficialCheckpointError(f"{source}: cannot convert: " + "; ".join(parts))


def check_tensor_values(source: Path, state: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
    """Refuse a file whose structure is intact but whose content is not: every official tensor
    named in ``keys`` (official key -> our key) must be floating point (the released file is
    bf16) and hold only finite values. Shapes were already checked against our model by the
    mapping. Raises :class:`OfficialCheckpointError` naming the file, the keys and the count."""
    wrong_dtype, non_finite = [], []
    for key in sorted(keys):
        t = state[key]
        if not t.is_floating_point():
            wrong_dtype.append(f"{key} ({t.dtype})")
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            non_finite.append(f"{key} ({bad} of {t.numel()})")
    if wrong_dtype:
        raise OfficialCheckpointError(
            f"{source}: cannot convert: {len(wrong_dtype)} tensor(s) are not floating point (weights are bf16/fp16/"
            f"fp32): {', '.join(wrong_dtype[:8])}")
    if non_finite:
        raise OfficialCheckpointError(
            f"{source}: cannot convert: {len(non_finite)} tensor(s) hold NaN/inf values (a corrupted file; "
            f"download it again): {', '.join(non_finite[:8])}")


def _atomic_publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    backup = None
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif overwrite:
            backup = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(backup)
        else:
            raise OfficialCheckpointError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite)")
    tmp.rename(out_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def convert_official(
    model_pth: str | Path,
    wan_dir: str | Path,
    out_dir: str | Path,
    *,
    preset: str = OFFICIAL_PRESET,
    config: FantasyWorldConfig | None = None,
    backbone_override: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    lora: str | Path | None = None,
    lora_multiplier: float = OFFICIAL_LORA_MULTIPLIER,
) -> ConversionReport:
    """Convert the released ``model.pth`` (or one Wan2.2 expert's ``.pth``) into our checkpoint directory.

    Writes ``out_dir/config.json`` (the preset with ``official_compat=True``),
    ``out_dir/fantasyworld.safetensors`` (stage-2 keys, :meth:`FantasyWorldModel.save_fantasyworld`
    format, loadable with ``load_fantasyworld(path, stage=2)``), ``out_dir/conversion_report.json``
    and, only with ``backbone_override``, ``out_dir/wan_override.safetensors``.

    Args:
        model_pth: the official weights (a state dict saved with ``torch.save``).
        wan_dir: the Wan2.1-I2V-14B-480P directory (original or diffusers layout); the
            official Wan block copies are compared with it tensor by tensor. For a Wan2.2
            expert preset: the Wan2.2-Fun-A14B-Control-Camera directory (its
            ``{expert}_noise_model/`` folder is used, :mod:`fantasyworld.models.wan22`).
        out_dir: output directory; must not exist or be empty unless ``overwrite``.
        preset: our preset (the structure must match the official model).
        config: an explicit config instead of ``preset`` (tests use tiny ones);
            ``official_compat`` is set on it.
        backbone_override: when official Wan tensors differ from the base, write them as
            an override file instead of refusing.
        dtype: cast the FantasyWorld weights (default: keep the file's dtype, bf16).
        overwrite: replace an existing non-empty ``out_dir``.
        log: progress callback (e.g. ``print``).
        lora: the LoRA the official merged into this model's base before copying the Wan
            blocks (Wan2.2: the expert's reward LoRA); the base is merged with it (times
            ``lora_multiplier``) before the comparison, and ``config.json`` records the
            file name and multiplier (``extra["base_lora"]``) so inference merges it too.

    Raises:
        OfficialCheckpointError: unreadable/unsafe file, unmapped keys on either side, shape
            mismatches, a tensor that is not floating point or holds NaN/inf, a backbone that
            differs from the base (without ``backbone_override``), a Wan dir of another
            architecture. Nothing is written then.
    """
    t0 = time.time()
    say = log or (lambda _msg: None)
    model_pth, out_dir = Path(model_pth), Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OfficialCheckpointError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite)")
    config = (config or get_preset(preset)).replace(official_compat=True)
    if lora is not None:
        config = config.replace(extra={**config.extra, "base_lora": {"file": Path(lora).name,
                                                                      "multiplier": lora_multiplier}})

    say(f"reading {model_pth} (weights only, memory-mapped)")
    state, notes = read_official_state_dict(model_pth)
    keymap = OfficialKeyMap(config)
    reference = our_reference_shapes(config)
    res = map_official_keys({k: v.shape for k, v in state.items()}, config, keymap, reference)
    if not res.ok:
        _fail_mapping(model_pth, res)
    say(f"mapped {len(res.fantasyworld)} FantasyWorld keys, {len(res.wan)} Wan DiT keys, "
        f"{len(res.wan_other)} text/image encoder and VAE keys (not converted)")
    if res.wan_other:
        notes.append(f"{len(res.wan_other)} text encoder / image encoder / VAE tensors in the file were not "
                     "converted or compared; our inference loads those from the Wan directory")

    if config.has_control_adapter:
        try:
            wan_dir = expert_dir(wan_dir, config.expert)
            check_wan22_config(wan_dir, config)
        except CheckpointError as exc:
            raise OfficialCheckpointError(str(exc)) from exc
    else:
        check_wan_config(wan_dir, config)
    terms = None
    if lora is not None:
        names = set(keymap.wan_to_diffusers) | {k for k in reference[1] if k.startswith(CONTROL_PREFIX)}
        terms = read_lora(lora, names)
        say(f"merging {len(terms)} LoRA updates from {lora} (x{lora_multiplier}) into the base for the comparison")
        notes.append(f"base compared after merging {Path(lora).name} x{lora_multiplier} ({len(terms)} weights)")
    reader = WanBaseReader(wan_dir, keymap)
    try:
        say(f"comparing {len(res.wan)} Wan DiT tensors with the base in {wan_dir}")
        diffs = compare_backbone(state, res.wan, reader, terms, lora_multiplier)
    finally:
        reader.close()
    if diffs and not backbone_override:
        shown = describe_key_mismatch([str(d) for d in diffs], [], limit=20).split(": ", 1)[1]
        raise OfficialCheckpointError(
            f"{model_pth}: {len(diffs)} Wan backbone tensors differ from the base weights in {wan_dir} (a fine-tuned "
            f"backbone is a different model; refusing to drop it): {shown}. Check --wan-dir, or pass "
            "--backbone-override to write them as wan_override.safetensors next to the checkpoint.")
    absent = [d for d in diffs if d.reason != "differs"]
    if absent:
        notes.append(f"{len(absent)} official Wan tensors are absent from the base files: written as an override")

    check_tensor_values(model_pth, state, res.fantasyworld)
    ours_state: dict[str, torch.Tensor] = {res.fantasyworld[k]: state[k] for k in res.fantasyworld}
    fill_dtype = next(iter(ours_state.values())).dtype if ours_state else torch.float32
    ckpt_shapes = reference[0]
    for key in res.missing_compat_only:
        ours_state[key] = torch.zeros(ckpt_shapes[key], dtype=fill_dtype)
    if res.missing_compat_only:
        notes.append(f"zero-filled {len(res.missing_compat_only)} compatibility-only keys absent from the file "
                     "(no path to any output): " + ", ".join(res.missing_compat_only[:8]))
    if dtype is not None:
        ours_state = {k: v.to(dtype) for k, v in ours_state.items()}
    check_tensor_values(model_pth, state, {d.official_key: d.ours for d in diffs})
    override = {_override_name(d.ours): state[d.official_key].contiguous() for d in diffs}

    report = ConversionReport(out_dir=out_dir, mapping=res, notes=notes, filled_compat_only=res.missing_compat_only,
                              backbone_checked=len(res.wan), backbone_overridden=[d.official_key for d in diffs])
    _write_checkpoint(config, ours_state, override, out_dir, overwrite, model_pth, report, say)
    report.seconds = time.time() - t0
    return report


def _override_name(ours: str) -> str:
    """Name in ``wan_override.safetensors``: diffusers names for the transformer, the
    control adapter's keys with their ``control_adapter.`` prefix."""
    return ours if ours.startswith(CONTROL_PREFIX) else ours[len("transformer."):]


def _write_checkpoint(
    config: FantasyWorldConfig,
    ours_state: dict[str, torch.Tensor],
    override: dict[str, torch.Tensor],
    out_dir: Path,
    overwrite: bool,
    source: Path,
    report: ConversionReport,
    say: Callable[[str], None],
) -> None:
    from fantasyworld.models.fantasyworld import FantasyWorldModel

    model = FantasyWorldModel(config, device="meta")
    expected = set(model.stage_state_keys(2))
    if set(ours_state) != expected:  # guaranteed by the mapping; keep the invariant explicit
        raise OfficialCheckpointError(describe_key_mismatch(sorted(expected - set(ours_state)),
                                                            sorted(set(ours_state) - expected)))
    model.load_state_dict(ours_state, strict=False, assign=True)
    created: list[Path] = []
    parent = out_dir.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        say(f"writing {len(ours_state)} tensors to {out_dir / WEIGHTS_FILE}")
        config.save(tmp / CONFIG_FILE)
        variant = ("Wan2.2-Fun-A14B-Control-Camera " + config.expert if config.has_control_adapter
                   else "Wan2.1-I2V-14B-480P")
        model.save_fantasyworld(tmp / WEIGHTS_FILE, stage=2,
                                metadata={"source": f"official FantasyWorld-{variant}",
                                          "source_file": source.name, "official_compat": "true"})
        if override:
            save_file(override, str(tmp / OVERRIDE_FILE), metadata={"format": "fantasyworld-wan-override",
                                                                    "naming": "diffusers"})
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        with safe_open(str(tmp / WEIGHTS_FILE), framework="pt") as fh:  # read back the key set
            written = set(fh.keys())
        if written != expected:
            raise OfficialCheckpointError(f"{tmp / WEIGHTS_FILE}: written keys differ from the model's")
        _atomic_publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # parents we made, innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise


# ------------------------------------------------------------------------------ inverse
def ours_to_official(
    fantasyworld_state: Mapping[str, torch.Tensor],
    config: FantasyWorldConfig,
    wan_state: Mapping[str, torch.Tensor] | None = None,
    wan_blocks: str = "irg",
) -> dict[str, torch.Tensor]:
    """Our weights -> the official key layout (the inverse of the converter).

    Args:
        fantasyworld_state: our FantasyWorld keys (``geometry.*``, ``interactions.*`` ...).
        config: the architecture.
        wan_state: optional Wan transformer weights in diffusers naming, with or without the
            ``transformer.`` prefix (e.g. ``model.transformer.state_dict()``).
        wan_blocks: which Wan tensors to emit: ``"irg"`` (the ``IRGBlock.N.x_dit`` copies,
            as in the released ``model.pth``), ``"all"`` (plus ``pipe.dit.*``) or ``"none"``.
    """
    if wan_blocks not in ("irg", "all", "none"):
        raise ValueError(f"wan_blocks must be 'irg', 'all' or 'none', got {wan_blocks!r}")
    keymap = OfficialKeyMap(config)
    out = {keymap.to_official(k): v for k, v in fantasyworld_state.items()}
    if wan_state is not None and wan_blocks != "none":
        for k, v in wan_state.items():
            name = keymap.to_official(k if k.startswith(("transformer.", "control_adapter.")) else f"transformer.{k}")
            if wan_blocks == "all" or name.startswith("IRGBlock."):
                out[name] = v
    return out


def apply_backbone_override(checkpoint_dir: str | Path, transformer: torch.nn.Module,
                            control_adapter: torch.nn.Module | None = None) -> list[str]:
    """Copy ``wan_override.safetensors`` (if the converter wrote one) into a loaded Wan
    transformer (and, for Wan2.2, its control adapter: keys ``control_adapter.*``) in place;
    returns the overridden names (empty when there is no override)."""
    path = Path(checkpoint_dir) / OVERRIDE_FILE
    if not path.is_file():
        return []
    override = load_file(str(path))
    params = dict(transformer.named_parameters())
    if control_adapter is not None:
        params.update({CONTROL_PREFIX + k: v for k, v in control_adapter.named_parameters()})
    missing = sorted(set(override) - set(params))
    bad = [f"{k} ({tuple(v.shape)} vs {tuple(params[k].shape)})" for k, v in override.items()
           if k in params and v.shape != params[k].shape]
    if missing or bad:
        raise CheckpointError(f"{path}: " + describe_key_mismatch([], missing, bad))
    with torch.no_grad():
        for k, v in override.items():
            params[k].copy_(v.to(params[k].dtype))
    return sorted(override)


# ------------------------------------------------------------------------------ Wan2.2
WAN22_EXPERTS = ("high", "low")
