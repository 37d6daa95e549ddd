"""merge_tiles, boxes_to_canvas and unmerge_tiles against plain PyTorch compositions.

The compositions slice, normalise and torch.cat one tile at a time, so they share no indexing code
with the ops. Correctness tests run the compiled op directly and the reference (``ops`` fixture).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from conftest import require_kernel
from sammed_fast import ops as public

LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- compositions
def composed_canvases(images, grid, mean=public.SAM_PIXEL_MEAN, std=public.SAM_PIXEL_STD, out_dtype=torch.float32):
    """Normalise each tile, repeat one channel to three, then cat tiles into rows and rows into canvases."""
    images = images.detach().cpu()
    B, C, h, w = images.shape
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    tiles = [(images[k].float().repeat(3 // C, 1, 1) - mean) / std for k in range(B)]
    per_canvas = grid * grid
    count = math.ceil(B / per_canvas)
    tiles += [torch.zeros(3, h, w)] * (count * per_canvas - B)
    canvases = [
        torch.cat([torch.cat(tiles[n * per_canvas + r * grid : n * per_canvas + (r + 1) * grid], dim=2)
                   for r in range(grid)], dim=1)
        for n in range(count)
    ]
    stacked = torch.stack(canvases) if canvases else torch.zeros(0, 3, grid * h, grid * w)
    return stacked.to(out_dtype)


def composed_unmerge(logits, grid, out_size=None):
    """Slice tile k's own quadrant out of its canvas, then F.interpolate (bilinear) when out_size."""
    logits = logits.detach().cpu().float()
    B, C, Hc, Wc = logits.shape
    th, tw = Hc // grid, Wc // grid
    tiles = []
    for k in range(B):
        row, col = divmod(k % (grid * grid), grid)
        tile = logits[k : k + 1, :, row * th : (row + 1) * th, col * tw : (col + 1) * tw]
        if out_size is not None:
            tile = F.interpolate(tile, size=out_size, mode="bilinear", align_corners=False)
        tiles.append(tile)
    size = out_size if out_size is not None else (th, tw)
    return torch.cat(tiles) if tiles else torch.zeros(0, C, *size)


def assert_close_to(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype, (got.dtype, dtype)
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    tolerance = 1e-2 if dtype in LOW_PRECISION else 1e-5
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=tolerance, atol=tolerance)


