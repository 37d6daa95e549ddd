"""Stage 2: box prompts for every slice of every split, in the tile frame (xyxy, inclusive max).

Four prompt kinds (boxes/<split>.pt holds "<kind>" (N,4) float32 and "<kind>_empty" (N,) bool):

- "filtered": the paper's filter, ``ops.boxes_from_probs`` on the segmenter's probabilities
  (theta1, downscale tile // 128 by default: the paper's 128 cells per side, 4-connectivity):
  box of the largest component;
- "unfiltered": box of the whole thresholded coarse mask (prob > theta1), every component;
- "gt": box of the ground-truth label (the upper bound);
- "whole": the whole slice;
- "crossfit" (only with ``decoder_prompts="crossfit"``): for the training split, filtered boxes of
  cross-fitted probabilities (engine.segmenter_stage); for every other split, the filtered boxes.

An empty box is stored as (-1,-1,-1,-1) with its flag set; what a slice without a box gets is the
run's explicit ``empty_box`` policy, applied by :func:`prompts_for`.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sammed_fast import ops
from sammed_fast.atomic import save_torch_atomic
from sammed_fast.engine.config import PROMPT_KINDS, ConfigError, TrainConfig
from sammed_fast.engine.run_data import RunData, Split
from sammed_fast.engine.run_folder import RunFolder, load_torch

__all__ = ["PROMPTS", "mask_boxes", "compute_boxes", "compute_split_boxes", "load_boxes", "prompts_for"]

PROMPTS = PROMPT_KINDS
CHUNK = 256  # slices per boxes_from_probs call (bounds memory at large tile sizes)


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box of all foreground of each mask: (B,H,W) bool -> (boxes (B,4) float32 xyxy inclusive,
    empty (B,) bool); an empty mask gets (-1,-1,-1,-1)."""
    B, H, W = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    empty = ~rows.any(1)
    y = torch.arange(H, device=masks.device)
    x = torch.arange(W, device=masks.device)
    boxes = torch.stack([torch.where(cols, x, W).amin(1), torch.where(rows, y, H).amin(1),
                         torch.where(cols, x, -1).amax(1), torch.where(rows, y, -1).amax(1)], 1).float()
    boxes[empty] = -1.0
    return boxes, empty


def compute_boxes(probs: torch.Tensor, labels: torch.Tensor, *, theta1: float, downscale: int
                  ) -> dict[str, torch.Tensor]:
    """Every prompt kind for one batch: probs (N,t,t) in [0,1], labels (N,1,t,t) or (N,t,t)."""
    N, H, W = probs.shape
    filtered = ops.boxes_from_probs(probs, threshold=theta1, downscale=downscale, connectivity=4,
                                    empty="nan")
    out = {"filtered": torch.nan_to_num(filtered.boxes, nan=-1.0), "filtered_empty": filtered.empty}
    out["unfiltered"], out["unfiltered_empty"] = mask_boxes(probs > theta1)
    out["gt"], out["gt_empty"] = mask_boxes(labels.reshape(N, H, W) > 0)
    out["whole"] = torch.tensor([0.0, 0.0, W - 1.0, H - 1.0]).expand(N, 4).clone()
    out["whole_empty"] = torch.zeros(N, dtype=torch.bool)
    return out


def boxes_path(run: RunFolder, split: str):
    return run.path / "boxes" / f"{split}.pt"


def _all_boxes(probs: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> dict[str, torch.Tensor]:
    parts = [compute_boxes(probs[i:i + CHUNK], labels[i:i + CHUNK], theta1=config.theta1,
                           downscale=config.downscale) for i in range(0, len(probs), CHUNK)]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def compute_split_boxes(run: RunFolder, data: RunData, probs: dict[str, torch.Tensor],
                        config: TrainConfig, *, crossfit: torch.Tensor | None = None) -> list[str]:
    """Writes boxes/<split>.pt for every split from its segmenter probabilities. ``crossfit``: the
    training split's cross-fitted probabilities; they give its "crossfit" boxes (filtered the same
    way), while every other split's "crossfit" boxes are its filtered ones, since the run's
    segmenter never trained on those slices."""
    outputs = []
    for name, split in tqdm(data.splits.items(), desc="box prompts", unit="split",
                            disable=not config.progress):
        labels = split.slices.labels
        boxes = _all_boxes(probs[name], labels, config)
        if crossfit is not None:
            source = _all_boxes(crossfit, labels, config) if name == "train" else boxes
            boxes["crossfit"], boxes["crossfit_empty"] = source["filtered"], source["filtered_empty"]
        boxes["keys"] = [list(k) for k in split.keys]
        path = boxes_path(run, name)
        save_torch_atomic(path, boxes)
        outputs.append(str(path.relative_to(run.path)))
    return outputs


def load_boxes(run: RunFolder, split: Split) -> dict[str, torch.Tensor]:
    stored = load_torch(boxes_path(run, split.name))
    if [tuple(k) for k in stored.pop("keys")] != list(split.keys):
        raise ConfigError(f"{boxes_path(run, split.name)} was computed for other slices than split "
                          f"{split.name} has now; the data changed since this run: start it over")
    return stored


def prompts_for(boxes: dict[str, torch.Tensor], kind: str, empty_box: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes (N,4), keep (N,) bool) of one prompt kind under the empty-box policy.

    Slices with keep False get an empty mask without calling SAM. "skip": a slice whose box is
    empty is not kept; "full": it gets the whole-slice box instead (the paper's effective
    behaviour). Ground-truth boxes always skip: an empty label has no box.
    """
    if kind not in PROMPTS:
        raise ValueError(f"prompt kind must be one of {PROMPTS}, got {kind!r}")
    chosen, empty = boxes[kind], boxes[f"{kind}_empty"]
    if kind == "gt" or empty_box == "skip":
        return chosen, ~empty
    return torch.where(empty[:, None], boxes["whole"], chosen), torch.ones_like(empty)
