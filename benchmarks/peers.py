"""The peers of ``largest_component``: what users would otherwise call, each in its fastest honest use.

Every peer takes a batch of masks and a connectivity and returns ``Answer(boxes, areas)`` in our
format: boxes float32 (B,4) xyxy with inclusive max, (-1,-1,-1,-1) for an empty image; areas int64
(B,). Ties for the largest component go to the component whose first pixel comes first in raster
order (our policy), so that a timed case can check equality with our output first.

CPU peers take a (B,H,W) bool numpy array and loop over the batch where the library is 2-D only:

* ``cv2``: ``cv2.connectedComponentsWithStats`` per image (areas and boxes come with the labels),
  argmax over the area column.
* ``cc3d``: ``cc3d.connected_components`` per image + ``cc3d.statistics`` (array bounding boxes).
* ``scipy``: ONE ``scipy.ndimage.label`` call for the whole batch (a 3-D structure without links
  across images), ``np.bincount`` for the areas, ``find_objects`` for the winner's box.
* ``skimage``: ``skimage.measure.label`` per image (its 3-D connectivity would link images),
  ``np.bincount`` for the areas and ``regionprops`` of the winner for its box; regionprops over
  every region is orders of magnitude slower on noisy masks and would be a straw man.
* ``python_bfs``: the paper's approach, a breadth-first search in pure Python (on lists, which is
  faster than indexing numpy arrays element by element).

GPU peers take a (B,H,W) bool CUDA tensor and never loop over the batch on the host:

* ``cupyx``: ONE ``cupyx.scipy.ndimage.label`` call (3-D structure without links across images),
  statistics in PyTorch on the same device (zero-copy through DLPack).
* ``kornia_union_find``: ``kornia.contrib.connected_components_union_find`` (exact, 8-connected).
* ``kornia_pool``: ``kornia.contrib.connected_components`` (iterated 3x3 max pooling, 8-connected)
  with ``num_iterations = max(H, W)``: exact only when no component's geodesic diameter is longer
  (true for convex blobs, false for percolating noise; the benchmark checks and skips then).
"""
from __future__ import annotations

from collections import deque
from typing import Callable, NamedTuple

import numpy as np
import torch

EMPTY_BOX = (-1.0, -1.0, -1.0, -1.0)


class Answer(NamedTuple):
    boxes: np.ndarray  # float32 (B,4) xyxy, inclusive max
    areas: np.ndarray  # int64 (B,)


def empty_answer(batch: int) -> Answer:
    return Answer(np.full((batch, 4), -1.0, dtype=np.float32), np.zeros(batch, dtype=np.int64))


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def _winner(labels: np.ndarray, counts: np.ndarray, first_label: int = 1) -> int:
    """The label with the most pixels among labels[first_label:] of ``counts`` (indexed by label),
    ties to the component whose first pixel comes first in raster order of ``labels`` (one image).
    Peers whose numbering is raster-first could take argmax alone; the tie scan costs nothing
    unless there is a tie."""
    candidates = counts[first_label:]
    best = int(np.argmax(candidates)) + first_label
    tied = np.flatnonzero(candidates == candidates[best - first_label]) + first_label
    if tied.size > 1:
        flat = labels.ravel()
        best = int(min(tied, key=lambda label: int(np.argmax(flat == label))))
    return best


def _structure_2d(connectivity: int) -> np.ndarray:
    """3x3 neighbourhood: the cross (4) or the full square (8)."""
    structure = np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        structure[::2, ::2] = False
    return structure


