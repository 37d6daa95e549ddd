"""How good the box prompts are, per split: agreement with the ground-truth box and the slices that
get no box or a box where there is nothing to find.

For one prompt kind and one split (boxes in the tile frame, xyxy with inclusive max; an empty box is
flagged, see method.prompts), over the slices whose label has foreground ("prostate slices"):

- ``iou``: mean IoU of the kind's box with the ground-truth box, over prostate slices with a box;
- ``area_ratio``: mean of box area / ground-truth box area over the same slices (1 = same size;
  below 1 the boxes are too tight, above too loose);
- ``missed``: share of prostate slices that get no box;
- ``boxes_without_prostate``: share of the kind's boxes that lie on slices without prostate;
- the counts behind them.
Areas count pixels (x1 - x0 + 1) * (y1 - y0 + 1). A mean over no slice is NaN.
"""
from __future__ import annotations

import math

import torch

__all__ = ["DIAGNOSED_KINDS", "box_iou_rows", "box_diagnostics"]

#: The prompt kinds whose quality is reported (gt is the reference, whole carries no information).
DIAGNOSED_KINDS = ("filtered", "unfiltered")


def _areas(boxes: torch.Tensor) -> torch.Tensor:
    return ((boxes[:, 2] - boxes[:, 0] + 1).clamp_min(0) * (boxes[:, 3] - boxes[:, 1] + 1).clamp_min(0))


def box_iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b``: (N,4) inclusive xyxy boxes -> (N,) float64."""
    a, b = a.double(), b.double()
    inter = torch.stack([torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1]),
                         torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])], 1)
    overlap = _areas(inter)
    return overlap / (_areas(a) + _areas(b) - overlap)


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if len(values) else math.nan


def box_diagnostics(boxes: dict[str, torch.Tensor], kind: str) -> dict:
    """The diagnostics of the module docs for prompt ``kind`` of one split's boxes dictionary
    (``"<kind>"`` (N,4), ``"<kind>_empty"`` (N,), and the same for ``"gt"``)."""
    gt, has_prostate = boxes["gt"], ~boxes["gt_empty"]
    chosen, has_box = boxes[kind], ~boxes[f"{kind}_empty"]
    both = has_prostate & has_box
    prostate_slices, box_count = int(has_prostate.sum()), int(has_box.sum())
    return {
        "iou": _mean(box_iou_rows(chosen[both], gt[both])),
        "area_ratio": _mean(_areas(chosen[both].double()) / _areas(gt[both].double())),
        "missed": int((has_prostate & ~has_box).sum()) / prostate_slices if prostate_slices else math.nan,
        "boxes_without_prostate": int((has_box & ~has_prostate).sum()) / box_count if box_count else math.nan,
        "prostate_slices": prostate_slices,
        "boxes": box_count,
        "slices": int(len(gt)),
    }
