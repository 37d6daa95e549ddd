"""Pure-PyTorch references of every sammed_fast op.

They define the ops' semantics, serve as the fallback when the compiled library is missing, and
are an oracle in the tests. They assume validated arguments (see ``sammed_fast.ops``) and run on any
device without host loops over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NEIGHBOUR_OFFSETS = {
    # (dy, dx) pairs that link each pixel to the neighbours after it in raster order.
    4: ((0, 1), (1, 0)),
    8: ((0, 1), (1, 0), (1, 1), (1, -1)),
}


def _foreground_edges(fg: torch.Tensor, connectivity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global flat indices (a, b) of every pair of adjacent foreground pixels; fg is (B,H,W) bool."""
    B, H, W = fg.shape
    index = torch.arange(B * H * W, device=fg.device).view(B, H, W)
    starts, ends = [], []
    for dy, dx in NEIGHBOUR_OFFSETS[connectivity]:
        y0, x0 = 0, max(0, -dx)
        y1, x1 = H - dy, W - max(0, dx)
        if y1 <= y0 or x1 <= x0:
            continue
        here = (slice(None), slice(y0, y1), slice(x0, x1))
        there = (slice(None), slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx))
        both = fg[here] & fg[there]
        starts.append(index[here][both])
        ends.append(index[there][both])
    if not starts:
        empty = torch.empty(0, dtype=torch.long, device=fg.device)
        return empty, empty
    return torch.cat(starts), torch.cat(ends)


