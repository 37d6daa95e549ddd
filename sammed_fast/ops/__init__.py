"""Typed wrappers of the sammed_fast ops.

Each wrapper checks its arguments (ValueError/TypeError naming the argument), then calls the
compiled kernel for the input's device (``torch.ops.sammed_fast.*``) or, where none was compiled,
the pure-PyTorch reference in :mod:`sammed_fast.ops.reference`. Fake kernels make the ops traceable
by ``torch.compile(fullgraph=True)``; ``unmerge_tiles`` is differentiable.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from sammed_fast._extension import compiled_ops_available, kernel_table
from sammed_fast.ops import reference
from sammed_fast.ops.reference import boxes_to_canvas as _boxes_to_canvas

__all__ = [
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "LargestComponent",
    "FilteredBoxes",
    "label_components",
    "largest_component",
    "boxes_from_probs",
    "merge_tiles",
    "boxes_to_canvas",
    "unmerge_tiles",
]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
INT32_MAX = 2**31 - 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class LargestComponent(NamedTuple):
    mask: torch.Tensor  # bool (B,H,W)
    boxes: torch.Tensor  # float32 (B,4) xyxy, inclusive max, (-1,-1,-1,-1) when empty
    areas: torch.Tensor  # int64 (B,)


class FilteredBoxes(NamedTuple):
    boxes: torch.Tensor  # float32 (B,4) xyxy at full resolution, inclusive max
    empty: torch.Tensor  # bool (B,): no foreground survived the threshold


_KERNELS = kernel_table()


def _use_compiled(op: str, tensor: torch.Tensor) -> bool:
    return _KERNELS.get((op, tensor.device.type), False)


def _check_tensor(value, name: str, ndim: int, dtypes: tuple[torch.dtype, ...], what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {what}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {str(value.dtype).replace('torch.', '')}")


def _check_int(value, name: str, allowed: Sequence[int] | None = None, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_spatial(tensor: torch.Tensor, name: str) -> None:
    height, width = tensor.shape[-2:]
    if height < 1 or width < 1:
        raise ValueError(f"{name} must have height and width >= 1, got shape {tuple(tensor.shape)}")
    if tensor.numel() > INT32_MAX:
        raise ValueError(
            f"{name} has {tensor.numel()} elements, more than the 2^31-1 that 32-bit indices address; "
            "split the batch"
        )


def _check_masks(masks) -> None:
    _check_tensor(masks, "masks", 3, (torch.bool, torch.uint8), "(B,H,W)")
    _check_spatial(masks, "masks")


def label_components(masks: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Connected components of each image of a batch.

    masks: (B,H,W) bool or uint8, nonzero is foreground. connectivity: 4 or 8.
    Returns int32 (B,H,W): 0 background, components of each image numbered 1..n in raster-first
    order (the numbering of ``scipy.ndimage.label``). Components never cross between images.
    """
    _check_masks(masks)
    _check_int(connectivity, "connectivity", (4, 8))
    if _use_compiled("label_components", masks):
        return torch.ops.sammed_fast.label_components(masks, connectivity)
    return reference.label_components(masks, connectivity)


def largest_component(masks: torch.Tensor, connectivity: int = 8) -> LargestComponent:
    """The largest connected component of each image, its box and its area.

    masks: (B,H,W) bool or uint8. Returns ``LargestComponent(mask (B,H,W) bool, boxes (B,4) float32
    xyxy with inclusive max as torchvision.ops.masks_to_boxes, areas (B,) int64 pixels)``. Ties go to
    the component with the lowest raster-first label; an empty image gives area 0, an empty mask
    and box (-1,-1,-1,-1).
    """
    _check_masks(masks)
    _check_int(connectivity, "connectivity", (4, 8))
    if _use_compiled("largest_component", masks):
        return LargestComponent(*torch.ops.sammed_fast.largest_component(masks, connectivity))
    return LargestComponent(*reference.largest_component(masks, connectivity))


