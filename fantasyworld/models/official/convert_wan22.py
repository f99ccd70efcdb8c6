"""Converting both experts of FantasyWorld-Wan2.2-Fun-A14B-Control-Camera, published together."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from fantasyworld.models.config import FantasyWorldConfig, get_preset
from fantasyworld.models.official.convert import WAN22_EXPERTS, ConversionReport, _atomic_publish, convert_official
from fantasyworld.models.official.keys import (
    OFFICIAL_WAN22_PRESETS,
    OfficialCheckpointError,
)
from fantasyworld.models.wan22 import OFFICIAL_LORA_MULTIPLIER


def convert_official_wan22(
    pths: Mapping[str, str | Path],
    wan_dir: str | Path,
    out_dir: str | Path,
    *,
    loras: Mapping[str, str | Path | None] | None = None,
    lora_multiplier: float = OFFICIAL_LORA_MULTIPLIER,
    configs: Mapping[str, FantasyWorldConfig] | None = None,
    backbone_override: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, ConversionReport]:
    """Convert both experts of FantasyWorld-Wan2.2-Fun-A14B-Control-Camera.

    Each of ``high_noise_model.pth`` / ``low_noise_model.pth`` goes through
    :func:`convert_official` with its expert preset (and its reward LoRA, if given, for the
    backbone comparison and recorded for inference), into ``out_dir/high`` and
    ``out_dir/low``. Both are written to a temporary directory first and published
    together: an error in either expert leaves nothing behind.

    Args:
        pths: ``{"high": PATH, "low": PATH}``.
        wan_dir: the Wan2.2-Fun-A14B-Control-Camera directory (``high_noise_model/``, ``low_noise_model/``).
        out_dir: output directory; must not exist or be empty unless ``overwrite``.
        loras: ``{"high": LORA, "low": LORA}`` (either may be missing or ``None``).
        configs: explicit configs per expert instead of the presets (tests use tiny ones).
        others: as :func:`convert_official`.
    """
    out_dir = Path(out_dir)
    missing = [e for e in WAN22_EXPERTS if e not in pths]
    if missing:
        raise OfficialCheckpointError(f"Wan2.2 conversion needs both experts: missing {', '.join(missing)}")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OfficialCheckpointError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite)")
    loras = loras or {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    reports: dict[str, ConversionReport] = {}
    try:
        for expert in WAN22_EXPERTS:
            config = (configs or {}).get(expert) or get_preset(OFFICIAL_WAN22_PRESETS[expert])
            if config.expert != expert:
                raise OfficialCheckpointError(f"config {config.name} is not the {expert}-noise expert "
                                              f"(expert={config.expert!r})")
            if log:
                log(f"--- {expert}-noise expert")
            reports[expert] = convert_official(
                pths[expert], wan_dir, tmp / expert, config=config, backbone_override=backbone_override,
                dtype=dtype, log=log, lora=loras.get(expert), lora_multiplier=lora_multiplier)
        _atomic_publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for expert, report in reports.items():
        report.out_dir = out_dir / expert
    return reports
