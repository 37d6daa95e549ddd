"""label_components, largest_component and boxes_from_probs against scipy / numpy oracles.

Every correctness test runs the compiled op directly and the pure-PyTorch reference (the ``ops``
fixture), on CPU and, with a GPU, on CUDA; the public wrappers are tested for argument checks.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    example_count,
    oracle_largest,
    require_kernel,
    scipy_labels,
    to_numpy,
)
from sammed_fast import ops as public

CONNECTIVITIES = (4, 8)


# ----------------------------------------------------------------------------- mask generators
def random_masks(rng: np.random.Generator, shape: tuple[int, int, int], density: float, kind: str) -> np.ndarray:
    """(B,H,W) bool: i.i.d. pixels ("iid") or thresholded smooth noise ("blobs") of about ``density``."""
    B, H, W = shape
    if kind == "iid":
        return rng.random(shape) < density
    coarse = rng.random((B, H // 6 + 2, W // 6 + 2))
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[:, None], size=(H, W), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    noisy = smooth + 0.15 * rng.random(shape)
    return noisy < np.quantile(noisy, density)


@st.composite
def mask_batches(draw, max_side: int = 300, max_batch: int = 3) -> np.ndarray:
    B = draw(st.integers(1, max_batch))
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side))
    density = draw(st.floats(0.05, 0.95))
    kind = draw(st.sampled_from(["iid", "blobs"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return random_masks(np.random.default_rng(seed), (B, H, W), density, kind)


def checkerboard(H: int, W: int) -> np.ndarray:
    return (np.add.outer(np.arange(H), np.arange(W)) % 2) == 0


def anti_diagonals(H: int, W: int, period: int = 3) -> np.ndarray:
    return (np.add.outer(np.arange(H), np.arange(W)) % period) == 0


def diagonals(H: int, W: int, period: int = 3) -> np.ndarray:
    return (np.subtract.outer(np.arange(H), np.arange(W)) % period) == 0


def serpentine(H: int, W: int) -> np.ndarray:
    """A one-pixel-wide snake: every even row full, odd rows joined at alternating ends."""
    mask = np.zeros((H, W), dtype=bool)
    mask[::2] = True
    for row in range(1, H, 2):
        mask[row, W - 1 if (row // 2) % 2 == 0 else 0] = True
    return mask


def spiral(H: int, W: int) -> np.ndarray:
    """A one-pixel-wide clockwise spiral from the top-left corner with one-pixel gaps between turns."""
    mask = np.zeros((H, W), dtype=bool)
    inside = lambda y, x: 0 <= y < H and 0 <= x < W  # noqa: E731
    y, x, dy, dx = 0, 0, 0, 1
    mask[0, 0] = True
    while True:
        for _ in range(2):  # straight on, else turn right once
            ny, nx = y + dy, x + dx
            if inside(ny, nx) and not mask[ny, nx] and not (inside(ny + dy, nx + dx) and mask[ny + dy, nx + dx]):
                y, x = ny, nx
                mask[y, x] = True
                break
            dy, dx = dx, -dy
        else:
            return mask


def comb(H: int, W: int, teeth_down: bool = True) -> np.ndarray:
    """Teeth in every other column joined by one row at the bottom (or top): many provisional labels
    in a raster scan that merge only at the end (or only at the start)."""
    mask = np.zeros((H, W), dtype=bool)
    mask[:, ::2] = True
    mask[H - 1 if teeth_down else 0] = True
    return mask


def row_wrap(H: int, W: int) -> np.ndarray:
    """Only the first and last columns: adjacent in flat memory across row ends, never connected."""
    mask = np.zeros((H, W), dtype=bool)
    mask[:, 0] = mask[:, -1] = True
    return mask


def stacked(*images: np.ndarray) -> np.ndarray:
    return np.stack(images)


ADVERSARIAL = {
    "checkerboard": lambda: stacked(checkerboard(31, 47)),
    "checkerboard_odd_phase": lambda: stacked(~checkerboard(30, 33)),
    "anti_diagonals": lambda: stacked(anti_diagonals(40, 29)),
    "anti_diagonals_dense": lambda: stacked(anti_diagonals(33, 35, period=2)),
    "diagonals": lambda: stacked(diagonals(29, 40)),
    "serpentine": lambda: stacked(serpentine(41, 37)),
    "serpentine_transposed": lambda: stacked(serpentine(37, 41).T),
    "spiral": lambda: stacked(spiral(45, 45)),
    "spiral_wide": lambda: stacked(spiral(21, 64)),
    "stripes_horizontal": lambda: stacked(np.repeat((np.arange(30) % 2 == 0)[:, None], 31, 1)),
    "stripes_vertical": lambda: stacked(np.repeat((np.arange(31) % 2 == 0)[None], 30, 0)),
    "comb_down": lambda: stacked(comb(20, 41, True)),
    "comb_up": lambda: stacked(comb(20, 41, False)),
    "row_wrap": lambda: stacked(row_wrap(17, 9)),
    "full": lambda: np.ones((2, 19, 23), dtype=bool),
    "empty": lambda: np.zeros((2, 19, 23), dtype=bool),
    "single_pixel": lambda: stacked(np.pad(np.ones((1, 1), bool), ((5, 7), (3, 2)))),
    "one_by_one": lambda: np.array([[[True]], [[False]]]),
    "row_1xN": lambda: np.random.default_rng(1).random((3, 1, 257)) < 0.5,
    "column_Nx1": lambda: np.random.default_rng(2).random((3, 257, 1)) < 0.5,
    "odd_sizes": lambda: np.random.default_rng(3).random((2, 3, 5)) < 0.6,
    "mixed_batch": lambda: stacked(checkerboard(24, 24), spiral(24, 24), np.ones((24, 24), bool),
                                   np.zeros((24, 24), bool), serpentine(24, 24)),
}


def diagonal_bridges(H: int, W: int, period: int = 7) -> np.ndarray:
    """Rows alternate between runs at columns [0,2) and [4,6) of every period and runs at [2,4):
    each lower run touches two upper runs, both only through a diagonal (one component per bridge
    chain in 8-connectivity, none joined in 4). The phase moves by one column every two rows, so
    the contacts fall on every column, word boundaries (multiples of 64) included."""
    ys, xs = np.mgrid[:H, :W]
    phase = (xs + ys // 2) % period
    return np.where(ys % 2 == 0, (phase < 2) | ((phase >= 4) & (phase < 6)), (phase >= 2) & (phase < 4))


def word_edges(H: int, W: int, seed: int) -> np.ndarray:
    """Noise whose runs start, end and touch diagonally at both sides of every 64-column word
    boundary and at both row ends."""
    mask = np.random.default_rng(seed).random((H, W)) < 0.5
    for x in (*range(63, W, 64), 0, W - 1):
        mask[::3, max(x - 1, 0) : x + 2] = True  # a run across the boundary
        mask[1::3, x] = False
        mask[2::3, x] = ~mask[2::3, max(x - 1, 0)]  # contacts at the boundary only diagonally
    return mask


# Cases where run-based labelling has its own traps (tests/test_ops_components.py runs them, and
# ADVERSARIAL, through both CPU labellers: see with_header).
RUN_TRAPS = {
    "run_diagonal_bridges": lambda: stacked(diagonal_bridges(24, 200)),
    "run_word_edges_63": lambda: stacked(word_edges(20, 63, 0)),
    "run_word_edges_64": lambda: stacked(word_edges(20, 64, 1), word_edges(20, 64, 2)),
    "run_word_edges_65": lambda: stacked(word_edges(20, 65, 3)),
    "run_word_edges_129": lambda: stacked(word_edges(20, 129, 4), word_edges(20, 129, 5)),
    "run_row_ends": lambda: (np.random.default_rng(8).random((3, 30, 40)) < 0.5)
    | (np.arange(40) % 39 == 0),
    "run_long_rows": lambda: np.random.default_rng(9).random((2, 8, 3001)) < 0.7,
    "run_long_full_rows": lambda: np.repeat(np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)[None, :, None], 2, 0)
    .repeat(2500, 2),
    "run_single_column": lambda: np.random.default_rng(10).random((2, 600, 1)) < 0.5,
    "run_two_columns": lambda: np.random.default_rng(11).random((2, 300, 2)) < 0.5,
}


def with_header(masks: np.ndarray, header: str) -> np.ndarray:
    """The masks below 4 rows of alternating columns ("noise": the CPU kernel labels the image with
    BitLabeller) or 4 empty rows ("empty": RunLabeller), which it decides from the first rows."""
    B, _, W = masks.shape
    rows = np.zeros((B, 4, W), dtype=bool)
    if header == "noise":
        rows[:, :, ::2] = True
    return np.concatenate([rows, masks.astype(bool)], axis=1)


def batch_seams(B: int = 4, H: int = 7, W: int = 7) -> np.ndarray:
    """Image b's last row and b+1's first row are full (tied largest components); between them an
    island on the left edge (odd images) or the right edge (even images)."""
    masks = np.zeros((B, H, W), dtype=bool)
    masks[:, 0] = masks[:, -1] = True
    masks[1::2, 2 : H - 2, 0] = masks[::2, 2 : H - 2, -1] = True
    return masks


def as_tensor(masks: np.ndarray, device: str, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(masks)).to(device=device, dtype=dtype)


def check_labels(ops, masks_np: np.ndarray, masks: torch.Tensor, connectivity: int) -> torch.Tensor:
    labels = ops.label_components(masks, connectivity)
    assert labels.dtype == torch.int32
    assert labels.shape == masks.shape
    assert labels.device == masks.device
    np.testing.assert_array_equal(to_numpy(labels), scipy_labels(masks_np, connectivity))
    return labels


def check_largest(ops, masks_np: np.ndarray, masks: torch.Tensor, connectivity: int) -> None:
    result = ops.largest_component(masks, connectivity)
    want_mask, want_boxes, want_areas = oracle_largest(masks_np, connectivity)
    assert result.mask.dtype == torch.bool and result.mask.shape == masks.shape
    assert result.boxes.dtype == torch.float32 and result.boxes.shape == (masks.shape[0], 4)
    assert result.areas.dtype == torch.int64 and result.areas.shape == (masks.shape[0],)
    assert {t.device for t in result} == {masks.device}
    np.testing.assert_array_equal(to_numpy(result.areas), want_areas)
    np.testing.assert_array_equal(to_numpy(result.mask), want_mask)
    np.testing.assert_array_equal(to_numpy(result.boxes), want_boxes)
    found = want_areas > 0
    if found.any():  # the box convention is torchvision's
        tv = torchvision.ops.masks_to_boxes(torch.from_numpy(want_mask[found]))
        np.testing.assert_array_equal(to_numpy(result.boxes)[found], tv.numpy())


# ----------------------------------------------------------------------------- label_components
def test_label_components_matches_scipy_on_random_masks(ops, device):
    @settings(max_examples=example_count(ops))
    @given(masks_np=mask_batches())
    def check(masks_np):
        masks = as_tensor(masks_np, device)
        for connectivity in CONNECTIVITIES:
            check_labels(ops, masks_np, masks, connectivity)

    check()


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_label_components_adversarial(ops, device, case, connectivity):
    masks_np = ADVERSARIAL[case]()
    check_labels(ops, masks_np, as_tensor(masks_np, device), connectivity)


@pytest.mark.parametrize("shape", [(31, 47), (30, 30), (1, 9), (9, 1), (2, 2)])
def test_checkerboard_counts(ops, device, shape):
    """Independent of scipy: one component in 8-connectivity, only singletons in raster order in 4."""
    board = checkerboard(*shape)
    masks = as_tensor(board[None], device)
    eight = to_numpy(ops.label_components(masks, 8))[0]
    assert eight.max() == (1 if min(shape) >= 2 else board.sum())
    four = to_numpy(ops.label_components(masks, 4))[0]
    np.testing.assert_array_equal(four[board], np.arange(1, board.sum() + 1))
    assert (four[~board] == 0).all()


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("pattern", [serpentine, spiral])
def test_large_one_pixel_wide_path_is_one_component(ops, device, connectivity, pattern):
    path = pattern(300, 300)
    labels = check_labels(ops, path[None], as_tensor(path[None], device), connectivity)
    assert int(labels.max()) == 1
    result = ops.largest_component(as_tensor(path[None], device), connectivity)
    assert int(result.areas[0]) == int(path.sum())


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_components_never_cross_batch_seams(ops, device, connectivity):
    masks_np = batch_seams()
    labels = check_labels(ops, masks_np, as_tensor(masks_np, device), connectivity)
    # each image numbers its own components from 1 (first row, island, last row), never shared
    assert [int(v) for v in labels.flatten(1).amax(1)] == [3] * masks_np.shape[0]
    check_largest(ops, masks_np, as_tensor(masks_np, device), connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_batch_labels_equal_single_image_labels(ops, device, connectivity):
    rng = np.random.default_rng(7)
    masks_np = random_masks(rng, (5, 33, 29), 0.55, "iid")
    masks_np[:, -1] = masks_np[:, 0] = True
    batched = to_numpy(ops.label_components(as_tensor(masks_np, device), connectivity))
    for b in range(masks_np.shape[0]):
        single = to_numpy(ops.label_components(as_tensor(masks_np[b : b + 1], device), connectivity))
        np.testing.assert_array_equal(batched[b : b + 1], single)


def non_contiguous_views(masks_np: np.ndarray, device: str) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Non-contiguous tensors with the contiguous array each one shows."""
    base = as_tensor(masks_np, device)
    wide = torch.stack([~base, base], -1)
    return {
        "transposed": (base.transpose(1, 2), masks_np.transpose(0, 2, 1)),
        "strided": (base[:, ::2, 1::3], masks_np[:, ::2, 1::3]),
        "last_axis_slice": (wide[..., 1], masks_np),
        "column_offset": (base[:, :, 1:], masks_np[:, :, 1:]),
        "expanded_batch": (base[:1].expand(3, -1, -1), np.repeat(masks_np[:1], 3, 0)),
    }


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_non_contiguous_inputs(ops, device, connectivity):
    masks_np = random_masks(np.random.default_rng(11), (2, 31, 44), 0.5, "blobs")
    for name, (view, array) in non_contiguous_views(masks_np, device).items():
        assert not view.is_contiguous(), name
        check_labels(ops, np.ascontiguousarray(array), view, connectivity)
        check_largest(ops, np.ascontiguousarray(array), view, connectivity)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_uint8_nonzero_values_are_foreground(ops, device, connectivity):
    rng = np.random.default_rng(5)
    masks_np = random_masks(rng, (3, 40, 41), 0.5, "iid")
    values = np.where(masks_np, rng.integers(1, 256, masks_np.shape), 0).astype(np.uint8)
    as_bool = ops.label_components(as_tensor(masks_np, device), connectivity)
    as_uint8 = check_labels(ops, masks_np, torch.from_numpy(values).to(device), connectivity)
    assert torch.equal(as_bool, as_uint8)
    check_largest(ops, masks_np, torch.from_numpy(values).to(device), connectivity)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_empty_batch(ops, device, dtype):
    masks = torch.zeros(0, 13, 17, dtype=dtype, device=device)
    labels = ops.label_components(masks, 8)
    assert labels.shape == (0, 13, 17) and labels.dtype == torch.int32 and labels.device == masks.device
    result = ops.largest_component(masks, 4)
    assert result.mask.shape == (0, 13, 17) and result.boxes.shape == (0, 4) and result.areas.shape == (0,)
    assert (result.mask.dtype, result.boxes.dtype, result.areas.dtype) == (torch.bool, torch.float32, torch.int64)


