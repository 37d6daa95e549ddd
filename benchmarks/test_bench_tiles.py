"""merge_tiles / unmerge_tiles against the plain PyTorch composition they replace, and against a
device copy of the output's bytes (the floor: no op that writes its output can beat a copy of it).

Groups "merge_tiles: device Bx1xt^2" and "unmerge_tiles: device Bx1xS^2 -> t^2". The composition is the
fastest honest way to write it in PyTorch: broadcasting, one view/permute/reshape and (unmerge)
one advanced-indexing gather plus ``F.interpolate``; ours must match it to float rounding.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sammed_fast import ops
from sammed_fast.ops import SAM_PIXEL_MEAN, SAM_PIXEL_STD

GRID = 2
full = pytest.mark.full
MERGE_CPU = [pytest.param((64, 128), id="64x128^2"), pytest.param((64, 512), id="64x512^2", marks=full)]
MERGE_GPU = [pytest.param((256, 512), id="256x512^2")]
# (boxes, low-res canvas logits side, tile side): compact SAM at tile 128, vit_b at tile 512.
UNMERGE_CPU = [pytest.param((64, 64, 128), id="compact-t128"),
               pytest.param((64, 256, 512), id="vit_b-t512", marks=full)]
UNMERGE_GPU = [pytest.param((256, 256, 512), id="vit_b-t512")]
IMPLS = ["ours", "torch", "copy"]


def torch_merge(images: torch.Tensor) -> torch.Tensor:
    """(B,1,h,w) 0..255 -> SAM-normalised (ceil(B/4),3,2h,2w), the way one writes it in PyTorch."""
    B, C, h, w = images.shape
    mean = torch.tensor(SAM_PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    x = (images - mean) / std  # broadcasts the single channel to three
    canvases = -(-B // GRID**2)
    if canvases * GRID**2 > B:
        x = torch.cat([x, x.new_zeros(canvases * GRID**2 - B, 3, h, w)])
    return x.view(canvases, GRID, GRID, 3, h, w).permute(0, 3, 1, 4, 2, 5).reshape(canvases, 3, GRID * h, GRID * w)


def torch_unmerge(logits: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """(B,1,Hc,Wc) -> tile k's own quadrant, bilinearly resized to out_size."""
    B, C, Hc, Wc = logits.shape
    k = torch.arange(B, device=logits.device)
    row, col = (k % GRID**2) // GRID, k % GRID
    quadrants = logits.view(B, C, GRID, Hc // GRID, GRID, Wc // GRID).permute(0, 2, 4, 1, 3, 5)
    tiles = quadrants[k, row, col]
    return F.interpolate(tiles, size=out_size, mode="bilinear", align_corners=False)


def run(bench, impl: str, device: str, op: str, group: str, make_ours, make_torch, source, out_shape, info) -> None:
    """One case: ours or the composition (checked against each other) or the copy floor."""
    if impl == "copy":
        src = torch.randn(out_shape, device=device)
        dst = torch.empty_like(src)

        def fn():
            dst.copy_(src)
            bench.synchronize(device)
            return dst

        check = lambda out: torch.testing.assert_close(out, src, rtol=0, atol=0)  # noqa: E731
        role = "floor"
    else:
        make = make_ours if impl == "ours" else make_torch
        expected = (make_torch if impl == "ours" else make_ours)(source)

        def fn():
            out = make(source)
            bench.synchronize(device)
            return out

        def check(out) -> None:
            assert out.shape == out_shape, f"{impl}: shape {tuple(out.shape)}, expected {out_shape}"
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4, msg=lambda m: f"{impl} vs other: {m}")

        role = "ours" if impl == "ours" else "peer"
    extra = dict(ours_impl=bench.implementation(op, device), target_floor_ratio=2.0) if impl == "ours" else {}
    out_bytes = torch.Size(out_shape).numel() * 4
    bench(fn, check=check, group=group, role=role, device=device, op=op, impl=impl,
          output_mb=round(out_bytes / 2**20, 1), **info, **extra)


def merge_case(bench, shape, impl: str, device: str) -> None:
    B, t = shape
    images = torch.rand(B, 1, t, t, generator=torch.Generator().manual_seed(0)).mul_(255).to(device)
    out_shape = (-(-B // GRID**2), 3, GRID * t, GRID * t)
    run(bench, impl, device, "merge_tiles", f"merge_tiles: {device} {B}x1x{t}^2", lambda x: ops.merge_tiles(x, GRID),
        torch_merge, images, out_shape, dict(batch=B, side=t, pixels=B * t * t))


def unmerge_case(bench, geometry, impl: str, device: str) -> None:
    B, side, t = geometry
    logits = torch.randn(B, 1, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    run(bench, impl, device, "unmerge_tiles", f"unmerge_tiles: {device} {B}x1x{side}^2 -> {t}^2",
        lambda x: ops.unmerge_tiles(x, GRID, (t, t)), lambda x: torch_unmerge(x, (t, t)), logits,
        (B, 1, t, t), dict(batch=B, side=side, out_side=t, pixels=B * t * t))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", MERGE_CPU)
def test_merge_tiles_cpu(bench, shape, impl):
    merge_case(bench, shape, impl, "cpu")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("geometry", UNMERGE_CPU)
def test_unmerge_tiles_cpu(bench, geometry, impl):
    unmerge_case(bench, geometry, impl, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", MERGE_GPU)
def test_merge_tiles_cuda(bench, shape, impl):
    merge_case(bench, shape, impl, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("geometry", UNMERGE_GPU)
def test_unmerge_tiles_cuda(bench, geometry, impl):
    unmerge_case(bench, geometry, impl, "cuda")
