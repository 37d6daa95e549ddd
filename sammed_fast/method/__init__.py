"""The method itself, independent of runs and files: box prompts from coarse masks
(``prompts``), the predictor that chains segmenter -> box prompter -> tiled SAM (``predictor``),
and the training loss (``losses``)."""
from sammed_fast.method.losses import dice_bce_loss
from sammed_fast.method.predictor import Prediction, Predictor
from sammed_fast.method.prompts import BoxPrompter

__all__ = ["BoxPrompter", "Prediction", "Predictor", "dice_bce_loss"]