def label_components(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """(B,H,W) bool/uint8 -> int32 (B,H,W): components numbered 1..n per image, raster-first order.

    Vectorised union-find: every round hooks each root onto the smallest root across its edges,
    then pointer-jumps to full compression. A root is always the smallest flat index of its set, so
    it is the component's first pixel in raster order, which gives scipy's numbering directly.
    """
    B, H, W = masks.shape
    fg = masks != 0
    parent = torch.arange(B * H * W, device=masks.device)
    a, b = _foreground_edges(fg, connectivity)
    while a.numel():
        root_a, root_b = parent[a], parent[b]
        differ = root_a != root_b
        if not bool(differ.any()):
            break
        high = torch.maximum(root_a, root_b)[differ]
        low = torch.minimum(root_a, root_b)[differ]
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped
    flat_fg = fg.reshape(-1)
    is_root = flat_fg & (parent == torch.arange(parent.numel(), device=parent.device))
    rank = is_root.view(B, H * W).cumsum(1, dtype=torch.int32).view(-1)
    labels = torch.where(flat_fg, rank[parent], torch.zeros_like(rank))
    return labels.view(B, H, W)


def boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """(B,H,W) bool -> float32 (B,4) xyxy with inclusive max; (-1,-1,-1,-1) for an empty mask."""
    B, H, W = masks.shape
    rows = masks.any(2)
    cols = masks.any(1)
    ys = torch.arange(H, device=masks.device)
    xs = torch.arange(W, device=masks.device)
    big = max(H, W)
    y0 = torch.where(rows, ys, big).amin(1, keepdim=True)
    y1 = torch.where(rows, ys, -1).amax(1, keepdim=True)
    x0 = torch.where(cols, xs, big).amin(1, keepdim=True)
    x1 = torch.where(cols, xs, -1).amax(1, keepdim=True)
    boxes = torch.cat([x0, y0, x1, y1], 1).float()
    empty = ~masks.flatten(1).any(1)
    return torch.where(empty[:, None], torch.full_like(boxes, -1.0), boxes)


def largest_component(
    masks: torch.Tensor, connectivity: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,H,W) -> (largest component bool (B,H,W), its box float32 (B,4), its area int64 (B,)).

    Ties go to the lowest raster-first label; an empty image gives area 0 and box (-1,-1,-1,-1).
    """
    B, H, W = masks.shape
    labels = label_components(masks, connectivity).long()
    n = H * W + 1
    offsets = torch.arange(B, device=masks.device)[:, None, None] * n
    areas = torch.bincount((labels + offsets).reshape(-1), minlength=B * n).view(B, n)
    areas[:, 0] = 0
    best_area, best_label = areas.max(1)  # max returns the first (lowest) label on ties
    mask = (labels == best_label[:, None, None]) & (best_area[:, None, None] > 0)
    return mask, boxes_of_masks(mask), best_area


def pooled_size(size: int, downscale: int) -> int:
    return -(-size // downscale)  # exact for any int64 downscale


def cell_box_to_pixels(boxes: torch.Tensor, size_hw: tuple[int, int], cells_hw: tuple[int, int]) -> torch.Tensor:
    """Maps inclusive cell boxes of adaptive average pooling back to the inclusive pixel boxes they cover.

    Cell i of n over s pixels covers [floor(i*s/n), ceil((i+1)*s/n)).
    """
    (H, W), (h, w) = size_hw, cells_hw
    cells = boxes.long()
    x0 = cells[:, 0] * W // w
    y0 = cells[:, 1] * H // h
    x1 = -((-(cells[:, 2] + 1) * W) // w) - 1
    y1 = -((-(cells[:, 3] + 1) * H) // h) - 1
    return torch.stack([x0, y0, x1, y1], 1).float()


def boxes_from_probs(
    probs: torch.Tensor,
    threshold: float = 0.75,
    downscale: int = 4,
    connectivity: int = 4,
    empty_full: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's mask filter: (B,H,W) probabilities -> (boxes float32 (B,4), empty bool (B,)).

    Area-resize by ``downscale`` (adaptive average pooling to ceil(H/d) x ceil(W/d)), keep
    ``prob > threshold``, take the largest component's box and map it back to full resolution.
    Pooling and comparison run in float64 for float64 input, else in float32 (which holds float16
    and bfloat16 exactly). Images without foreground get the whole image (``empty_full``) or NaNs.
    The outputs never require grad.
    """
    probs = probs.detach()
    B, H, W = probs.shape
    values = probs if probs.dtype == torch.float64 else probs.float()
    if downscale > 1:
        cells_hw = (pooled_size(H, downscale), pooled_size(W, downscale))
        small = F.adaptive_avg_pool2d(values[:, None], cells_hw)[:, 0]
    else:
        cells_hw = (H, W)
        small = values
    _, cell_boxes, areas = largest_component(small > threshold, connectivity)
    empty = areas == 0
    boxes = cell_box_to_pixels(cell_boxes, (H, W), cells_hw) if downscale > 1 else cell_boxes
    if empty_full:
        fallback = torch.tensor([0.0, 0.0, W - 1.0, H - 1.0], device=probs.device)
    else:
        fallback = torch.full((4,), float("nan"), device=probs.device)
    return torch.where(empty[:, None], fallback, boxes), empty


def merge_tiles(
    images: torch.Tensor,
    grid: int,
    pixel_mean: list[float],
    pixel_std: list[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(B,C,h,w) 0..255, C in {1,3} -> normalised canvases (ceil(B/g^2), 3, g*h, g*w).

    Tile k goes to canvas k // g^2 at row (k % g^2) // g, column (k % g^2) % g; missing tiles are 0.
    """
    B, C, h, w = images.shape
    per_canvas = grid * grid
    canvases = -(-B // per_canvas)
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    x = (images.float().expand(B, 3, h, w) - mean) / std
    x = torch.cat([x, x.new_zeros(canvases * per_canvas - B, 3, h, w)])
    x = x.view(canvases, grid, grid, 3, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(canvases, 3, grid * h, grid * w).to(out_dtype)


def boxes_to_canvas(boxes: torch.Tensor, tile_hw: tuple[int, int], grid: int = 2) -> torch.Tensor:
    """(B,4) xyxy in each tile's frame -> its canvas frame: tile (row i, col j) moves by (j*w, i*h)."""
    h, w = tile_hw
    position = torch.arange(boxes.shape[0], device=boxes.device) % (grid * grid)
    dx = (position % grid) * w
    dy = (position // grid) * h
    shift = torch.stack([dx, dy, dx, dy], 1).to(boxes.dtype)
    return boxes + shift


def unmerge_tiles(logits: torch.Tensor, grid: int, out_h: int = 0, out_w: int = 0) -> torch.Tensor:
    """(B,C,Hc,Wc) one map per tile over its canvas -> the tile's own quadrant (B,C,Hc/g,Wc/g),
    bilinearly resized (align_corners=False) to (out_h, out_w) when those are > 0."""
    B, C, Hc, Wc = logits.shape
    th, tw = Hc // grid, Wc // grid
    position = torch.arange(B, device=logits.device) % (grid * grid)
    quadrants = logits.reshape(B, C, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = quadrants[torch.arange(B, device=logits.device), position // grid, position % grid]
    size = (out_h, out_w) if out_h > 0 else (th, tw)
    if tiles.numel() == 0:
        # A view of the (empty) input, so that autograd still connects the output to logits.
        return tiles[:, :, :1, :1].expand(B, C, *size)
    if size != (th, tw):
        tiles = F.interpolate(tiles, size=size, mode="bilinear", align_corners=False)
    return tiles.contiguous()
