"""Seeds and devices: the same seed gives the same numbers on the CPU.

Every stage seeds the global generators from (seed, stage) when it starts, and every epoch draws its
shuffling and jitter from its own generator seeded by (seed, stage, epoch), so a run resumed at a
stage or epoch boundary reproduces an uninterrupted one.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from sammed_fast.engine import distributed
from sammed_fast.engine.config import STAGES, ConfigError

__all__ = ["seed_everything", "epoch_generator", "stage_seed", "resolve_device"]


def stage_seed(seed: int, stage: str) -> int:
    return int(seed) * 1000 + STAGES.index(stage) * 100


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, stage: str, epoch: int, *, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch's shuffling and augmentation. Rank 0's (the default) also
    orders the epoch on every rank; rank r > 0 draws the augmentation of its own slices from a
    stream of its own. ``stream`` separates models trained in one stage (cross-fitting folds)."""
    base = stage_seed(seed, stage) * 10_000 + epoch
    return torch.Generator().manual_seed(base + rank * 2**40 + stream * 2**50)


def resolve_device(choice: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU -> ConfigError. Under
    torchrun (WORLD_SIZE > 1) a CUDA run gives each rank cuda:LOCAL_RANK."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {choice}: no CUDA GPU is available on this machine "
                              "(torch.cuda.is_available() is False); use --device cpu or auto")
        if distributed.launched_world_size() > 1:
            return _rank_gpu(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _rank_gpu(choice: str) -> torch.device:
    """cuda:LOCAL_RANK for this torchrun process, or a ConfigError saying why it cannot be."""
    if choice != "cuda":
        raise ConfigError(f"--device {choice}: under torchrun every process uses the GPU of its "
                          "LOCAL_RANK; pass --device cuda (or auto)")
    local, count = distributed.local_rank(), torch.cuda.device_count()
    if local >= count:
        raise ConfigError(f"torchrun started a process with LOCAL_RANK {local}, but this machine has "
                          f"only {count} CUDA device(s): start at most {count} processes per node "
                          f"(--nproc_per_node={count}) or use --device cpu")
    return torch.device("cuda", local)
