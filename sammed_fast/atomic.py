"""Atomic file writes: a reader (or an interrupted run) never sees a partial file under the final
name. Every writer of the package goes through here."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["write_atomic", "write_bytes_atomic", "write_text_atomic", "save_torch_atomic"]


def _new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file under the process umask (mkstemp's own 0600
    would hide results and checkpoints from colleagues on a shared machine)."""
    umask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Calls ``write(handle)`` on a temporary file in ``path``'s folder, fsyncs it, then renames it
    to ``path`` (os.replace); the temporary file is removed if anything fails. The file gets the
    permissions the umask gives a new file, as with ``open()``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), _new_file_mode())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    return write_atomic(path, lambda handle: handle.write(payload))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save of ``obj`` to ``path``, atomically."""
    import torch

    return write_atomic(path, lambda handle: torch.save(obj, handle))
