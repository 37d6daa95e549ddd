"""Typed wrappers of the sammed_fast ops.

Each wrapper checks its arguments (ValueError/TypeError naming the argument), then calls the
compiled kernel for the input's device (``torch.ops.sammed_fast.*``) or, where none was compiled,
the pure-PyTorch reference in :mod:`sammed_fast.ops.reference`. Fake kernels make the ops traceable
by ``torch.compile(fullgraph=True)``; no op's output shape depends on the data, so meta tensors
work too (through the fake kernels). ``merge_tiles`` and ``unmerge_tiles`` are differentiable;
the outputs of the other ops never require grad.
"""
from __future__ import annotations

import operator
import struct
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from sammed_fast._extension import OPS, compiled_ops_available, kernel_table
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
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# The largest integer up to which every integer is exact in each float dtype (2^(mantissa bits+1)).
EXACT_INTEGERS = {torch.float16: 2**11, torch.bfloat16: 2**8, torch.float32: 2**24, torch.float64: 2**53}


class LargestComponent(NamedTuple):
    mask: torch.Tensor  # bool (B,H,W)
    boxes: torch.Tensor  # float32 (B,4) xyxy, inclusive max, (-1,-1,-1,-1) when empty
    areas: torch.Tensor  # int64 (B,)


class FilteredBoxes(NamedTuple):
    boxes: torch.Tensor  # float32 (B,4) xyxy at full resolution, inclusive max
    empty: torch.Tensor  # bool (B,): no foreground survived the threshold


_KERNELS = dict(kernel_table())  # completed with the meta kernels at the end of this module


def _use_compiled(op: str, tensor: torch.Tensor) -> bool:
    return _KERNELS.get((op, tensor.device.type), False)


def _dispatch(op: str, tensor: torch.Tensor, *args):
    """The compiled kernel of ``op`` for ``tensor``'s device, else the reference; meta tensors
    without the compiled library get the fake kernel (the references of the component ops loop
    on the data, which meta tensors do not have)."""
    if _use_compiled(op, tensor):
        return getattr(torch.ops.sammed_fast, op)(*args)
    if tensor.device.type == "meta" and op in _FAKES:
        return _FAKES[op](*args)
    return getattr(reference, op)(*args)


def _check_tensor(value, name: str, ndim: int, dtypes: tuple[torch.dtype, ...], what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {what}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {str(value.dtype).replace('torch.', '')}")


def _check_int(value, name: str, allowed: Sequence[int] | None = None, minimum: int | None = None,
               what: str = "an int") -> int:
    """An integer (int, numpy or 0-d tensor integer; never a bool or a float) that fits in int64,
    as a Python int."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        shown = value if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise ValueError(f"{name} must fit in a signed 64-bit integer, got {shown}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_size(value, name: str) -> tuple[int, int]:
    """(h, w): a tuple or list of two positive ints (see :func:`_check_int`)."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of two positive ints (h, w), got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{name} must be two positive ints (h, w), got {len(value)} values: {value}")
    what = "two positive ints (h, w)"
    return _check_int(value[0], name, minimum=1, what=what), _check_int(value[1], name, minimum=1, what=what)


