"""Box prompts of the method, in the tile frame (x0, y0, x1, y1, inclusive max; float32).

Prompt kinds (``PROMPT_KINDS``): "filtered" (the paper's filter: ``ops.boxes_from_probs`` keeps the
largest 4-connected component of the coarse mask at ``theta1`` after an area downscale, and boxes
it), "unfiltered" (box of the whole thresholded coarse mask), "gt" (box of the label, the upper
bound), "whole" (the whole slice) and "crossfit" (filtered boxes of cross-fitted probabilities on
the source training split). An empty box is (-1,-1,-1,-1) with its ``<kind>_empty`` flag set; what
a slice without a box gets is the explicit ``empty_box`` policy of :func:`prompts_for`.

Training-time augmentations (never applied at evaluation): :func:`noise_boxes` and
:func:`jitter_boxes`. :func:`ellipse_in_boxes` is the mask a box alone implies (a baseline).
"""
from __future__ import annotations

import dataclasses

import torch

from sammed_fast import ops
from sammed_fast.ops import reference

__all__ = ["PROMPT_KINDS", "EMPTY_BOX_POLICIES", "BoxPrompter", "mask_boxes", "compute_boxes", "prompts_for",
           "jitter_boxes", "noise_boxes", "ellipse_in_boxes", "structure_count", "structure_rows"]

PROMPT_KINDS = ("whole", "unfiltered", "filtered", "gt", "crossfit")
EMPTY_BOX_POLICIES = ("skip", "full")


def structure_count(values: torch.Tensor) -> int:
    """C of per-slice values: 1 for (N,t,t), C for (N,C,t,t) (a multi-structure run)."""
    return 1 if values.ndim == 3 else values.shape[1]


def structure_rows(values: torch.Tensor) -> torch.Tensor:
    """(N,C,t,t) per-structure values -> (N*C,t,t), row i*C+c for slice i, structure c (the rows of
    a multi-structure run's boxes); (N,t,t) unchanged."""
    return values if values.ndim == 3 else values.reshape(-1, *values.shape[-2:])


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box of all foreground of each mask: (B,H,W) bool -> (boxes (B,4) float32 xyxy inclusive,
    empty (B,) bool); an empty mask gets (-1,-1,-1,-1). The ops' reference computes the boxes."""
    boxes = reference.boxes_of_masks(masks)
    return boxes, boxes[:, 0] < 0


def compute_boxes(probs: torch.Tensor, labels: torch.Tensor | None, *, theta1: float, downscale: int
                  ) -> dict[str, torch.Tensor]:
    """Every prompt kind but "crossfit" for one batch: probs (N,t,t) in [0,1], labels (N,1,t,t) or
    (N,t,t), or None (no "gt" boxes: new images have no label)."""
    N, H, W = probs.shape
    filtered = ops.boxes_from_probs(probs, threshold=theta1, downscale=downscale, connectivity=4,
                                    empty="nan")
    out = {"filtered": torch.nan_to_num(filtered.boxes, nan=-1.0), "filtered_empty": filtered.empty}
    out["unfiltered"], out["unfiltered_empty"] = mask_boxes(probs > theta1)
    if labels is not None:
        out["gt"], out["gt_empty"] = mask_boxes(labels.reshape(N, H, W) > 0)
    out["whole"] = torch.tensor([0.0, 0.0, W - 1.0, H - 1.0], device=probs.device).expand(N, 4).clone()
    out["whole_empty"] = torch.zeros(N, dtype=torch.bool, device=probs.device)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoxPrompter:
    """The method's stage 2: coarse probabilities -> box prompts, and the policy for slices without
    a box. theta1: coarse-mask threshold (prob > theta1); downscale: the filter's area-downscale
    factor; empty_box: "skip" (no SAM call, empty mask) or "full" (the whole-slice box)."""

    theta1: float
    downscale: int
    empty_box: str = "skip"
    chunk: int = 256  # slices per boxes_from_probs call (bounds memory at large tile sizes)

    def __post_init__(self) -> None:
        if self.empty_box not in EMPTY_BOX_POLICIES:
            raise ValueError(f"empty_box must be one of {EMPTY_BOX_POLICIES}, got {self.empty_box!r}")

    def boxes(self, probs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every prompt kind (see :func:`compute_boxes`) for probs (N,t,t), in chunks of slices; for
        C > 1 structures probs and labels (N,C,t,t) give N*C rows, row i*C+c for slice i,
        structure c (a structure absent from a slice gets an empty box)."""
        if probs.ndim == 4:
            probs = structure_rows(probs)
            labels = None if labels is None else structure_rows(labels)
        if len(probs) == 0:
            return compute_boxes(probs, labels, theta1=self.theta1, downscale=self.downscale)
        parts = [compute_boxes(probs[i:i + self.chunk], None if labels is None else labels[i:i + self.chunk],
                               theta1=self.theta1, downscale=self.downscale)
                 for i in range(0, len(probs), self.chunk)]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def prompts(self, boxes: dict[str, torch.Tensor], kind: str = "filtered") -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes (N,4), keep (N,) bool) of one prompt kind under this prompter's empty-box policy."""
        return prompts_for(boxes, kind, self.empty_box)


def prompts_for(boxes: dict[str, torch.Tensor], kind: str, empty_box: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes (N,4), keep (N,) bool) of one prompt kind under the empty-box policy.

    Slices with keep False get an empty mask without calling SAM. "skip": a slice whose box is
    empty is not kept; "full": it gets the whole-slice box instead (the paper's effective
    behaviour). Ground-truth boxes always skip: an empty label has no box.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")
    chosen, empty = boxes[kind], boxes[f"{kind}_empty"]
    if kind == "gt" or empty_box == "skip":
        return chosen, ~empty
    return torch.where(empty[:, None], boxes["whole"], chosen), torch.ones_like(empty)


def jitter_boxes(boxes: torch.Tensor, max_px: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Moves each side of (B,4) xyxy boxes outward by a random 0..max_px pixels, inside the tile."""
    if max_px == 0:
        return boxes
    shift = torch.randint(0, max_px + 1, boxes.shape, generator=generator).float()
    return (boxes + shift * torch.tensor([-1.0, -1.0, 1.0, 1.0])).clamp(0, size - 1)


def noise_boxes(boxes: torch.Tensor, fraction: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """Moves each side of (B,4) inclusive xyxy boxes by its own uniform random amount in
    [-fraction, fraction] of the box's extent along that axis (so boxes shift, shrink and grow, as
    SAM's training boxes were noised), rounded to pixels, kept inside the tile and valid."""
    if fraction == 0 or len(boxes) == 0:
        return boxes
    extent = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    step = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * fraction * extent
    moved = (boxes + step).round().clamp(0, size - 1)
    return torch.cat([torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])], 1)


def ellipse_in_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N,4) inclusive xyxy boxes -> (N,1,size,size) float masks of the inscribed ellipses.

    A baseline: what the box alone is worth as a segmentation."""
    centre = torch.arange(size, dtype=torch.float32)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rx = ((boxes[:, 2] - boxes[:, 0] + 1) / 2).clamp_min(0.5)
    ry = ((boxes[:, 3] - boxes[:, 1] + 1) / 2).clamp_min(0.5)
    dx = (centre.view(1, 1, -1) - cx.view(-1, 1, 1)) / rx.view(-1, 1, 1)
    dy = (centre.view(1, -1, 1) - cy.view(-1, 1, 1)) / ry.view(-1, 1, 1)
    return (dx * dx + dy * dy <= 1).float().unsqueeze(1)
