"""SAM side of sammed_fast: the variant registry and the tiled (2x2 merged) SAM."""
from sammed_fast.sam.registry import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    VARIANTS,
    SamConfig,
    build_sam,
    compact_config,
    config_for,
    describe_state_dict,
    expected_description,
    sam_from_config,
)
from sammed_fast.sam.tiled import TiledSam, decode_per_box, freeze_for_decoder_training

__all__ = [
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "VARIANTS",
    "SamConfig",
    "TiledSam",
    "build_sam",
    "compact_config",
    "config_for",
    "decode_per_box",
    "describe_state_dict",
    "expected_description",
    "freeze_for_decoder_training",
    "sam_from_config",
]
