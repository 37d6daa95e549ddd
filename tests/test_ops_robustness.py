"""Hostile inputs to the ops (issue 14, items 3, 7 and 8): every case on every path.

Paths: the compiled op called directly and the reference (the ``ops`` fixture), and the public
wrapper with its compiled kernel or forced onto the pure-PyTorch fallback (the ``wrapper`` fixture).
Oracles are numpy, plain PyTorch compositions and the reference's own autograd, never the op itself.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import missing_kernel, require_kernel
from sammed_fast import ops as public
from sammed_fast.ops import reference
from test_ops_components import oracle_boxes_from_probs, quantised_probs
from test_ops_tiles import composed_canvases

INT64_MAX = 2**63 - 1


@pytest.fixture(params=["compiled", "fallback"])
def wrapper(request, monkeypatch, device):
    """The public ops module, dispatching to the compiled kernels or forced onto the reference."""
    if request.param == "compiled":
        reason = missing_kernel("boxes_from_probs", device)
        if reason:
            pytest.skip(reason)
    else:
        monkeypatch.setattr(public, "_KERNELS", {})
    return public


# ----------------------------------------------------------------------------- item 3
@pytest.mark.parametrize("out_size", [(64, 64), (32, 32), (7, 5), None])
@pytest.mark.parametrize("channels", [1, 0])
def test_unmerge_tiles_backward_with_empty_batch(ops, device, out_size, channels):
    """No slice got a box: the main job's backward ran on an empty batch and crashed."""
    logits = torch.zeros(0, channels, 64, 64, device=device, requires_grad=True)
    tiles = ops.unmerge_tiles(logits, 2, out_size)
    assert tiles.shape == (0, channels, *(out_size or (32, 32)))
    tiles.sum().backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


def test_unmerge_tiles_public_backward_with_empty_batch(wrapper, device):
    logits = torch.zeros(0, 1, 64, 64, device=device, requires_grad=True)
    wrapper.unmerge_tiles(logits, 2, (64, 64)).sum().backward()
    assert logits.grad.shape == (0, 1, 64, 64)


# ----------------------------------------------------------------------------- item 7: precision
@pytest.mark.parametrize("downscale", [1, 2, 4])
def test_boxes_from_probs_compares_float64_in_float64(ops, device, downscale):
    """float32(0.1) widened to float64 lies above a threshold of 0.1: it is foreground."""
    above = float(torch.tensor(0.1, dtype=torch.float32))  # 0.10000000149...
    assert above > 0.1
    probs_np = np.zeros((2, 8, 12))
    probs_np[0, 4:8, 4:8] = above
    probs_np[1] = np.nextafter(np.float32(above), np.float32(0))  # below 0.1: background
    # (float32 values: block sums of up to 16 of them are exact in float64)
    probs = torch.from_numpy(probs_np).to(device)
    result = ops.boxes_from_probs(probs, 0.1, downscale, 4, "full")
    want_boxes, want_empty = oracle_boxes_from_probs(probs_np, 0.1, downscale, 4, "full")
    assert want_empty.tolist() == [False, True]
    np.testing.assert_array_equal(result.empty.cpu().numpy(), want_empty)
    np.testing.assert_array_equal(result.boxes.cpu().numpy(), want_boxes)


def test_boxes_from_probs_float64_random_maps_match_numpy(ops, device):
    """Unquantised float64 maps against float64 numpy block means, thresholds near the values."""
    rng = np.random.default_rng(5)
    probs_np = rng.random((3, 23, 30))
    for downscale in (1, 3):
        for threshold in (0.3, 0.5, float(np.float32(0.7))):
            result = ops.boxes_from_probs(torch.from_numpy(probs_np).to(device), threshold, downscale, 8, "nan")
            want_boxes, want_empty = oracle_boxes_from_probs(probs_np, threshold, downscale, 8, "nan")
            np.testing.assert_array_equal(result.empty.cpu().numpy(), want_empty)
            np.testing.assert_array_equal(result.boxes.cpu().numpy(), want_boxes)


