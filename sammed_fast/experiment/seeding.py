"""Seeds: the same seed gives the same numbers on the CPU.

Every stage seeds the global generators from (seed, stage) when it starts, and every epoch draws its
shuffling and jitter from its own generator seeded by (seed, stage, epoch), so a run resumed at a
stage or epoch boundary reproduces an uninterrupted one.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from sammed_fast.experiment.config import STAGES

__all__ = ["seed_everything", "epoch_generator", "stage_seed"]


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