def _batch_structure(connectivity: int) -> np.ndarray:
    """3x3x3 structure that links pixels within an image only (the batch axis has no neighbours)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _structure_2d(connectivity)
    return structure


# ----------------------------------------------------------------------------------- CPU peers
def cv2_peer(masks: np.ndarray, connectivity: int = 4) -> Answer:
    import cv2

    _check_connectivity(connectivity)
    out = empty_answer(masks.shape[0])
    images = masks.view(np.uint8)
    for b, image in enumerate(images):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(image, connectivity=connectivity,
                                                                   ltype=cv2.CV_32S)
        if count < 2:
            continue
        best = _winner(labels, stats[:, cv2.CC_STAT_AREA])
        x, y, w, h, area = stats[best]
        out.boxes[b] = (x, y, x + w - 1, y + h - 1)
        out.areas[b] = area
    return out


def cc3d_peer(masks: np.ndarray, connectivity: int = 4) -> Answer:
    import cc3d

    _check_connectivity(connectivity)
    out = empty_answer(masks.shape[0])
    for b, image in enumerate(masks):
        labels, count = cc3d.connected_components(image, connectivity=connectivity, return_N=True)
        if count == 0:
            continue
        stats = cc3d.statistics(labels, no_slice_conversion=True)
        counts = stats["voxel_counts"].astype(np.int64)
        best = _winner(labels, counts)
        y0, y1, x0, x1 = stats["bounding_boxes"][best].astype(np.int64)  # inclusive, axis 0 first
        out.boxes[b] = (x0, y0, x1, y1)
        out.areas[b] = counts[best]
    return out


def scipy_peer(masks: np.ndarray, connectivity: int = 4) -> Answer:
    from scipy import ndimage

    _check_connectivity(connectivity)
    B = masks.shape[0]
    out = empty_answer(B)
    labels, _ = ndimage.label(masks, structure=_batch_structure(connectivity))
    counts = np.bincount(labels.ravel())
    # Numbering is raster-first over the batch, so image b owns labels (last[b-1], last[b]].
    last = np.maximum.accumulate(labels.reshape(B, -1).max(1))
    first = np.concatenate([[1], last[:-1] + 1])
    for b in range(B):
        if last[b] < first[b]:
            continue
        best = int(np.argmax(counts[first[b]:last[b] + 1])) + int(first[b])  # lowest label on ties
        rows, cols = ndimage.find_objects((labels[b] == best).view(np.uint8))[0]
        out.boxes[b] = (cols.start, rows.start, cols.stop - 1, rows.stop - 1)
        out.areas[b] = counts[best]
    return out


def skimage_peer(masks: np.ndarray, connectivity: int = 4) -> Answer:
    from skimage.measure import label, regionprops

    _check_connectivity(connectivity)
    out = empty_answer(masks.shape[0])
    for b, image in enumerate(masks):
        labels = label(image, connectivity=1 if connectivity == 4 else 2)
        counts = np.bincount(labels.ravel())
        if counts.size < 2:
            continue
        best = int(np.argmax(counts[1:])) + 1  # skimage numbers raster-first: lowest label wins ties
        y0, x0, y1, x1 = regionprops((labels == best).view(np.uint8))[0].bbox  # max exclusive
        out.boxes[b] = (x0, y0, x1 - 1, y1 - 1)
        out.areas[b] = counts[best]
    return out


def _bfs_largest(image: list[list[bool]], steps: tuple[tuple[int, int], ...]) -> tuple[int, tuple[int, ...]]:
    """(area, (x0, y0, x1, y1)) of the largest component of one image given as nested lists."""
    H, W = len(image), len(image[0])
    seen = [[False] * W for _ in range(H)]
    best_area, best_box = 0, EMPTY_BOX
    for y in range(H):
        row = image[y]
        for x in range(W):
            if not row[x] or seen[y][x]:
                continue
            seen[y][x] = True
            queue = deque([(y, x)])
            area, y0, x0, y1, x1 = 0, y, x, y, x
            while queue:
                cy, cx = queue.popleft()
                area += 1
                y0, y1 = min(y0, cy), max(y1, cy)
                x0, x1 = min(x0, cx), max(x1, cx)
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < H and 0 <= nx < W and image[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        queue.append((ny, nx))
            if area > best_area:  # strict: the raster-first component wins ties
                best_area, best_box = area, (x0, y0, x1, y1)
    return best_area, best_box


def python_bfs_peer(masks: np.ndarray, connectivity: int = 4) -> Answer:
    _check_connectivity(connectivity)
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
    if connectivity == 8:
        steps += ((-1, -1), (-1, 1), (1, -1), (1, 1))
    out = empty_answer(masks.shape[0])
    for b, image in enumerate(masks):
        area, box = _bfs_largest(image.tolist(), steps)
        out.boxes[b] = box
        out.areas[b] = area
    return out


CPU_PEERS: dict[str, tuple[str, Callable[[np.ndarray, int], Answer]]] = {
    # name: (module to import, function)
    "cv2": ("cv2", cv2_peer),
    "cc3d": ("cc3d", cc3d_peer),
    "scipy": ("scipy.ndimage", scipy_peer),
    "skimage": ("skimage.measure", skimage_peer),
    "python_bfs": ("collections", python_bfs_peer),
}


# ----------------------------------------------------------------------------------- GPU peers
def stats_from_labels(labels: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest component per image from labels that are unique across the whole batch.

    labels: (B,H,W) integer tensor, 0 background, ids in [0, num_labels). All on the labels'
    device, no host loop. Returns (boxes float32 (B,4), areas int64 (B,)) in our format.
    """
    B, H, W = labels.shape
    flat = labels.reshape(-1).long()
    device = labels.device
    areas = torch.bincount(flat, minlength=num_labels)
    areas[0] = 0
    index = torch.arange(flat.numel(), device=device)
    first_pixel = torch.full((num_labels,), flat.numel(), device=device, dtype=torch.long)
    first_pixel.scatter_reduce_(0, flat, index, reduce="amin")
    present = areas > 0
    image_of = (first_pixel // (H * W)).clamp_max(B - 1)
    # One key per label: larger area first, then the earlier first pixel (raster-first on ties).
    key = torch.where(present, areas * (B * H * W) + (B * H * W - 1 - first_pixel), -1)
    best_key = torch.full((B,), -1, device=device, dtype=torch.long)
    best_key.scatter_reduce_(0, image_of, key, reduce="amax")
    found = best_key >= 0
    best_area = torch.where(found, best_key // (B * H * W), 0)
    best_first = (B * H * W - 1 - best_key % (B * H * W)).clamp(0, flat.numel() - 1)
    best_label = torch.where(found, flat[best_first], -1)
    winner = labels.reshape(B, H, W) == best_label.view(B, 1, 1)
    rows, cols = winner.any(2), winner.any(1)
    ys, xs = torch.arange(H, device=device), torch.arange(W, device=device)
    boxes = torch.stack([
        torch.where(cols, xs, W).amin(1), torch.where(rows, ys, H).amin(1),
        torch.where(cols, xs, -1).amax(1), torch.where(rows, ys, -1).amax(1),
    ], 1).float()
    boxes = torch.where(found[:, None], boxes, torch.full_like(boxes, -1.0))
    return boxes, best_area


def cupyx_peer(masks: torch.Tensor, connectivity: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    import cupy
    from cupyx.scipy import ndimage as cundimage

    _check_connectivity(connectivity)
    structure = cupy.asarray(_batch_structure(connectivity))
    labels, count = cundimage.label(cupy.from_dlpack(masks.contiguous().view(torch.uint8)), structure=structure)
    return stats_from_labels(torch.from_dlpack(labels), int(count) + 1)


def kornia_union_find_peer(masks: torch.Tensor, connectivity: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    from kornia.contrib import connected_components_union_find

    if connectivity != 8:
        raise ValueError("kornia labels 8-connected components only")
    B, H, W = masks.shape
    labels = connected_components_union_find(masks[:, None])[:, 0]
    return stats_from_labels(labels, B * ((H + 1) // 2) * ((W + 1) // 2) + 1)


def kornia_pool_peer(masks: torch.Tensor, connectivity: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    from kornia.contrib import connected_components

    if connectivity != 8:
        raise ValueError("kornia labels 8-connected components only")
    B, H, W = masks.shape
    labels = connected_components(masks[:, None].float(), num_iterations=max(H, W))[:, 0]
    return stats_from_labels(labels, B * H * W + 1)


GPU_PEERS = {
    "cupyx": ("cupyx.scipy.ndimage", cupyx_peer),
    "kornia_union_find": ("kornia.contrib", kornia_union_find_peer),
    "kornia_pool": ("kornia.contrib", kornia_pool_peer),
}
GPU_CONNECTIVITY = {"cupyx": (4, 8), "kornia_union_find": (8,), "kornia_pool": (8,)}
