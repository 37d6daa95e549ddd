"""The training loss of the three trained models (compact-SAM pretraining, the segmenter, the SAM
decoder): soft Dice + BCE on logits, so all three optimise the same objective."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_bce_loss"]


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice loss per image and structure plus mean BCE; logits and target (B,C,h,w)
    (C structures, each its own sigmoid)."""
    start = 2 if logits.shape[1] > 1 else 1  # one structure: (B,1,h,w) flattened per image
    probs = torch.sigmoid(logits).flatten(start)
    flat = target.flatten(start)
    dice = (2 * (probs * flat).sum(-1) + 1) / (probs.sum(-1) + flat.sum(-1) + 1)
    return (1 - dice).mean() + F.binary_cross_entropy_with_logits(logits, target)