def boxes_from_probs(
    probs: torch.Tensor,
    threshold: float = 0.75,
    downscale: int = 4,
    connectivity: int = 4,
    empty: str = "full",
    check_finite: bool = True,
) -> FilteredBoxes:
    """The paper's mask filter, fused: coarse probabilities -> one box prompt per image.

    probs: (B,H,W) float in [0,1]. The map is area-resized by ``downscale`` (adaptive average
    pooling to ceil(H/d) x ceil(W/d); 1 keeps full resolution and is exact), thresholded with
    ``prob > threshold``, its largest component kept, and that component's box mapped back so it
    covers exactly the full-resolution pixels of its cells. ``empty`` picks the box of an image with
    no foreground: "full" (0,0,W-1,H-1) or "nan". ``check_finite`` rejects NaN inputs (one host
    synchronisation on CUDA; skipped under torch.compile).
    Returns ``FilteredBoxes(boxes (B,4) float32 xyxy inclusive, empty (B,) bool)``.
    """
    _check_tensor(probs, "probs", 3, FLOAT_DTYPES, "(B,H,W)")
    _check_spatial(probs, "probs")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    _check_int(downscale, "downscale", minimum=1)
    _check_int(connectivity, "connectivity", (4, 8))
    if empty not in ("full", "nan"):
        raise ValueError(f'empty must be "full" or "nan", got {empty!r}')
    args = (probs, float(threshold), downscale, connectivity, empty == "full")
    compiled = _use_compiled("boxes_from_probs", probs)
    # The CPU kernel rejects NaN itself while it reads the map; elsewhere a NaN anywhere makes the
    # sum NaN: one vectorised reduction (and one synchronisation on CUDA).
    if (check_finite and not (compiled and probs.device.type == "cpu")
            and not torch.compiler.is_compiling() and bool(torch.isnan(probs.sum()))):
        raise ValueError("probs contains NaN values")
    if compiled:
        return FilteredBoxes(*torch.ops.sammed_fast.boxes_from_probs(*args, check_finite))
    return FilteredBoxes(*reference.boxes_from_probs(*args))


