"""Loading of the compiled op library ``sammed_fast._C``.

When the library is missing, fails to load, or was compiled against another torch release, every op
falls back to its pure-PyTorch reference (``sammed_fast.ops.reference``) and one warning says why.
"""
from __future__ import annotations

import functools
import importlib
import json
import warnings

import torch

LIBRARY = "sammed_fast"


@functools.lru_cache(maxsize=None)
def _load() -> tuple[dict | None, str | None]:
    """Returns (build info, None) when the library is usable, else (None, reason)."""
    try:
        # import_module, not `from sammed_fast import _C`: while sammed_fast is still initialising
        # the latter reports a missing library as a circular import.
        _C = importlib.import_module("sammed_fast._C")  # registers the ops
    except ImportError as error:
        return None, f"the compiled library sammed_fast._C could not be imported ({error})"
    info = json.loads(_C.build_info())
    built = ".".join(info["torch"].split(".")[:2])
    running = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if built != running:
        return None, f"sammed_fast._C was built for torch {built} but torch {running} is running"
    return info, None


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"{reason}; sammed_fast ops use their pure-PyTorch reference (slower). "
        "Reinstall with `pip install --no-build-isolation .` to compile them.",
        RuntimeWarning,
        stacklevel=3,
    )


OPS = ("label_components", "largest_component", "boxes_from_probs", "merge_tiles", "unmerge_tiles")
DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@functools.lru_cache(maxsize=None)
def kernel_table() -> dict[tuple[str, str], bool]:
    """{(op name, device type): True} for every compiled kernel; empty (after one warning) when
    the library is unusable. Computed once, so the ops' dispatch is a plain dict lookup that
    torch.compile traces without graph breaks."""
    info, reason = _load()
    if info is None:
        _warn_once(reason)
        return {}
    return {
        (op, device): torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", key)
        for op in OPS
        for device, key in DISPATCH_KEYS.items()
    }


def compiled_ops_available() -> bool:
    return _load()[0] is not None


def build_info() -> dict:
    """What was compiled: ``{"compiled": bool, "cpu": bool, "cuda": bool, "cuda_archs": str,
    "torch": version built against, "reason": why not usable (when compiled is False)}``."""
    info, reason = _load()
    if info is None:
        return {"compiled": False, "cpu": False, "cuda": False, "cuda_archs": "", "torch": None,
                "reason": reason}
    return {"compiled": True, **info, "reason": None}
