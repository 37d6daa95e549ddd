"""Training loss of both trained models: soft Dice + BCE on logits.

The compact-SAM pretraining defines it (``sammed_fast.pretrain.dice_bce_loss``); the segmenter and
the SAM decoder use the same function so the three trainings optimise the same objective.
"""
from sammed_fast.pretrain import dice_bce_loss

__all__ = ["dice_bce_loss"]
