"""Stage 2: the box prompts of every slice of every split (``method.prompts``: the run's
BoxPrompter), stored in the run folder: boxes/<split>.pt holds "<kind>" (N,4) float32 and
"<kind>_empty" (N,) bool for every prompt kind, and the slice keys they belong to.

"crossfit" (only with ``decoder_prompts="crossfit"``): for the training split, filtered boxes of
its cross-fitted probabilities (experiment.segmenter_stage); for every other split, the filtered
boxes, since the run's segmenter never trained on those slices.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sammed_fast.atomic import save_torch_atomic
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.run_data import RunData, Split
from sammed_fast.experiment.run_folder import RunFolder, load_torch

__all__ = ["compute_split_boxes", "load_boxes"]


def compute_split_boxes(run: RunFolder, data: RunData, probs: dict[str, torch.Tensor],
                        config: TrainConfig, *, crossfit: torch.Tensor | None = None) -> list[str]:
    """Writes boxes/<split>.pt for every split from its segmenter probabilities. ``crossfit``: the
    training split's cross-fitted probabilities; they give its "crossfit" boxes (filtered the same
    way), while every other split's "crossfit" boxes are its filtered ones, since the run's
    segmenter never trained on those slices."""
    prompter = config.prompter()
    outputs = []
    for name, split in tqdm(data.splits.items(), desc="box prompts", unit="split",
                            disable=not config.progress):
        labels = split.slices.labels
        boxes = prompter.boxes(probs[name], labels)
        if crossfit is not None:
            source = prompter.boxes(crossfit, labels) if name == "train" else boxes
            boxes["crossfit"], boxes["crossfit_empty"] = source["filtered"], source["filtered_empty"]
        boxes["keys"] = [list(k) for k in split.keys]
        path = run.paths.boxes(name)
        save_torch_atomic(path, boxes)
        outputs.append(run.paths.relative(path))
    return outputs


def load_boxes(run: RunFolder, split: Split) -> dict[str, torch.Tensor]:
    path = run.paths.boxes(split.name)
    stored = load_torch(path)
    if [tuple(k) for k in stored.pop("keys")] != list(split.keys):
        raise ConfigError(f"{path} was computed for other slices than split "
                          f"{split.name} has now; the data changed since this run: start it over")
    return stored