def test_boxes_to_canvas_refuses_coordinates_the_dtype_cannot_hold(device):
    """float16 holds integers up to 2048 exactly: a tile of 2049 moved x0 = 1 to 2048, not 2050."""
    boxes = torch.tensor([[1.0, 1.0, 2.0, 2.0]] * 4, device=device)
    exact = public.boxes_to_canvas(boxes, (2049, 2049), 2)  # float32: exact
    assert exact[1].tolist() == [2050.0, 1.0, 2051.0, 2.0] and exact[3].tolist() == [2050.0, 2050.0, 2051.0, 2051.0]
    for dtype, limit in [(torch.float16, 2048), (torch.bfloat16, 256)]:
        with pytest.raises(ValueError, match=f"tile_hw.*{str(dtype).split('.')[-1]}"):
            public.boxes_to_canvas(boxes.to(dtype), (2049, 2049), 2)
        with pytest.raises(ValueError, match="tile_hw"):
            public.boxes_to_canvas(boxes.to(dtype), (limit // 2 + 1, 1), 2)
        # the largest canvas the dtype holds: every shifted integer coordinate is exact
        side = limit // 2
        integer_boxes = torch.tensor([[0.0, 0.0, side - 1.0, side]] * 4, device=device)
        moved = public.boxes_to_canvas(integer_boxes.to(dtype), (side, side), 2)
        want = integer_boxes.double() + torch.tensor([[0, 0, 0, 0], [side, 0, side, 0], [0, side, 0, side],
                                                      [side, side, side, side]], device=device).double()
        assert moved.dtype == dtype and torch.equal(moved.double(), want)


# ----------------------------------------------------------------------------- item 7: finiteness
def non_finite_cases() -> dict[str, torch.Tensor]:
    cases = {}
    both = torch.zeros(2, 8, 8)
    both[1, 0, 0], both[1, 1, 1] = float("inf"), float("-inf")  # one 4x4 cell: its mean is NaN
    cases["+inf and -inf in one cell"] = both
    plus = torch.zeros(2, 8, 8)
    plus[0, 7, 7] = float("inf")
    cases["+inf"] = plus
    minus = torch.full((1, 8, 8), 0.9)
    minus[0, 3, 5] = float("-inf")
    cases["-inf"] = minus
    nan = torch.zeros(1, 8, 8)
    nan[0, 2, 2] = float("nan")
    cases["nan"] = nan
    return cases


@pytest.mark.parametrize("case", list(non_finite_cases()))
@pytest.mark.parametrize("downscale", [1, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_probs_are_reported_as_such(wrapper, device, case, downscale, dtype):
    probs = non_finite_cases()[case].to(device=device, dtype=dtype)
    with pytest.raises(ValueError, match=r"probs contains NaN or infinite values"):
        wrapper.boxes_from_probs(probs, 0.5, downscale)
    wrapper.boxes_from_probs(probs, 0.5, downscale, check_finite=False)  # opting out must not raise


@pytest.mark.parametrize("downscale", [1, 4])
def test_large_finite_probs_are_not_called_non_finite(wrapper, device, downscale):
    """Values whose float32 block sum overflows are finite: whatever else, not 'NaN or infinite'."""
    probs = torch.full((1, 8, 8), 3e38, device=device)
    result = wrapper.boxes_from_probs(probs, 0.5, downscale)
    assert result.empty.tolist() == [False]


# ----------------------------------------------------------------------------- item 7: integers
@pytest.mark.parametrize("value", [(2.7, 2.7), (2.0, 3), (True, True), (3, False), (np.float64(4.0), 4), "44", (4, 4, 4)])
def test_tile_hw_must_be_two_ints(device, value):
    boxes = torch.zeros(2, 4, device=device)
    with pytest.raises((TypeError, ValueError), match="tile_hw"):
        public.boxes_to_canvas(boxes, value, 2)


@pytest.mark.parametrize("value", [(2.7, 2.7), (2.0, 3), (True, True), (3, False), (np.float64(4.0), 4), "44", 4])
def test_out_size_must_be_two_ints(wrapper, device, value):
    logits = torch.zeros(1, 1, 4, 4, device=device)
    with pytest.raises((TypeError, ValueError), match="out_size"):
        wrapper.unmerge_tiles(logits, 2, value)


def test_numpy_ints_are_ints(device):
    boxes = torch.ones(2, 4, device=device)
    assert public.boxes_to_canvas(boxes, (np.int64(3), 5), 2)[1].tolist() == [6.0, 1.0, 6.0, 1.0]
    assert public.unmerge_tiles(torch.zeros(1, 1, 4, 4, device=device), 2, (np.int32(3), 5)).shape == (1, 1, 3, 5)


# ----------------------------------------------------------------------------- item 7: pixel_mean / pixel_std
@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"pixel_std": (float("inf"),) * 3}, ValueError, "pixel_std"),
        ({"pixel_std": (1.0, float("nan"), 1.0)}, ValueError, "pixel_std"),
        ({"pixel_std": (1.0, -2.0, 1.0)}, ValueError, "pixel_std"),
        ({"pixel_mean": (0.0, float("inf"), 0.0)}, ValueError, "pixel_mean"),
        ({"pixel_mean": (float("nan"),) * 3}, ValueError, "pixel_mean"),
        ({"pixel_mean": "abc"}, TypeError, "pixel_mean"),
        ({"pixel_mean": 1.0}, TypeError, "pixel_mean"),
        ({"pixel_std": 2}, TypeError, "pixel_std"),
        ({"pixel_mean": ("1", "2", "3")}, TypeError, "pixel_mean"),
        ({"pixel_mean": (None, 1.0, 2.0)}, TypeError, "pixel_mean"),
        ({"pixel_std": (True, 1.0, 1.0)}, TypeError, "pixel_std"),
        ({"pixel_mean": (1.0, 2.0)}, ValueError, "pixel_mean"),
        ({"pixel_std": (1.0, 2.0, 3.0, 4.0)}, ValueError, "pixel_std"),
        ({"pixel_mean": (10**400, 0, 0)}, ValueError, "pixel_mean"),
        ({"pixel_mean": (1e39, 0, 0)}, ValueError, "pixel_mean"),  # inf in float32, where it is used
        ({"pixel_std": (1.0, 1e-50, 1.0)}, ValueError, "pixel_std"),  # 0 in float32
    ],
)
def test_merge_tiles_normalisation_is_validated(wrapper, device, kwargs, error, name):
    images = torch.full((2, 3, 4, 4), 100.0, device=device)
    with pytest.raises(error, match=name):
        wrapper.merge_tiles(images, 2, **kwargs)


