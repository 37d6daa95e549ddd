"""sammed_fast: SAM-based single-source domain generalisation for medical image segmentation."""
from sammed_fast._extension import build_info
from sammed_fast import ops

__all__ = ["build_info", "ops"]
__version__ = "0.1.0"