def merge_tiles(
    images: torch.Tensor,
    grid: int = 2,
    pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
    pixel_std: Sequence[float] = SAM_PIXEL_STD,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Tiles grid x grid slices into one normalised SAM input, in one pass.

    images: (B,C,h,w), C in {1,3}, values on SAM's 0..255 scale (float or uint8). Each output
    channel c is (x - pixel_mean[c]) / pixel_std[c]; a single channel is repeated to three. Tile k
    goes to canvas k // grid^2 at row (k % grid^2) // grid, column (k % grid^2) % grid; missing tiles
    of the last canvas are 0. Returns (ceil(B/grid^2), 3, grid*h, grid*w) of ``out_dtype``.
    """
    _check_tensor(images, "images", 4, FLOAT_DTYPES + (torch.uint8,), "(B,C,h,w)")
    _check_spatial(images, "images")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    _check_int(grid, "grid", minimum=1)
    mean, std = [float(v) for v in pixel_mean], [float(v) for v in pixel_std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"pixel_mean and pixel_std need 3 values each, got {len(mean)} and {len(std)}")
    if any(v <= 0 for v in std):
        raise ValueError(f"pixel_std must be positive, got {std}")
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be a floating dtype, got {out_dtype}")
    B, _, h, w = images.shape
    canvases = -(-B // (grid * grid))
    if canvases * 3 * grid * h * grid * w > INT32_MAX:
        raise ValueError("merge_tiles output would exceed 2^31-1 elements; split the batch")
    if _use_compiled("merge_tiles", images):
        return torch.ops.sammed_fast.merge_tiles(images, grid, mean, std, out_dtype)
    return reference.merge_tiles(images, grid, mean, std, out_dtype)


def boxes_to_canvas(boxes: torch.Tensor, tile_hw: tuple[int, int], grid: int = 2) -> torch.Tensor:
    """Moves each tile's box (B,4) xyxy into its canvas frame (see :func:`merge_tiles`):
    tile (row i, column j) of size (h, w) shifts by (+j*w, +i*h, +j*w, +i*h)."""
    _check_tensor(boxes, "boxes", 2, FLOAT_DTYPES, "(B,4)")
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B,4), got {tuple(boxes.shape)}")
    _check_int(grid, "grid", minimum=1)
    if len(tile_hw) != 2 or any(int(v) < 1 for v in tile_hw):
        raise ValueError(f"tile_hw must be two positive ints (h, w), got {tile_hw}")
    return _boxes_to_canvas(boxes, (int(tile_hw[0]), int(tile_hw[1])), grid)


def unmerge_tiles(
    logits: torch.Tensor, grid: int = 2, out_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Each tile's own quadrant of its mask over the canvas, in one pass; differentiable.

    logits: (B,C,Hc,Wc), row k the prediction for tile k (prompted with tile k's box) over its whole
    canvas. Returns (B,C,Hc/grid,Wc/grid), bilinearly resized (align_corners=False) to ``out_size``
    = (h, w) when given.
    """
    _check_tensor(logits, "logits", 4, FLOAT_DTYPES, "(B,C,Hc,Wc)")
    _check_spatial(logits, "logits")
    _check_int(grid, "grid", minimum=1)
    Hc, Wc = logits.shape[-2:]
    if Hc % grid or Wc % grid:
        raise ValueError(f"logits canvas {Hc}x{Wc} is not divisible by grid={grid}")
    out_h = out_w = 0
    if out_size is not None:
        if len(out_size) != 2 or any(isinstance(v, bool) or int(v) < 1 for v in out_size):
            raise ValueError(f"out_size must be two positive ints (h, w), got {out_size}")
        out_h, out_w = int(out_size[0]), int(out_size[1])
    if _use_compiled("unmerge_tiles", logits):
        return torch.ops.sammed_fast.unmerge_tiles(logits, grid, out_h, out_w)
    return reference.unmerge_tiles(logits, grid, out_h, out_w)


def _unmerge_setup_context(ctx, inputs, output) -> None:
    logits, grid, out_h, out_w = inputs
    ctx.canvas_shape = tuple(logits.shape)
    ctx.grid, ctx.out_hw = grid, (out_h, out_w)


def _unmerge_backward(ctx, grad: torch.Tensor):
    """Adjoint of unmerge_tiles: undo the resize, then scatter into the tile's quadrant."""
    B, C, Hc, Wc = ctx.canvas_shape
    grid = ctx.grid
    th, tw = Hc // grid, Wc // grid
    out_h, out_w = ctx.out_hw
    if out_h > 0 and (out_h, out_w) != (th, tw) and B > 0:
        # The adjoint of the bilinear resize; torch.func.vjp (rather than the aten backward op)
        # also traces with symbolic sizes under torch.compile(dynamic=True).
        def resize(tiles):
            return F.interpolate(tiles, size=(out_h, out_w), mode="bilinear", align_corners=False)

        grad = torch.func.vjp(resize, grad.new_zeros(B, C, th, tw))[1](grad)[0]
    canvas = grad.new_zeros(B, grid, grid, C, th, tw)
    position = torch.arange(B, device=grad.device) % (grid * grid)
    canvas[torch.arange(B, device=grad.device), position // grid, position % grid] = grad
    return canvas.permute(0, 3, 1, 4, 2, 5).reshape(B, C, Hc, Wc), None, None, None


def _register_python_parts() -> None:
    """Fake kernels (shape functions for tracing) and autograd of the compiled ops."""

    @torch.library.register_fake("sammed_fast::label_components")
    def _(masks, connectivity):
        return masks.new_empty(masks.shape, dtype=torch.int32)

    @torch.library.register_fake("sammed_fast::largest_component")
    def _(masks, connectivity):
        B = masks.shape[0]
        return (
            masks.new_empty(masks.shape, dtype=torch.bool),
            masks.new_empty((B, 4), dtype=torch.float32),
            masks.new_empty((B,), dtype=torch.int64),
        )

    @torch.library.register_fake("sammed_fast::boxes_from_probs")
    def _(probs, threshold, downscale, connectivity, empty_full, check_finite=False):
        B = probs.shape[0]
        return probs.new_empty((B, 4), dtype=torch.float32), probs.new_empty((B,), dtype=torch.bool)

    @torch.library.register_fake("sammed_fast::merge_tiles")
    def _(images, grid, pixel_mean, pixel_std, out_dtype):
        B, _, h, w = images.shape
        canvases = (B + grid * grid - 1) // (grid * grid)
        return images.new_empty((canvases, 3, grid * h, grid * w), dtype=out_dtype)

    @torch.library.register_fake("sammed_fast::unmerge_tiles")
    def _(logits, grid, out_h, out_w):
        B, C, Hc, Wc = logits.shape
        size = (out_h, out_w) if out_h > 0 else (Hc // grid, Wc // grid)
        return logits.new_empty((B, C, *size))

    torch.library.register_autograd(
        "sammed_fast::unmerge_tiles", _unmerge_backward, setup_context=_unmerge_setup_context
    )


if compiled_ops_available():
    _register_python_parts()
