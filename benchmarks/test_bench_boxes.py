"""boxes_from_probs (the paper's mask filter, fused) at downscale 4 and 1, against the same filter
composed from peers.

Groups "boxes_from_probs dD: device BxS^2": ours against
* ``cv2``: per image ``cv2.resize(INTER_AREA)`` (skipped at d1), threshold, connectedComponentsWithStats;
* ``paper_bfs`` (d4, sides up to 512): the paper's filter, cv2 area resize + the Python BFS;
* ``torch+cupyx`` (GPU): adaptive average pooling in PyTorch, cupyx labelling.
Every peer maps its cell box back to the full-resolution pixels the cells cover (our documented
policy) so the outputs can be compared exactly; the probabilities are multiples of 1/256, so the
area averages and the 0.75 threshold are exact everywhere. Ours at d4 records in extra_info how far
its boxes lie from the exact full-resolution (d1) boxes: the price of the paper's downscale.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inputs import PROB_THRESHOLD, coarse_probs
from peers import Answer, cupyx_peer, cv2_peer, python_bfs_peer
from sammed_fast import ops

CONNECTIVITY = 4  # the paper's BFS
full = pytest.mark.full
CPU_SHAPES = [pytest.param((64, 128), id="64x128^2"), pytest.param((64, 512), id="64x512^2", marks=full)]
GPU_SHAPES = [pytest.param((256, 512), id="256x512^2")]
DOWNSCALES = [4, 1]


def cells_to_pixels(cells: Answer, side: int, downscale: int) -> np.ndarray:
    """Cell boxes (B,4) -> full-resolution boxes, whole image where there is no component."""
    n = -(-side // downscale)
    x0, y0, x1, y1 = cells.boxes.astype(np.int64).T
    boxes = np.stack([x0 * side // n, y0 * side // n, -((-(x1 + 1) * side) // n) - 1,
                      -((-(y1 + 1) * side) // n) - 1], 1).astype(np.float32)
    boxes[cells.areas == 0] = (0, 0, side - 1, side - 1)
    return boxes


def cv2_filter(probs: np.ndarray, downscale: int, labeller=cv2_peer) -> np.ndarray:
    """The filter from OpenCV parts: area resize, threshold, largest component, box back."""
    import cv2

    B, H, W = probs.shape
    if downscale > 1:
        cells = -(-H // downscale), -(-W // downscale)
        small = np.stack([cv2.resize(p, (cells[1], cells[0]), interpolation=cv2.INTER_AREA) for p in probs])
    else:
        small = probs
    return cells_to_pixels(labeller(small > PROB_THRESHOLD, CONNECTIVITY), H, downscale)


def torch_cupyx_filter(probs: torch.Tensor, downscale: int) -> torch.Tensor:
    B, H, W = probs.shape
    small = probs
    if downscale > 1:
        small = F.adaptive_avg_pool2d(probs[:, None], (-(-H // downscale), -(-W // downscale)))[:, 0]
    boxes, areas = cupyx_peer(small > PROB_THRESHOLD, CONNECTIVITY)
    return torch.from_numpy(cells_to_pixels(Answer(boxes.cpu().numpy(), areas.cpu().numpy()), H, downscale))


_exact: dict[tuple, np.ndarray] = {}


def expected_boxes(shape, downscale: int) -> np.ndarray:
    key = (shape, downscale)
    if key not in _exact:
        _exact[key] = cv2_filter(coarse_probs(*shape), downscale)
    return _exact[key]


def assert_boxes(found: np.ndarray, expected: np.ndarray, what: str) -> None:
    bad = np.flatnonzero((found != expected).any(1))
    if bad.size:
        b = int(bad[0])
        raise AssertionError(f"{what}: {bad.size} boxes differ, first image {b}: {found[b].tolist()} "
                             f"!= {expected[b].tolist()}")


def shift_info(boxes: np.ndarray, exact: np.ndarray) -> dict:
    """How far the d4 boxes lie from the exact (d1) ones, in full-resolution pixels."""
    shift = np.abs(boxes - exact)
    return dict(box_shift_max_px=float(shift.max()), box_shift_mean_px=round(float(shift.mean()), 3),
                boxes_changed=round(float((shift > 0).any(1).mean()), 3))


def group_name(downscale: int, device: str, shape) -> str:
    return f"boxes_from_probs d{downscale}: {device} {shape[0]}x{shape[1]}^2"


def info(shape, downscale: int, impl: str) -> dict:
    return dict(op="boxes_from_probs", batch=shape[0], side=shape[1], input="coarse probs",
                downscale=downscale, impl=impl, pixels=shape[0] * shape[1] ** 2)


def run_ours(bench, device: str, shape, downscale: int) -> None:
    probs = torch.from_numpy(coarse_probs(*shape)).to(device)
    exact = expected_boxes(shape, 1)

    def fn():
        result = ops.boxes_from_probs(probs, PROB_THRESHOLD, downscale, CONNECTIVITY)
        bench.synchronize(device)
        return result

    def check(result) -> None:
        boxes = result.boxes.cpu().numpy()
        assert_boxes(boxes, expected_boxes(shape, downscale), f"ours d{downscale} vs cv2")
        if downscale > 1:
            bench.benchmark.extra_info.update(shift_info(boxes, exact))

    bench(fn, check=check, group=group_name(downscale, device, shape), role="ours", device=device,
          ours_impl=bench.implementation("boxes_from_probs", device), **info(shape, downscale, "ours"))


@pytest.mark.parametrize("impl", ["ours", "cv2", "paper_bfs"])
@pytest.mark.parametrize("downscale", DOWNSCALES)
@pytest.mark.parametrize("shape", CPU_SHAPES)
def test_boxes_from_probs_cpu(bench, shape, downscale, impl):
    if impl == "ours":
        run_ours(bench, "cpu", shape, downscale)
        return
    pytest.importorskip("cv2")
    if impl == "paper_bfs" and (downscale == 1 or shape[1] > 512):
        pytest.skip("the paper's BFS runs on the 4x downscaled map of slices up to 512^2 only")
    probs = coarse_probs(*shape)
    labeller = python_bfs_peer if impl == "paper_bfs" else cv2_peer
    expected = expected_boxes(shape, downscale)
    bench(lambda: cv2_filter(probs, downscale, labeller),
          check=lambda boxes: assert_boxes(boxes, expected, f"{impl} d{downscale} vs ours' definition"),
          group=group_name(downscale, "cpu", shape), role="peer", **info(shape, downscale, impl))


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["ours", "torch+cupyx"])
@pytest.mark.parametrize("downscale", DOWNSCALES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_boxes_from_probs_cuda(bench, shape, downscale, impl):
    if impl == "ours":
        run_ours(bench, "cuda", shape, downscale)
        return
    pytest.importorskip("cupyx.scipy.ndimage")
    probs = torch.from_numpy(coarse_probs(*shape)).cuda()
    expected = expected_boxes(shape, downscale)

    def fn():
        boxes = torch_cupyx_filter(probs, downscale)
        bench.synchronize("cuda")
        return boxes

    bench(fn, check=lambda boxes: assert_boxes(boxes.numpy(), expected, f"{impl} d{downscale} vs ours' definition"),
          group=group_name(downscale, "cuda", shape), role="peer", device="cuda", **info(shape, downscale, impl))
