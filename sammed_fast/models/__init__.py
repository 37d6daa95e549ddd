"""Coarse segmenters (stage 1 of the method)."""
from sammed_fast.models.segmenter import (
    DEFAULT_SEGMENTER,
    SEGMENTERS,
    Segmenter,
    build_segmenter,
    load_segmenter_weights,
)

__all__ = ["DEFAULT_SEGMENTER", "SEGMENTERS", "Segmenter", "build_segmenter", "load_segmenter_weights"]