def _as_float32(value: float) -> float:
    """``value`` (at most float32's largest value in magnitude) rounded to float32."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _check_normalisation(values, name: str, channels: int, positive: bool) -> list[float]:
    """pixel_mean / pixel_std: 3 numbers, or one per channel (1 for a 1-channel image, then used
    for all three), finite in float32 (the kernels normalise in float32); std > 0 there."""
    if (isinstance(values, (str, bytes, set, frozenset, dict)) or not hasattr(values, "__iter__")
            or (isinstance(values, torch.Tensor) and values.dim() != 1)):
        raise TypeError(f"{name} must be a sequence of 3 numbers, got {type(values).__name__}")
    floats = []
    for value in values:
        if isinstance(value, (bool, str, bytes)) or value is None:
            raise TypeError(f"{name} must hold numbers, got {type(value).__name__}")
        try:
            floats.append(float(value))
        except OverflowError:
            raise ValueError(f"{name} must be finite in float32, got {value}") from None
        except (TypeError, ValueError):
            raise TypeError(f"{name} must hold numbers, got {type(value).__name__}") from None
    if len(floats) == channels == 1:
        floats = floats * 3
    if len(floats) != 3:
        raise ValueError(f"{name} needs 3 values (or 1 for 1-channel images), got {len(floats)}")
    if not all(abs(v) <= FLOAT32_MAX for v in floats):  # False for NaN
        raise ValueError(f"{name} must be finite in float32, got {floats}")
    if positive and not all(_as_float32(v) > 0 for v in floats):
        raise ValueError(f"{name} must be positive in float32, got {floats}")
    return floats


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
    connectivity = _check_int(connectivity, "connectivity", (4, 8))
    return _dispatch("label_components", masks, masks, connectivity)


def largest_component(masks: torch.Tensor, connectivity: int = 8) -> LargestComponent:
    """The largest connected component of each image, its box and its area.

    masks: (B,H,W) bool or uint8. Returns ``LargestComponent(mask (B,H,W) bool, boxes (B,4) float32
    xyxy with inclusive max as torchvision.ops.masks_to_boxes, areas (B,) int64 pixels)``. Ties go to
    the component with the lowest raster-first label; an empty image gives area 0, an empty mask
    and box (-1,-1,-1,-1).
    """
    _check_masks(masks)
    connectivity = _check_int(connectivity, "connectivity", (4, 8))
    return LargestComponent(*_dispatch("largest_component", masks, masks, connectivity))


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
    covers exactly the full-resolution pixels of its cells. Cells are pooled and compared in
    float64 for float64 ``probs``, else in float32 (which holds float16 and bfloat16 exactly), the
    threshold rounded once to that precision. ``empty`` picks the box of an image with no
    foreground: "full" (0,0,W-1,H-1) or "nan". ``check_finite`` rejects NaN and infinite values
    (one host synchronisation on CUDA; skipped under torch.compile and for meta tensors).
    Returns ``FilteredBoxes(boxes (B,4) float32 xyxy inclusive, empty (B,) bool)``; they never
    require grad (a box is a discrete choice: no gradient flows through it).
    """
    _check_tensor(probs, "probs", 3, FLOAT_DTYPES, "(B,H,W)")
    _check_spatial(probs, "probs")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    if not 0 <= threshold <= 1:  # compared before float(): a huge int would overflow it
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    downscale = _check_int(downscale, "downscale", minimum=1)
    connectivity = _check_int(connectivity, "connectivity", (4, 8))
    if empty not in ("full", "nan"):
        raise ValueError(f'empty must be "full" or "nan", got {empty!r}')
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    args = (probs, float(threshold), downscale, connectivity, empty == "full")
    compiled = _use_compiled("boxes_from_probs", probs)
    # The CPU kernel checks the values itself while it reads the map; elsewhere one vectorised
    # reduction (and one synchronisation on CUDA).
    if (check_finite and not (compiled and probs.device.type == "cpu") and probs.device.type != "meta"
            and not torch.compiler.is_compiling() and _has_non_finite(probs)):
        raise ValueError(NON_FINITE_PROBS)
    if compiled:
        return FilteredBoxes(*torch.ops.sammed_fast.boxes_from_probs(*args, check_finite))
    return FilteredBoxes(*_dispatch("boxes_from_probs", probs, *args))


NON_FINITE_PROBS = "probs contains NaN or infinite values; probabilities must be finite (in [0, 1])"


def _has_non_finite(probs: torch.Tensor) -> bool:
    """True when ``probs`` holds a NaN or an infinity. A float64 sum of finite float32/16 values
    cannot overflow; for float64 input a non-finite sum is confirmed element-wise."""
    if bool(torch.isfinite(probs.sum(dtype=torch.float64))):
        return False
    return not bool(torch.isfinite(probs).all())


