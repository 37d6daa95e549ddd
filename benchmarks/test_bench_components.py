"""largest_component (+ its box and area) against the connected-component peers.

Groups "largest_component cN: device BxS^2, input". Every case first checks its (boxes, areas)
against the other side: ours against scipy (the oracle of the test suite), each peer against ours.
4-connectivity on the CPU, as in REFERENCE section 6 (the paper's BFS is 4-connected); on a GPU
4 and 8 (kornia labels 8-connected components only).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inputs import MASKS
from peers import CPU_PEERS, GPU_CONNECTIVITY, GPU_PEERS, Answer, scipy_peer
from sammed_fast import ops

full = pytest.mark.full
CPU_SHAPES = [
    pytest.param((64, 128), id="64x128^2"),
    pytest.param((64, 512), id="64x512^2", marks=full),
    pytest.param((16, 1024), id="16x1024^2", marks=full),
]
GPU_SHAPES = [pytest.param((256, 512), id="256x512^2")]
KINDS = list(MASKS)
BFS_MAX_SIDE = 128  # the paper's BFS takes seconds per batch beyond this

_ours: dict[tuple, Answer] = {}  # ours' checked answer per (device, shape, kind, connectivity)
_oracle: dict[tuple, Answer] = {}


def oracle(shape, kind: str, connectivity: int) -> Answer:
    key = (shape, kind, connectivity)
    if key not in _oracle:
        _oracle[key] = scipy_peer(MASKS[kind](*shape), connectivity)
    return _oracle[key]


def as_answer(boxes: torch.Tensor, areas: torch.Tensor) -> Answer:
    return Answer(boxes.cpu().numpy(), areas.cpu().numpy())


def assert_same(found: Answer, expected: Answer, what: str) -> None:
    bad = np.flatnonzero((found.boxes != expected.boxes).any(1) | (found.areas != expected.areas))
    if bad.size:
        b = int(bad[0])
        raise AssertionError(
            f"{what}: {bad.size} images differ, first image {b}: box {found.boxes[b].tolist()} area "
            f"{int(found.areas[b])}, expected box {expected.boxes[b].tolist()} area {int(expected.areas[b])}"
        )


def group_name(connectivity: int, device: str, shape, kind: str) -> str:
    return f"largest_component c{connectivity}: {device} {shape[0]}x{shape[1]}^2, {kind}"


def info(device: str, shape, kind: str, connectivity: int, impl: str) -> dict:
    return dict(op="largest_component", batch=shape[0], side=shape[1], input=kind,
                connectivity=connectivity, impl=impl, pixels=shape[0] * shape[1] ** 2)


def ours_answer(device: str, shape, kind: str, connectivity: int) -> Answer:
    """Ours' answer, computed once (it is slow while only the reference fallback exists)."""
    key = (device, shape, kind, connectivity)
    if key not in _ours:
        masks = torch.from_numpy(MASKS[kind](*shape)).to(device)
        result = ops.largest_component(masks, connectivity)
        _ours[key] = as_answer(result.boxes, result.areas)
    return _ours[key]


def targets(device: str, shape) -> dict:
    """The project's goals for this case, evaluated by the report (never asserted)."""
    if device == "cpu" and shape == (64, 512):
        return dict(target_ratio=2.0, target_peer="best")
    if device == "cpu" and shape[1] <= BFS_MAX_SIDE:
        return dict(target_ratio=100.0, target_peer="python_bfs")
    if device == "cuda":
        return dict(target_ratio=20.0, target_peer="cupyx", target_max_s=0.5e-3)
    return {}


def run_ours(bench, device: str, shape, kind: str, connectivity: int) -> None:
    masks = torch.from_numpy(MASKS[kind](*shape)).to(device)

    def fn():
        result = ops.largest_component(masks, connectivity)
        bench.synchronize(device)
        return result

    def check(result) -> None:
        answer = as_answer(result.boxes, result.areas)
        assert_same(answer, oracle(shape, kind, connectivity), "ours vs scipy")
        _ours[(device, shape, kind, connectivity)] = answer

    bench(fn, check=check, group=group_name(connectivity, device, shape, kind), role="ours", device=device,
          ours_impl=bench.implementation("largest_component", device),
          **info(device, shape, kind, connectivity, "ours"), **targets(device, shape))


@pytest.mark.parametrize("impl", ["ours", *CPU_PEERS])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", CPU_SHAPES)
def test_largest_component_cpu(bench, shape, kind, impl):
    connectivity = 4
    if impl == "ours":
        run_ours(bench, "cpu", shape, kind, connectivity)
        return
    if impl == "python_bfs" and shape[1] > BFS_MAX_SIDE:
        pytest.skip(f"the Python BFS runs at {BFS_MAX_SIDE}^2 only (seconds per batch beyond)")
    module, peer = CPU_PEERS[impl]
    pytest.importorskip(module)
    masks = MASKS[kind](*shape)
    expected = ours_answer("cpu", shape, kind, connectivity)
    bench(lambda: peer(masks, connectivity),
          check=lambda found: assert_same(found, expected, f"{impl} vs ours"),
          group=group_name(connectivity, "cpu", shape, kind), role="peer",
          **info("cpu", shape, kind, connectivity, impl))


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["ours", *GPU_PEERS])
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_largest_component_cuda(bench, shape, kind, connectivity, impl):
    if impl == "ours":
        run_ours(bench, "cuda", shape, kind, connectivity)
        return
    if connectivity not in GPU_CONNECTIVITY[impl]:
        pytest.skip(f"{impl} labels {GPU_CONNECTIVITY[impl]}-connected components only")
    module, peer = GPU_PEERS[impl]
    library = pytest.importorskip(module)
    if impl == "kornia_union_find" and not hasattr(library, "connected_components_union_find"):
        pytest.skip("this kornia has no connected_components_union_find (kornia >= 0.9 has)")
    masks = torch.from_numpy(MASKS[kind](*shape)).cuda()
    expected = ours_answer("cuda", shape, kind, connectivity)

    def fn():
        result = peer(masks, connectivity)
        bench.synchronize("cuda")
        return result

    def check(result) -> None:
        found = as_answer(*result)
        if impl == "kornia_pool" and not (np.array_equal(found.boxes, expected.boxes)
                                           and np.array_equal(found.areas, expected.areas)):
            pytest.skip(f"kornia's max pooling is not exact on {kind} masks after max(H, W) iterations")
        assert_same(found, expected, f"{impl} vs ours")

    bench(fn, check=check, group=group_name(connectivity, "cuda", shape, kind), role="peer", device="cuda",
          **info("cuda", shape, kind, connectivity, impl))