def test_merge_tiles_one_value_per_channel_of_a_grey_image(wrapper, device):
    """pixel_mean / pixel_std may have C values: one for a 1-channel image, used for all three."""
    images = torch.arange(2 * 4 * 5, dtype=torch.float32, device=device).view(2, 1, 4, 5)
    got = wrapper.merge_tiles(images, 2, pixel_mean=(10.0,), pixel_std=(4.0,))
    torch.testing.assert_close(got.cpu(), composed_canvases(images, 2, (10.0,) * 3, (4.0,) * 3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pixel_mean"):
        wrapper.merge_tiles(images.expand(-1, 3, -1, -1), 2, pixel_mean=(10.0,), pixel_std=(4.0,) * 3)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e39, 0.0, 1e-50])
def test_compiled_merge_tiles_rejects_bad_normalisation_itself(device, bad):
    require_kernel("merge_tiles", device)
    images = torch.zeros(2, 1, 4, 4, device=device)
    with pytest.raises((ValueError, RuntimeError), match="pixel_std"):
        torch.ops.sammed_fast.merge_tiles(images, 2, [0.0] * 3, [1.0, bad, 1.0], torch.float32)
    if not 0.0 <= bad <= 1.0:  # NaN, inf and 1e39 are bad means too
        with pytest.raises((ValueError, RuntimeError), match="pixel_mean"):
            torch.ops.sammed_fast.merge_tiles(images, 2, [0.0, bad, 0.0], [1.0] * 3, torch.float32)


