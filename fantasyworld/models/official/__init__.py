"""The released FantasyWorld weights: Wan2.1-I2V-14B-480P (``model.pth``) and
Wan2.2-Fun-A14B-Control-Camera (``high_noise_model.pth`` + ``low_noise_model.pth``).

* :mod:`~fantasyworld.models.official.keys` - where each official key goes (groups, the
  key map, the manifest of the official model object);
* :mod:`~fantasyworld.models.official.reading` - reading ``model.pth`` safely (weights only)
  and the Wan base weights;
* :mod:`~fantasyworld.models.official.convert` - checking the Wan copies against the base,
  writing a FantasyWorld checkpoint, and the inverse mapping;
* :mod:`~fantasyworld.models.official.convert_wan22` - both Wan2.2 experts, published together.

The official inference's camera quirks (used when running converted weights) are an
inference concern: :mod:`fantasyworld.inference.official_cameras`.
"""

from __future__ import annotations

from fantasyworld.models.official.convert import (
    BackboneDifference,
    ConversionReport,
    WanBaseReader,
    apply_backbone_override,
    check_wan_config,
    compare_backbone,
    convert_official,
    equal_up_to_one_rounding,
    ours_to_official,
    read_official_state_dict,
    tensors_equal_at_common_precision,
)
from fantasyworld.models.official.convert_wan22 import convert_official_wan22
from fantasyworld.models.official.keys import (
    CONFIG_FILE,
    GROUP_TITLES,
    MANIFEST_NAME,
    OFFICIAL_PRESET,
    OFFICIAL_WAN22_PRESETS,
    OVERRIDE_FILE,
    REPORT_FILE,
    WAN22_MANIFEST_NAMES,
    WEIGHTS_FILE,
    GroupCount,
    KeyTarget,
    MappingResult,
    OfficialCheckpointError,
    OfficialKeyMap,
    load_manifest,
    manifest_meta_state,
    map_official_keys,
    our_reference_shapes,
)

__all__ = [
    "OFFICIAL_PRESET", "MANIFEST_NAME", "CONFIG_FILE", "WEIGHTS_FILE", "OVERRIDE_FILE", "REPORT_FILE",
    "OfficialCheckpointError", "KeyTarget", "OfficialKeyMap", "MappingResult", "GroupCount", "GROUP_TITLES",
    "map_official_keys", "our_reference_shapes", "load_manifest", "manifest_meta_state",
    "read_official_state_dict", "WanBaseReader", "compare_backbone", "check_wan_config", "BackboneDifference",
    "tensors_equal_at_common_precision", "ConversionReport", "convert_official", "ours_to_official",
    "apply_backbone_override", "OFFICIAL_WAN22_PRESETS", "WAN22_MANIFEST_NAMES", "convert_official_wan22",
    "equal_up_to_one_rounding",
]
