"""The package's cache folder: the built-in synthetic set, and compact-SAM weights pretrained for
tile sizes the package does not ship. ``$SAMMED_FAST_CACHE``, else ``~/.cache/sammed_fast``."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "default_cache_dir"]

CACHE_ENV = "SAMMED_FAST_CACHE"


def default_cache_dir() -> Path:
    """$SAMMED_FAST_CACHE, else ~/.cache/sammed_fast."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sammed_fast")
