"""The models of the method: coarse segmenters (stage 1), the SAM variant registry (vit_b/l/h and
the compact stand-in) and the tiled SAM that serves four slices per image-encoder pass."""
from sammed_fast.models.sam_registry import (
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
from sammed_fast.models.segmenter import (
    DEFAULT_SEGMENTER,
    SEGMENTERS,
    Segmenter,
    build_segmenter,
    load_segmenter_weights,
)
from sammed_fast.models.tiled_sam import TiledSam, decode_per_box, freeze_for_decoder_training

__all__ = [
    "DEFAULT_SEGMENTER", "SEGMENTERS", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "VARIANTS", "SamConfig",
    "Segmenter", "TiledSam", "build_sam", "build_segmenter", "compact_config", "config_for",
    "decode_per_box", "describe_state_dict", "expected_description", "freeze_for_decoder_training",
    "load_segmenter_weights", "sam_from_config",
]