# ----------------------------------------------------------------------------- item 7: autograd
def merge_gradient_oracle(grad_canvases: torch.Tensor, B: int, C: int, grid: int, std) -> torch.Tensor:
    """Cut each tile's slot out of its canvas (loops), scale by 1/std, sum three channels to one."""
    h, w = grad_canvases.shape[2] // grid, grad_canvases.shape[3] // grid
    out = []
    for k in range(B):
        n, slot = divmod(k, grid * grid)
        i, j = divmod(slot, grid)
        tile = grad_canvases[n, :, i * h : (i + 1) * h, j * w : (j + 1) * w]
        tile = tile / torch.tensor(std, dtype=tile.dtype, device=tile.device).view(3, 1, 1)
        out.append(tile.sum(0, keepdim=True) if C == 1 else tile)
    return torch.stack(out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("B, grid", [(5, 2), (1, 1), (9, 3)])
def test_merge_tiles_gradient(ops, device, channels, B, grid):
    """merge_tiles is linear: its gradient is the inverse tiling scaled by 1/std, on every path."""
    images = (torch.rand(B, channels, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(B)) * 255)
    images = images.to(device).requires_grad_()
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "autograd kernel was not registered" must not appear
        canvases = ops.merge_tiles(images, grid, mean, std, torch.float64)
    assert canvases.requires_grad
    grad_out = torch.randn(canvases.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).to(device)
    (grad,) = torch.autograd.grad(canvases, images, grad_out)
    torch.testing.assert_close(grad, merge_gradient_oracle(grad_out, B, channels, grid, std))
    # the reference's autograd agrees
    (want,) = torch.autograd.grad(reference.merge_tiles(images, grid, list(mean), list(std), torch.float64),
                                  images, grad_out)
    torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("channels", [1, 3])
def test_merge_tiles_gradcheck(wrapper, device, channels):
    # Values k/256 and eps 2^-8 keep the float32 arithmetic inside the op exact.
    g = torch.Generator().manual_seed(channels)
    images = (torch.randint(0, 4 * 256, (5, channels, 3, 2), generator=g) / 256).double().to(device).requires_grad_()
    mean, std = (0.5, 1.0, 2.0), (0.5, 2.0, 4.0)

    def merge(x):
        return wrapper.merge_tiles(x, 2, mean, std, torch.float64)

    assert torch.autograd.gradcheck(merge, (images,), eps=2**-8, atol=1e-12, rtol=1e-12)
    torch.autograd.gradcheck(lambda x: wrapper.merge_tiles(x, 2, out_dtype=torch.float64), (images,),
                             eps=2**-8, atol=1e-4, rtol=1e-4)  # SAM's mean/std: float32 rounding


def test_boxes_from_probs_outputs_never_require_grad(ops, device):
    probs = torch.rand(3, 12, 12, device=device, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = ops.boxes_from_probs(probs, 0.5, 4, 4, "full")
    assert not result.boxes.requires_grad and not result.empty.requires_grad
    assert result.boxes.grad_fn is None


def test_public_boxes_from_probs_outputs_never_require_grad(wrapper, device):
    probs = torch.rand(3, 12, 12, device=device, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for downscale in (1, 4):
            result = wrapper.boxes_from_probs(probs, 0.5, downscale)
            assert not result.boxes.requires_grad and not result.empty.requires_grad


# ----------------------------------------------------------------------------- item 8: int64 overflow
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p, x, m: public.boxes_from_probs(p, downscale=10**30), "downscale"),
        (lambda p, x, m: public.boxes_from_probs(p, downscale=2**63), "downscale"),
        (lambda p, x, m: public.boxes_from_probs(p, connectivity=10**30), "connectivity"),
        (lambda p, x, m: public.boxes_from_probs(p, threshold=10**400), "threshold"),
        (lambda p, x, m: public.label_components(m, 2**64), "connectivity"),
        (lambda p, x, m: public.largest_component(m, -(2**70)), "connectivity"),
        (lambda p, x, m: public.merge_tiles(x, grid=10**30), "grid"),
        (lambda p, x, m: public.unmerge_tiles(x, grid=10**30), "grid"),
        (lambda p, x, m: public.unmerge_tiles(x, 2, (10**30, 2)), "out_size"),
        (lambda p, x, m: public.unmerge_tiles(x, 2, (2, -(10**30))), "out_size"),
        (lambda p, x, m: public.boxes_to_canvas(x[:, 0, 0, :4], (10**30, 2)), "tile_hw"),
        (lambda p, x, m: public.boxes_to_canvas(x[:, 0, 0, :4], (2, 2), 10**30), "grid"),
    ],
)
def test_integers_beyond_int64_are_named(wrapper, device, call, name):
    probs = torch.rand(2, 8, 8, device=device)
    images = torch.zeros(2, 3, 8, 8, device=device)
    masks = torch.zeros(2, 5, 5, dtype=torch.bool, device=device)
    with pytest.raises(ValueError, match=name):
        call(probs, images, masks)