# ----------------------------------------------------------------------------- largest_component
def test_largest_component_matches_oracle(ops, device):
    @settings(max_examples=example_count(ops))
    @given(masks_np=mask_batches(max_side=200, max_batch=4))
    def check(masks_np):
        masks = as_tensor(masks_np, device)
        for connectivity in CONNECTIVITIES:
            check_largest(ops, masks_np, masks, connectivity)

    check()


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_largest_component_adversarial(ops, device, case, connectivity):
    masks_np = ADVERSARIAL[case]()
    check_largest(ops, masks_np, as_tensor(masks_np, device), connectivity)


@pytest.mark.parametrize("case", sorted(ADVERSARIAL) + sorted(RUN_TRAPS))
@pytest.mark.parametrize("header", ["noise", "empty"])
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_both_cpu_labellers(ops, device, case, header, connectivity):
    masks_np = with_header({**ADVERSARIAL, **RUN_TRAPS}[case](), header)
    masks = as_tensor(masks_np, device)
    check_labels(ops, masks_np, masks, connectivity)
    check_largest(ops, masks_np, masks, connectivity)


@pytest.mark.parametrize("case", sorted(RUN_TRAPS))
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_run_traps(ops, device, case, connectivity):
    masks_np = RUN_TRAPS[case]()
    masks = as_tensor(masks_np, device)
    check_labels(ops, masks_np, masks, connectivity)
    check_largest(ops, masks_np, masks, connectivity)