def random_images(B, C, h, w, dtype, device, seed=0):
    """Integer 0..255 pixel values (exact in every dtype) with a few fractional ones for floats."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 256, (B, C, h, w), generator=g).float()
    if dtype != torch.uint8:
        values = values + torch.randint(0, 4, values.shape, generator=g) / 4
        values = values.clamp(max=255)
    return values.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- merge_tiles
@pytest.mark.parametrize("grid", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_merge_tiles_matches_composition(ops, device, grid, channels, dtype):
    for B in sorted({1, grid * grid, grid * grid + 1, 2 * grid * grid - 1}):
        images = random_images(B, channels, 5, 7, dtype, device, seed=B)
        canvases = ops.merge_tiles(images, grid)
        assert canvases.device == images.device
        assert_close_to(canvases, composed_canvases(images, grid), torch.float32)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_merge_tiles_out_dtype(ops, device, out_dtype):
    images = random_images(7, 1, 6, 9, torch.uint8, device)
    canvases = ops.merge_tiles(images, 2, out_dtype=out_dtype)
    assert_close_to(canvases, composed_canvases(images, 2, out_dtype=out_dtype), out_dtype)


def test_merge_tiles_missing_tiles_are_zero(ops, device):
    images = torch.full((5, 3, 4, 6), 200, dtype=torch.uint8, device=device)
    canvases = ops.merge_tiles(images, 2)
    assert canvases.shape == (2, 3, 8, 12)
    assert bool((canvases[1, :, :4, :6] != 0).all())  # tile 4 at row 0, column 0 of canvas 1
    assert bool((canvases[1, :, :, 6:] == 0).all()) and bool((canvases[1, :, 4:] == 0).all())


def test_merge_tiles_custom_mean_std_and_channel_order(ops, device):
    images = random_images(3, 3, 4, 5, torch.float32, device)
    identity = ops.merge_tiles(images, 2, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))
    assert torch.equal(identity[0, :, :4, :5], images[0]) and torch.equal(identity[0, :, :4, 5:], images[1])
    assert torch.equal(identity[0, :, 4:, :5], images[2]) and not bool(identity[0, :, 4:, 5:].any())
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    assert_close_to(ops.merge_tiles(images, 2, pixel_mean=mean, pixel_std=std),
                    composed_canvases(images, 2, mean, std), torch.float32)


def test_merge_tiles_non_contiguous(ops, device):
    base = random_images(5, 3, 8, 6, torch.float32, device)
    views = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3),
        "strided": base[:, :, ::2, 1:],
        "expanded_channel": base[:, :1].expand(-1, 3, -1, -1),
        "one_channel_slice": base[:, 1:2],
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        assert_close_to(ops.merge_tiles(view, 2), composed_canvases(view, 2), torch.float32)


@pytest.mark.parametrize("grid", [1, 2])
def test_merge_tiles_empty_batch_and_small_tiles(ops, device, grid):
    empty = ops.merge_tiles(torch.zeros(0, 1, 4, 5, dtype=torch.uint8, device=device), grid)
    assert empty.shape == (0, 3, grid * 4, grid * 5)
    for shape in [(3, 1, 1, 1), (2, 3, 1, 9), (5, 1, 9, 1)]:
        images = random_images(*shape, torch.uint8, device)
        assert_close_to(ops.merge_tiles(images, grid), composed_canvases(images, grid), torch.float32)


# ----------------------------------------------------------------------------- boxes_to_canvas
def test_boxes_to_canvas_shifts_x_by_column_and_y_by_row():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(5, 1)
    moved = public.boxes_to_canvas(boxes, (10, 20), grid=2)
    assert moved.tolist() == [
        [1, 2, 3, 4],  # tile 0: row 0, column 0
        [21, 2, 23, 4],  # tile 1: row 0, column 1 -> x + w
        [1, 12, 3, 14],  # tile 2: row 1, column 0 -> y + h
        [21, 12, 23, 14],  # tile 3
        [1, 2, 3, 4],  # tile 4: first tile of the next canvas
    ]


@pytest.mark.parametrize("grid", [2, 3])
def test_boxes_to_canvas_lands_on_tile_content(ops, device, grid):
    """Each tile holds one rectangle of its own value; its moved box must frame it in the canvas."""
    h, w = 12, 17  # not square: a row/column swap moves boxes off their content
    B = grid * grid + 2
    g = torch.Generator().manual_seed(grid)
    tiles = torch.zeros(B, 1, h, w, dtype=torch.uint8)
    for k in range(B):
        y0, x0 = int(torch.randint(0, h - 3, (1,), generator=g)), int(torch.randint(0, w - 3, (1,), generator=g))
        tiles[k, 0, y0 : y0 + 2 + k % 2, x0 : x0 + 3] = 10 + 10 * k
    boxes = torchvision.ops.masks_to_boxes(tiles[:, 0] > 0)
    moved = public.boxes_to_canvas(boxes.to(device), (h, w), grid).cpu()
    canvases = ops.merge_tiles(tiles.to(device), grid, pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1)).cpu()
    for k in range(B):
        x0, y0, x1, y1 = (int(v) for v in moved[k])
        inside = canvases[k // (grid * grid), 0, y0 : y1 + 1, x0 : x1 + 1]
        assert inside.numel() == int((tiles[k, 0] > 0).sum()), f"tile {k}"
        assert bool((inside == 10 + 10 * k).all()), f"tile {k}: box lands on other content"


def test_boxes_to_canvas_keeps_dtype_and_device(device):
    boxes = torch.zeros(3, 4, dtype=torch.float64, device=device)
    moved = public.boxes_to_canvas(boxes, (4, 8), 2)
    assert moved.dtype == torch.float64 and moved.device == boxes.device
    assert moved[1].tolist() == [8.0, 0.0, 8.0, 0.0] and moved[2].tolist() == [0.0, 4.0, 0.0, 4.0]


# ----------------------------------------------------------------------------- unmerge_tiles
@pytest.mark.parametrize("grid", [1, 2, 3])
@pytest.mark.parametrize("out_size", [None, "same", "up", "down", (1, 1)])
def test_unmerge_tiles_matches_composition(ops, device, grid, out_size):
    th, tw = 6, 5
    size = {"same": (th, tw), "up": (2 * th + 1, 3 * tw), "down": (th // 2 + 1, tw // 2 + 1)}.get(out_size, out_size)
    for B in sorted({1, grid * grid, grid * grid + 1}):
        logits = torch.randn(B, 1, grid * th, grid * tw, generator=torch.Generator().manual_seed(B)).to(device)
        tiles = ops.unmerge_tiles(logits, grid, size)
        assert tiles.device == logits.device
        assert_close_to(tiles, composed_unmerge(logits, grid, size), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("out_size", [None, (9, 13)])
def test_unmerge_tiles_dtypes(ops, device, dtype, out_size):
    logits = torch.randn(5, 1, 8, 10, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    assert_close_to(ops.unmerge_tiles(logits, 2, out_size), composed_unmerge(logits, 2, out_size), dtype)


def test_unmerge_tiles_channels_and_non_contiguous(ops, device):
    base = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(2)).to(device)
    views = {"channels": base, "transposed": base.transpose(2, 3), "channel_slice": base[:, 1:2],
             "strided": base[:, :, ::2, :], "channels_last": base.contiguous(memory_format=torch.channels_last)}
    for name, view in views.items():
        for out_size in (None, (7, 4)):
            assert_close_to(ops.unmerge_tiles(view, 2, out_size), composed_unmerge(view, 2, out_size), torch.float32)


def test_unmerge_tiles_empty_batch(ops, device):
    logits = torch.zeros(0, 1, 8, 6, device=device)
    assert ops.unmerge_tiles(logits, 2).shape == (0, 1, 4, 3)
    assert ops.unmerge_tiles(logits, 2, (5, 7)).shape == (0, 1, 5, 7)


@pytest.mark.parametrize("out_size", [None, (3, 5), (1, 2)])
def test_unmerge_tiles_gradcheck(device, out_size):
    logits = torch.randn(5, 1, 4, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: public.unmerge_tiles(x, 2, out_size), (logits,))
    grad = torch.autograd.grad(public.unmerge_tiles(logits, 2, out_size).sum(), logits)[0]
    # only tile k's own quadrant of canvas row k receives gradient: tile 1 is row 0, column 1
    assert not bool(grad[1, :, :2, :3].any()) and bool(grad[1, :, :2, 3:].any())
    assert not bool(grad[1, :, 2:].any())


def test_merge_unmerge_round_trip(ops, device):
    grid, h, w = 2, 7, 5
    images = random_images(6, 1, h, w, torch.float32, device)
    canvases = ops.merge_tiles(images, grid)
    # tile k's "prediction" over its canvas: that canvas's first channel
    logits = canvases[torch.arange(6, device=device) // (grid * grid), :1]
    tiles = ops.unmerge_tiles(logits, grid)
    expected = (images - public.SAM_PIXEL_MEAN[0]) / public.SAM_PIXEL_STD[0]
    torch.testing.assert_close(tiles, expected, rtol=1e-5, atol=1e-5)
    back = ops.unmerge_tiles(logits, grid, (2 * h, 2 * w))
    torch.testing.assert_close(back, F.interpolate(expected, size=(2 * h, 2 * w), mode="bilinear", align_corners=False),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda x: public.merge_tiles(x[0]), ValueError, "images"),
        (lambda x: public.merge_tiles(x[:, :2]), ValueError, "images"),
        (lambda x: public.merge_tiles(x.int()), TypeError, "images"),
        (lambda x: public.merge_tiles(x, grid=0), ValueError, "grid"),
        (lambda x: public.merge_tiles(x, grid=2.0), TypeError, "grid"),
        (lambda x: public.merge_tiles(x, pixel_mean=(1.0, 2.0)), ValueError, "pixel_mean"),
        (lambda x: public.merge_tiles(x, pixel_std=(1.0, 0.0, 1.0)), ValueError, "pixel_std"),
        (lambda x: public.merge_tiles(x, out_dtype=torch.int32), TypeError, "out_dtype"),
        (lambda x: public.unmerge_tiles(x[:, :, :5]), ValueError, "grid"),
        (lambda x: public.unmerge_tiles(x[:, :, :5]), ValueError, "logits"),
        (lambda x: public.unmerge_tiles(x, grid=0), ValueError, "grid"),
        (lambda x: public.unmerge_tiles(x[0]), ValueError, "logits"),
        (lambda x: public.unmerge_tiles(x.to(torch.uint8)), TypeError, "logits"),
        (lambda x: public.unmerge_tiles(x, out_size=(-3, 4)), ValueError, "out_size"),
        (lambda x: public.unmerge_tiles(x, out_size=(0, 4)), ValueError, "out_size"),
        (lambda x: public.unmerge_tiles(x, out_size=(4,)), ValueError, "out_size"),
        (lambda x: public.boxes_to_canvas(x[:, 0, 0, :3], (4, 4)), ValueError, "boxes"),
        (lambda x: public.boxes_to_canvas(x[:, 0, 0, :4], (0, 4)), ValueError, "tile_hw"),
        (lambda x: public.boxes_to_canvas(x[:, 0, 0, :4], (4, 4), grid=0), ValueError, "grid"),
    ],
)
def test_bad_arguments_name_the_argument(device, call, error, name):
    x = torch.zeros(2, 3, 8, 8, device=device)
    with pytest.raises(error, match=name):
        call(x)


def test_merge_output_overflow_is_refused():
    huge = torch.zeros(1, 1, 1, 1, dtype=torch.uint8).expand(2**12, 1, 2**9, 2**9)  # 3 x 2^30 outputs
    with pytest.raises(ValueError, match="merge_tiles"):
        public.merge_tiles(huge, 1)


# ----------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("op", ["merge_tiles", "unmerge_tiles"])
def test_opcheck(device, op):
    require_kernel(op, device)
    g = torch.Generator().manual_seed(0)
    if op == "merge_tiles":
        images = torch.randint(0, 256, (5, 1, 6, 7), generator=g, dtype=torch.uint8).to(device)
        mean, std = list(public.SAM_PIXEL_MEAN), list(public.SAM_PIXEL_STD)
        grads = torch.rand(5, 3, 6, 7, generator=g, dtype=torch.float64).to(device).requires_grad_()
        cases = [(images, 2, mean, std, torch.float32), (images.float().expand(-1, 3, -1, -1), 3, mean, std,
                 torch.bfloat16), (grads, 2, mean, std, torch.float64), (grads[:, :1], 3, mean, std, torch.float32)]
    else:
        logits = torch.randn(5, 1, 8, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()
        cases = [(logits, 2, 0, 0), (logits, 2, 5, 7), (logits.detach().float(), 1, 3, 3)]
    for args in cases:
        torch.library.opcheck(getattr(torch.ops.sammed_fast, op).default, args)


# ----------------------------------------------------------------------------- CUDA against CPU
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cuda_equals_cpu(ops, out_dtype):
    for channels, dtype in [(1, torch.uint8), (3, torch.float32), (1, torch.bfloat16)]:
        images = random_images(11, channels, 33, 40, dtype, "cpu", seed=channels)
        torch.testing.assert_close(ops.merge_tiles(images.cuda(), 2, out_dtype=out_dtype).cpu(),
                                   public.merge_tiles(images, 2, out_dtype=out_dtype))
    logits = torch.randn(11, 1, 64, 80)
    for out_size in (None, (50, 17)):
        torch.testing.assert_close(ops.unmerge_tiles(logits.cuda(), 2, out_size).cpu(),
                                   public.unmerge_tiles(logits, 2, out_size))