@pytest.mark.parametrize("downscale", [INT64_MAX, 2**40, 9])
def test_downscale_beyond_the_image_is_one_cell(ops, device, downscale):
    """Any downscale >= the image size pools to a single cell (no overflow at 2^63-1)."""
    probs_np = quantised_probs(np.random.default_rng(1), (3, 9, 7), "blobs")
    probs_np[1] = 0.75  # mean exactly 0.75: background
    probs_np[2] = 1.0
    result = ops.boxes_from_probs(torch.from_numpy(probs_np).to(device), 0.5, downscale, 4, "nan")
    want_boxes, want_empty = oracle_boxes_from_probs(probs_np, 0.5, downscale, 4, "nan")
    np.testing.assert_array_equal(result.empty.cpu().numpy(), want_empty)
    np.testing.assert_array_equal(result.boxes.cpu().numpy(), want_boxes)


def test_public_downscale_int64_max(wrapper, device):
    probs = torch.ones(2, 5, 6, device=device)
    result = wrapper.boxes_from_probs(probs, 0.5, INT64_MAX)
    assert result.boxes.tolist() == [[0.0, 0.0, 5.0, 4.0]] * 2 and result.empty.tolist() == [False, False]


# ----------------------------------------------------------------------------- item 8: meta
def meta_calls():
    masks = torch.empty(3, 17, 20, dtype=torch.bool, device="meta")
    return {
        "label_components": (lambda: public.label_components(masks), [((3, 17, 20), torch.int32)]),
        "largest_component": (lambda: public.largest_component(masks, 4),
                              [((3, 17, 20), torch.bool), ((3, 4), torch.float32), ((3,), torch.int64)]),
        "boxes_from_probs": (lambda: public.boxes_from_probs(torch.empty(3, 17, 20, device="meta")),
                             [((3, 4), torch.float32), ((3,), torch.bool)]),
        "boxes_from_probs_float64": (
            lambda: public.boxes_from_probs(torch.empty(3, 17, 20, dtype=torch.float64, device="meta"), 0.5, 1, 8,
                                            "nan", check_finite=False),
            [((3, 4), torch.float32), ((3,), torch.bool)]),
        "merge_tiles": (lambda: public.merge_tiles(torch.empty(5, 1, 6, 7, dtype=torch.uint8, device="meta")),
                        [((2, 3, 12, 14), torch.float32)]),
        "unmerge_tiles": (lambda: public.unmerge_tiles(torch.empty(5, 1, 12, 14, device="meta"), 2, (9, 4)),
                          [((5, 1, 9, 4), torch.float32)]),
        "boxes_to_canvas": (lambda: public.boxes_to_canvas(torch.empty(5, 4, device="meta"), (6, 7)),
                            [((5, 4), torch.float32)]),
    }


@pytest.mark.parametrize("path", ["compiled", "fallback"])
@pytest.mark.parametrize("name", list(meta_calls()))
def test_meta_inputs_give_meta_outputs(monkeypatch, path, name):
    """No op's output shape depends on the data: meta inputs give meta outputs of the right shapes."""
    if path == "fallback":
        monkeypatch.setattr(public, "_KERNELS", {})
    elif missing_kernel("label_components", "cpu"):
        pytest.skip("compiled library unusable")
    call, want = meta_calls()[name]
    got = call()
    got = (got,) if isinstance(got, torch.Tensor) else tuple(got)
    assert [(tuple(t.shape), t.dtype, t.device.type) for t in got] == [(s, d, "meta") for s, d in want]


def test_meta_unmerge_tiles_is_differentiable(wrapper):
    logits = torch.empty(5, 1, 12, 14, device="meta", requires_grad=True)
    wrapper.unmerge_tiles(logits, 2, (9, 4)).sum().backward()
    assert logits.grad.shape == logits.shape and logits.grad.device.type == "meta"