def tie_cases() -> np.ndarray:
    """Images whose largest components tie in area."""
    first_row_right = np.zeros((4, 8), dtype=bool)
    first_row_right[0, 4:7] = True  # raster-first (label 1) although its 2x2 block comes later
    first_row_right[1, 0:3] = True  # not 8-adjacent to the other
    squares = np.zeros((4, 8), dtype=bool)
    squares[2:4, 6:8] = squares[2:4, 0:2] = squares[0:2, 3:5] = True
    u_shape = np.zeros((4, 8), dtype=bool)
    u_shape[0:4, 6] = u_shape[3, 6:8] = True  # 5 px, starts at (0, 6)
    u_shape[1, 0:4] = u_shape[2, 0] = True  # 5 px, starts at (1, 0)
    return np.stack([first_row_right, squares, u_shape])


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_largest_component_ties_go_to_lowest_label(ops, device, connectivity):
    masks_np = tie_cases()
    check_largest(ops, masks_np, as_tensor(masks_np, device), connectivity)
    boxes = to_numpy(ops.largest_component(as_tensor(masks_np, device), connectivity).boxes)
    np.testing.assert_array_equal(boxes, [[4, 0, 6, 0], [3, 0, 4, 1], [6, 0, 7, 3]])


def test_largest_component_empty_image(ops, device):
    masks = torch.zeros(2, 5, 6, dtype=torch.uint8, device=device)
    masks[1, 2, 3] = 1
    result = ops.largest_component(masks, 8)
    assert result.areas.tolist() == [0, 1]
    assert result.boxes.tolist() == [[-1.0, -1.0, -1.0, -1.0], [3.0, 2.0, 3.0, 2.0]]
    assert not result.mask[0].any() and int(result.mask[1].sum()) == 1