def merge_tiles(
    images: torch.Tensor,
    grid: int = 2,
    pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
    pixel_std: Sequence[float] = SAM_PIXEL_STD,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Tiles grid x grid slices into one normalised SAM input, in one pass.

    images: (B,C,h,w), C in {1,3}, values on SAM's 0..255 scale (float or uint8). Each output
    channel c is (x - pixel_mean[c]) / pixel_std[c], computed in float32; a single channel is
    repeated to three. ``pixel_mean`` / ``pixel_std`` hold 3 values (or 1 for a 1-channel image,
    used for all three), finite in float32, std > 0. Tile k goes to canvas k // grid^2 at row
    (k % grid^2) // grid, column (k % grid^2) % grid; missing tiles of the last canvas are 0.
    Returns (ceil(B/grid^2), 3, grid*h, grid*w) of ``out_dtype``. Differentiable: the gradient
    of an image is its tile's slot of the canvas gradient over pixel_std (summed over the three
    channels for a 1-channel image).
    """
    _check_tensor(images, "images", 4, FLOAT_DTYPES + (torch.uint8,), "(B,C,h,w)")
    _check_spatial(images, "images")
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    grid = _check_int(grid, "grid", minimum=1)
    mean = _check_normalisation(pixel_mean, "pixel_mean", channels, positive=False)
    std = _check_normalisation(pixel_std, "pixel_std", channels, positive=True)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be a floating dtype, got {out_dtype}")
    B, _, h, w = images.shape
    canvases = -(-B // (grid * grid))
    if grid * max(h, w) > INT32_MAX:
        raise ValueError(f"grid * tile size exceeds 2^31-1: grid={grid}, tile {h}x{w}")
    if canvases * 3 * grid * h * grid * w > INT32_MAX:
        raise ValueError("merge_tiles output would exceed 2^31-1 elements; split the batch")
    return _dispatch("merge_tiles", images, images, grid, mean, std, out_dtype)


def boxes_to_canvas(boxes: torch.Tensor, tile_hw: tuple[int, int], grid: int = 2) -> torch.Tensor:
    """Moves each tile's box (B,4) xyxy into its canvas frame (see :func:`merge_tiles`):
    tile (row i, column j) of size (h, w) shifts by (+j*w, +i*h, +j*w, +i*h).

    The result keeps the boxes' dtype, so the canvas (grid*h x grid*w) must lie within the integers
    that dtype holds exactly (float16: 2048, bfloat16: 256, float32: 2^24); a larger one is refused
    rather than rounded (pass float32 boxes)."""
    _check_tensor(boxes, "boxes", 2, FLOAT_DTYPES, "(B,4)")
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B,4), got {tuple(boxes.shape)}")
    grid = _check_int(grid, "grid", minimum=1)
    h, w = _check_size(tile_hw, "tile_hw")
    extent, limit = grid * max(h, w), EXACT_INTEGERS[boxes.dtype]
    if extent > limit:
        dtype = str(boxes.dtype).replace("torch.", "")
        raise ValueError(
            f"tile_hw {(h, w)} with grid={grid} makes canvas coordinates up to {extent}, but {dtype} "
            f"boxes hold integers exactly only up to {limit}: pass float32 boxes"
        )
    return _boxes_to_canvas(boxes, (h, w), grid)


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
    grid = _check_int(grid, "grid", minimum=1)
    Hc, Wc = logits.shape[-2:]
    if Hc % grid or Wc % grid:
        raise ValueError(f"logits canvas {Hc}x{Wc} is not divisible by grid={grid}")
    out_h, out_w = (0, 0) if out_size is None else _check_size(out_size, "out_size")
    return _dispatch("unmerge_tiles", logits, logits, grid, out_h, out_w)


def _unmerge_setup_context(ctx, inputs, output) -> None:
    logits, grid, out_h, out_w = inputs
    ctx.canvas_shape = tuple(logits.shape)
    ctx.grid, ctx.out_hw = grid, (out_h, out_w)


def _unmerge_backward(ctx, grad: torch.Tensor):
    """Adjoint of unmerge_tiles: undo the resize, then scatter into the tile's quadrant."""
    B, C, Hc, Wc = ctx.canvas_shape
    if B * C == 0:  # nothing flows back, whatever out_size was
        return grad.new_zeros(ctx.canvas_shape), None, None, None
    grid = ctx.grid
    th, tw = Hc // grid, Wc // grid
    out_h, out_w = ctx.out_hw
    if out_h > 0 and (out_h, out_w) != (th, tw):
        # The adjoint of the bilinear resize; torch.func.vjp (rather than the aten backward op)
        # also traces with symbolic sizes under torch.compile(dynamic=True).
        def resize(tiles):
            return F.interpolate(tiles, size=(out_h, out_w), mode="bilinear", align_corners=False)

        grad = torch.func.vjp(resize, grad.new_zeros(B, C, th, tw))[1](grad)[0]
    canvas = grad.new_zeros(B, grid, grid, C, th, tw)
    position = torch.arange(B, device=grad.device) % (grid * grid)
    canvas[torch.arange(B, device=grad.device), position // grid, position % grid] = grad
    return canvas.permute(0, 3, 1, 4, 2, 5).reshape(B, C, Hc, Wc), None, None, None


def _merge_setup_context(ctx, inputs, output) -> None:
    images, grid, pixel_mean, pixel_std, out_dtype = inputs
    ctx.images_shape, ctx.images_dtype = tuple(images.shape), images.dtype
    ctx.grid = grid
    ctx.std = [_as_float32(v) for v in pixel_std]  # the float32 values the kernels divide by


def _merge_backward(ctx, grad: torch.Tensor):
    """Adjoint of merge_tiles (linear): each tile's slot of the canvas gradient over pixel_std,
    summed over the three channels for a 1-channel image. Computed in float32, or float64 for a
    float64 gradient."""
    B, C, h, w = ctx.images_shape
    grid = ctx.grid
    canvases = grad.shape[0]
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    tiles = grad.reshape(canvases, 3, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(canvases * grid * grid, 3, h, w)[:B]
    tiles = torch.stack([tiles[:, c] / ctx.std[c] for c in range(3)], 1)
    if C == 1:
        tiles = tiles.sum(1, keepdim=True)
    return tiles.to(ctx.images_dtype), None, None, None, None


def _boxes_setup_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(*output)


def _boxes_backward(ctx, grad_boxes, grad_empty):
    return None, None, None, None, None, None


# ----------------------------------------------------------------------------- fake kernels
# The output shapes of every op follow from the input shapes alone (no data-dependent sizes).
def _fake_label_components(masks, connectivity):
    return masks.new_empty(masks.shape, dtype=torch.int32)


def _fake_largest_component(masks, connectivity):
    B = masks.shape[0]
    return (
        masks.new_empty(masks.shape, dtype=torch.bool),
        masks.new_empty((B, 4), dtype=torch.float32),
        masks.new_empty((B,), dtype=torch.int64),
    )


def _fake_boxes_from_probs(probs, threshold, downscale, connectivity, empty_full, check_finite=False):
    B = probs.shape[0]
    return probs.new_empty((B, 4), dtype=torch.float32), probs.new_empty((B,), dtype=torch.bool)


def _fake_merge_tiles(images, grid, pixel_mean, pixel_std, out_dtype):
    B, _, h, w = images.shape
    canvases = (B + grid * grid - 1) // (grid * grid)
    return images.new_empty((canvases, 3, grid * h, grid * w), dtype=out_dtype)


def _fake_unmerge_tiles(logits, grid, out_h, out_w):
    B, C, Hc, Wc = logits.shape
    size = (out_h, out_w) if out_h > 0 else (Hc // grid, Wc // grid)
    return logits.new_empty((B, C, *size))


# Used for meta tensors without the compiled library: these references loop on the data.
_FAKES = {
    "label_components": _fake_label_components,
    "largest_component": _fake_largest_component,
    "boxes_from_probs": _fake_boxes_from_probs,
}


def _register_python_parts() -> None:
    """Fake kernels (shape functions for tracing; also the ops' meta kernels) and autograd of the
    compiled ops."""
    fakes = {**_FAKES, "merge_tiles": _fake_merge_tiles, "unmerge_tiles": _fake_unmerge_tiles}
    for name, fake in fakes.items():
        torch.library.register_fake(f"sammed_fast::{name}", fake)
    torch.library.register_autograd(
        "sammed_fast::unmerge_tiles", _unmerge_backward, setup_context=_unmerge_setup_context
    )
    torch.library.register_autograd(
        "sammed_fast::merge_tiles", _merge_backward, setup_context=_merge_setup_context
    )
    torch.library.register_autograd(
        "sammed_fast::boxes_from_probs", _boxes_backward, setup_context=_boxes_setup_context
    )
    for name in OPS:  # the fake kernels serve meta tensors
        has_meta = torch._C._dispatch_has_kernel_for_dispatch_key(f"sammed_fast::{name}", "Meta")
        _KERNELS[(name, "meta")] = has_meta


if compiled_ops_available():
    _register_python_parts()
