"""Reading files: natural name order, SHA-256 digests and safe ``torch.load``. (Writing goes
through :mod:`sammed_fast.atomic`.)"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import torch

__all__ = ["natural_key", "sha256_file", "load_torch_file"]

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key of natural name order: runs of digits compare as numbers, so Case2 comes before
    Case10 (Case2 and Case02 tie). Every part is tagged, so any two names compare."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_torch_file(path: str | os.PathLike, *, mmap: bool = False, error: type[Exception] = ValueError,
                    message: str = "cannot read {path} with weights_only=True ({reason})") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain containers
    only, never arbitrary pickled code; ``mmap`` maps the file instead of reading it (key shapes of
    a multi-GB checkpoint without loading it).

    A file that cannot be read (missing, truncated, a foreign pickle) raises ``error(message)``,
    chained to the cause; ``message`` may use {path}, {error} (the cause's message) and {reason}
    ("CauseType: the cause's message"), so that each caller keeps its own wording.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as cause:  # pickle errors, truncated zip files, foreign formats
        raise error(message.format(path=path, error=cause, reason=f"{type(cause).__name__}: {cause}")) from cause