# ----------------------------------------------------------------------------- boxes_from_probs
def quantised_probs(rng: np.random.Generator, shape: tuple[int, int, int], kind: str) -> np.ndarray:
    """float32 probabilities that are multiples of 1/256, so block sums are exact."""
    if kind == "blobs":
        field = random_masks(rng, shape, 0.5, "blobs").astype(np.float64) * 0.6 + 0.4 * rng.random(shape)
    else:
        field = rng.random(shape)
    return (np.floor(field * 256) / 256).astype(np.float32)


def cell_spans(size: int, cells: int) -> list[tuple[int, int]]:
    """Pixel range [floor(i*size/cells), ceil((i+1)*size/cells)) of each adaptive pooling cell."""
    return [((i * size) // cells, -((-(i + 1) * size) // cells)) for i in range(cells)]


def oracle_boxes_from_probs(
    probs: np.ndarray, threshold: float, downscale: int, connectivity: int, empty: str
) -> tuple[np.ndarray, np.ndarray]:
    """Block means by explicit loops over cells, scipy's largest cell component, and the box of the
    full-resolution pixels its cells cover."""
    B, H, W = probs.shape
    h, w = (math.ceil(H / downscale), math.ceil(W / downscale)) if downscale > 1 else (H, W)
    rows, cols = cell_spans(H, h), cell_spans(W, w)
    means = np.zeros((B, h, w))
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            means[:, i, j] = probs[:, y0:y1, x0:x1].astype(np.float64).mean(axis=(1, 2))
    cells, _, areas = oracle_largest(means > threshold, connectivity)
    boxes = np.zeros((B, 4), dtype=np.float32)
    for b in range(B):
        if areas[b] == 0:
            boxes[b] = (0, 0, W - 1, H - 1) if empty == "full" else np.nan
            continue
        covered = np.zeros((H, W), dtype=bool)
        for i, j in zip(*np.nonzero(cells[b])):
            covered[rows[i][0] : rows[i][1], cols[j][0] : cols[j][1]] = True
        ys, xs = np.nonzero(covered)
        boxes[b] = (xs.min(), ys.min(), xs.max(), ys.max())
    return boxes, areas == 0


def check_boxes(ops, probs_np, probs, threshold, downscale, connectivity, empty="full") -> None:
    result = ops.boxes_from_probs(probs, threshold, downscale, connectivity, empty)
    want_boxes, want_empty = oracle_boxes_from_probs(probs_np, threshold, downscale, connectivity, empty)
    assert result.boxes.dtype == torch.float32 and result.boxes.shape == (probs.shape[0], 4)
    assert result.empty.dtype == torch.bool and result.empty.shape == (probs.shape[0],)
    assert {t.device for t in result} == {probs.device}
    np.testing.assert_array_equal(to_numpy(result.empty), want_empty)
    np.testing.assert_array_equal(to_numpy(result.boxes), want_boxes)


def test_boxes_from_probs_full_resolution_matches_scipy(ops, device):
    @settings(max_examples=example_count(ops))
    @given(
        shape=st.tuples(st.integers(1, 3), st.integers(1, 120), st.integers(1, 120)),
        threshold=st.integers(0, 256).map(lambda k: k / 256),
        connectivity=st.sampled_from(CONNECTIVITIES),
        kind=st.sampled_from(["iid", "blobs"]),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(shape, threshold, connectivity, kind, seed):
        probs_np = quantised_probs(np.random.default_rng(seed), shape, kind)
        check_boxes(ops, probs_np, torch.from_numpy(probs_np).to(device), threshold, 1, connectivity)

    check()


def test_boxes_from_probs_downscaled_matches_numpy(ops, device):
    @settings(max_examples=example_count(ops))
    @given(
        shape=st.tuples(st.integers(1, 3), st.integers(1, 150), st.integers(1, 150)),
        downscale=st.integers(2, 6),
        threshold=st.sampled_from([0.25, 0.5, 0.75, 129 / 256]),
        connectivity=st.sampled_from(CONNECTIVITIES),
        kind=st.sampled_from(["iid", "blobs"]),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(shape, downscale, threshold, connectivity, kind, seed):
        probs_np = quantised_probs(np.random.default_rng(seed), shape, kind)
        check_boxes(ops, probs_np, torch.from_numpy(probs_np).to(device), threshold, downscale, connectivity)

    check()


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (50, 37), (3, 2), (1, 1), (1, 9), (5, 4), (4, 4), (7, 130)])
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_boxes_from_probs_downscale_4_sizes(ops, device, size, connectivity):
    probs_np = quantised_probs(np.random.default_rng(sum(size)), (3, *size), "blobs")
    probs_np[2] = 0.0  # an empty image in the batch
    check_boxes(ops, probs_np, torch.from_numpy(probs_np).to(device), 0.5, 4, connectivity)


def test_boxes_from_probs_cell_equal_to_threshold_is_background(ops, device):
    """A block whose mean equals the threshold exactly is background (policy: prob > threshold)."""
    probs = torch.zeros(1, 8, 12, device=device)
    probs[0, 0:4, 0:4] = 0.75  # mean exactly 0.75: not kept
    probs[0, 4:8, 8:12] = 193 / 256  # mean just above 0.75: kept
    result = ops.boxes_from_probs(probs, 0.75, 4, 4, "full")
    assert result.boxes.tolist() == [[8.0, 4.0, 11.0, 7.0]] and not bool(result.empty[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("downscale", [1, 4])
def test_boxes_from_probs_input_dtypes(ops, device, dtype, downscale):
    probs_np = quantised_probs(np.random.default_rng(3), (3, 45, 38), "blobs")  # exact in every dtype
    probs = torch.from_numpy(probs_np).to(device=device, dtype=dtype)
    check_boxes(ops, probs_np, probs, 0.5, downscale, 4)


@pytest.mark.parametrize("downscale", [1, 4])
def test_boxes_from_probs_empty_modes(ops, device, downscale):
    probs = torch.zeros(3, 10, 7, device=device)
    probs[1, 2:8, 1:5] = 1.0
    full = ops.boxes_from_probs(probs, 0.5, downscale, 4, "full")
    assert full.empty.tolist() == [True, False, True]
    assert full.boxes[0].tolist() == [0.0, 0.0, 6.0, 9.0] and full.boxes[2].tolist() == [0.0, 0.0, 6.0, 9.0]
    nan = ops.boxes_from_probs(probs, 0.5, downscale, 4, "nan")
    assert nan.empty.tolist() == [True, False, True]
    assert bool(nan.boxes[[0, 2]].isnan().all()) and not bool(nan.boxes[1].isnan().any())
    assert torch.equal(nan.boxes[1], full.boxes[1])
    # threshold 1 keeps nothing: probabilities never exceed it
    assert bool(ops.boxes_from_probs(torch.ones(2, 5, 5, device=device), 1.0, downscale, 8, "full").empty.all())


def test_boxes_from_probs_non_contiguous(ops, device):
    probs_np = quantised_probs(np.random.default_rng(9), (2, 41, 30), "blobs")
    base = torch.from_numpy(probs_np).to(device)
    for view, array in [(base.transpose(1, 2), probs_np.transpose(0, 2, 1)), (base[:, 1::2, ::3], probs_np[:, 1::2, ::3])]:
        assert not view.is_contiguous()
        for downscale in (1, 4):
            check_boxes(ops, np.ascontiguousarray(array), view, 0.5, downscale, 4)


def test_boxes_from_probs_empty_batch(ops, device):
    result = ops.boxes_from_probs(torch.zeros(0, 9, 9, device=device), 0.5, 4, 4, "full")
    assert result.boxes.shape == (0, 4) and result.empty.shape == (0,)


# ----------------------------------------------------------------------------- public wrappers
def test_public_wrappers_return_named_tuples(device):
    masks = torch.zeros(2, 6, 6, dtype=torch.bool, device=device)
    masks[0, 1:3, 2:5] = True
    largest = public.largest_component(masks)
    assert isinstance(largest, public.LargestComponent)
    assert largest.boxes[0].tolist() == [2.0, 1.0, 4.0, 2.0] and largest.areas.tolist() == [6, 0]
    filtered = public.boxes_from_probs(masks.float(), downscale=1)
    assert isinstance(filtered, public.FilteredBoxes)
    assert filtered.boxes.tolist() == [[2.0, 1.0, 4.0, 2.0], [0.0, 0.0, 5.0, 5.0]]
    assert filtered.empty.tolist() == [False, True]
    # defaults: connectivity 8 for labels, 4 for boxes_from_probs
    diagonal = torch.eye(4, dtype=torch.bool, device=device)[None]
    assert int(public.label_components(diagonal).max()) == 1
    assert public.boxes_from_probs(diagonal.float(), downscale=1).boxes.tolist() == [[0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda m: public.label_components(m[0]), ValueError, "masks"),
        (lambda m: public.label_components(m[None]), ValueError, "masks"),
        (lambda m: public.label_components(m.float()), TypeError, "masks"),
        (lambda m: public.label_components(m.int()), TypeError, "masks"),
        (lambda m: public.label_components(m.cpu().numpy()), TypeError, "masks"),
        (lambda m: public.label_components(m, 6), ValueError, "connectivity"),
        (lambda m: public.label_components(m, 8.0), TypeError, "connectivity"),
        (lambda m: public.label_components(m[:, :0]), ValueError, "masks"),
        (lambda m: public.largest_component(m.float()), TypeError, "masks"),
        (lambda m: public.largest_component(m, 6), ValueError, "connectivity"),
        (lambda m: public.largest_component(m[0]), ValueError, "masks"),
        (lambda m: public.boxes_from_probs(m), TypeError, "probs"),
        (lambda m: public.boxes_from_probs(m.float()[0]), ValueError, "probs"),
        (lambda m: public.boxes_from_probs(torch.full_like(m, float("nan"), dtype=torch.float32)), ValueError, "probs"),
        (lambda m: public.boxes_from_probs(m.float(), threshold=1.5), ValueError, "threshold"),
        (lambda m: public.boxes_from_probs(m.float(), threshold=-0.1), ValueError, "threshold"),
        (lambda m: public.boxes_from_probs(m.float(), threshold="0.5"), TypeError, "threshold"),
        (lambda m: public.boxes_from_probs(m.float(), downscale=0), ValueError, "downscale"),
        (lambda m: public.boxes_from_probs(m.float(), downscale=2.0), TypeError, "downscale"),
        (lambda m: public.boxes_from_probs(m.float(), connectivity=6), ValueError, "connectivity"),
        (lambda m: public.boxes_from_probs(m.float(), empty="zero"), ValueError, "empty"),
        (lambda m: public.boxes_from_probs(m.float(), check_finite="no"), TypeError, "check_finite"),
    ],
)
def test_bad_arguments_name_the_argument(device, call, error, name):
    masks = torch.zeros(2, 5, 5, dtype=torch.bool, device=device)
    with pytest.raises(error, match=name):
        call(masks)


def test_nan_check_finds_a_single_nan(device):
    probs = torch.rand(2, 9, 9, device=device)
    probs[1, 8, 8] = float("nan")
    with pytest.raises(ValueError, match="probs"):
        public.boxes_from_probs(probs)
    public.boxes_from_probs(probs, check_finite=False)  # opting out must not raise


def test_32_bit_index_overflow_is_refused():
    huge = torch.zeros(1, 1, 1, dtype=torch.bool).expand(2**15, 2**8, 2**8)  # 2^31 elements, no memory
    with pytest.raises(ValueError, match="masks"):
        public.label_components(huge)
    with pytest.raises(ValueError, match="probs"):
        public.boxes_from_probs(torch.zeros(1, 1, 1).expand(2**15, 2**8, 2**8), check_finite=False)


@pytest.mark.parametrize("op", ["label_components", "largest_component"])
def test_compiled_ops_reject_bad_input_themselves(device, op):
    """The compiled ops are callable without the wrappers: they must raise, not crash or guess."""
    require_kernel(op, device)
    compiled = getattr(torch.ops.sammed_fast, op)
    masks = torch.zeros(2, 5, 5, dtype=torch.bool, device=device)
    for bad in [(masks.float(), 8), (masks[0], 8), (masks, 6)]:
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            compiled(*bad)


def test_compiled_boxes_from_probs_rejects_bad_input_itself(device):
    require_kernel("boxes_from_probs", device)
    probs = torch.zeros(2, 5, 5, device=device)
    for bad in [(probs[0], 0.5, 4, 4, True), (probs, 0.5, 0, 4, True), (probs, 0.5, 4, 6, True),
                (probs.bool(), 0.5, 4, 4, True)]:
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            torch.ops.sammed_fast.boxes_from_probs(*bad)


# ----------------------------------------------------------------------------- opcheck
def opcheck_cases(device: str):
    rng = np.random.default_rng(0)
    masks = as_tensor(random_masks(rng, (3, 21, 18), 0.5, "blobs"), device)
    probs = torch.from_numpy(quantised_probs(rng, (3, 21, 18), "blobs")).to(device)
    return {
        "label_components": [(masks, 8), (masks.to(torch.uint8), 4), (masks.transpose(1, 2), 8)],
        "largest_component": [(masks, 8), (masks.to(torch.uint8), 4)],
        "boxes_from_probs": [(probs, 0.5, 4, 4, True), (probs, 0.5, 1, 8, False), (probs.double(), 0.25, 3, 4, True),
                             (probs.double().requires_grad_(), 0.5, 2, 4, True)],
    }


@pytest.mark.parametrize("op", ["label_components", "largest_component", "boxes_from_probs"])
def test_opcheck(device, op):
    require_kernel(op, device)
    for args in opcheck_cases(device)[op]:
        torch.library.opcheck(getattr(torch.ops.sammed_fast, op).default, args)


# ----------------------------------------------------------------------------- CUDA against CPU
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_equals_cpu(ops, seed):
    rng = np.random.default_rng(seed)
    for shape, kind in [((6, 257, 190), "iid"), ((5, 128, 333), "blobs"), ((3, 1, 500), "iid")]:
        masks = as_tensor(random_masks(rng, shape, rng.uniform(0.1, 0.9), kind), "cpu")
        probs = torch.from_numpy(quantised_probs(rng, shape, kind))
        for connectivity in CONNECTIVITIES:
            assert torch.equal(ops.label_components(masks.cuda(), connectivity).cpu(),
                               public.label_components(masks, connectivity))
            for got, want in zip(ops.largest_component(masks.cuda(), connectivity),
                                 public.largest_component(masks, connectivity)):
                assert torch.equal(got.cpu(), want)
            for downscale in (1, 4):
                for got, want in zip(ops.boxes_from_probs(probs.cuda(), 0.5, downscale, connectivity),
                                     public.boxes_from_probs(probs, 0.5, downscale, connectivity)):
                    assert torch.equal(got.cpu(), want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_big_batch_equals_cpu():
    """64 x 512^2 once: CUDA kernels against the CPU implementation (compiled or reference)."""
    require_kernel("largest_component", "cuda")
    masks = as_tensor(random_masks(np.random.default_rng(4), (64, 512, 512), 0.4, "blobs"), "cpu")
    for connectivity in CONNECTIVITIES:
        labels = torch.ops.sammed_fast.label_components(masks.cuda(), connectivity).cpu()
        assert torch.equal(labels, public.label_components(masks, connectivity))
        got = torch.ops.sammed_fast.largest_component(masks.cuda(), connectivity)
        for g, w in zip(got, public.largest_component(masks, connectivity)):
            assert torch.equal(g.cpu(), w)

