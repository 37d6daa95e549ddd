"""Shared fixtures of the op tests: devices, the implementation under test, and numpy oracles.

Every op is tested through ``Ops``, which calls one implementation with the public wrappers'
arguments: ``compiled`` calls ``torch.ops.sammed_fast.*`` directly (skipped when ``sammed_fast._C``
has no kernel of that op for the device), ``reference`` calls ``sammed_fast.ops.reference`` (the
fallback). The public wrappers themselves are tested for argument checks and dispatch.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from scipy import ndimage

import sammed_fast
from sammed_fast import ops as public
from sammed_fast._extension import DISPATCH_KEYS, OPS
from sammed_fast.ops import FilteredBoxes, LargestComponent, reference

HAS_CUDA = torch.cuda.is_available()
OP_NAMES = OPS  # the package's one list of op names

# Modest example counts: the whole op suite must stay well under a minute on 2 shared cores.
settings.register_profile(
    "sammed_fast",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("sammed_fast")



def example_count(ops: "Ops") -> int:
    """Hypothesis examples per random test: fewer for the slow pure-PyTorch reference."""
    return 20 if ops.backend == "compiled" else 5


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]


def missing_kernel(op: str, device: str | torch.device) -> str | None:
    """Why ``torch.ops.sammed_fast.<op>`` cannot run on ``device``, or None when it can."""
    info = sammed_fast.build_info()
    if not info["compiled"]:
        return f"compiled library unusable: {info['reason']}"
    key = DISPATCH_KEYS[torch.device(device).type]
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sammed_fast::{op}", key):
        return f"sammed_fast._C has no {key} kernel for {op} (not written or not built yet)"
    return None


def require_kernel(op: str, device: str | torch.device) -> None:
    reason = missing_kernel(op, device)
    if reason is not None:
        pytest.skip(reason)


class Ops:
    """One implementation ("compiled" or "reference") of every op, called with public arguments."""

    def __init__(self, backend: str):
        self.backend = backend

    def __repr__(self) -> str:
        return f"Ops({self.backend})"

    def _impl(self, op: str, tensor: torch.Tensor):
        if self.backend == "compiled":
            require_kernel(op, tensor.device)
            return getattr(torch.ops.sammed_fast, op)
        return getattr(reference, op)

    def label_components(self, masks, connectivity=8):
        return self._impl("label_components", masks)(masks, connectivity)

    def largest_component(self, masks, connectivity=8) -> LargestComponent:
        return LargestComponent(*self._impl("largest_component", masks)(masks, connectivity))

    def boxes_from_probs(self, probs, threshold=0.75, downscale=4, connectivity=4, empty="full") -> FilteredBoxes:
        op = self._impl("boxes_from_probs", probs)
        return FilteredBoxes(*op(probs, float(threshold), downscale, connectivity, empty == "full"))

    def merge_tiles(self, images, grid=2, pixel_mean=public.SAM_PIXEL_MEAN, pixel_std=public.SAM_PIXEL_STD,
                    out_dtype=torch.float32):
        op = self._impl("merge_tiles", images)
        return op(images, grid, [float(v) for v in pixel_mean], [float(v) for v in pixel_std], out_dtype)

    def unmerge_tiles(self, logits, grid=2, out_size=None):
        out_h, out_w = out_size if out_size is not None else (0, 0)
        return self._impl("unmerge_tiles", logits)(logits, grid, out_h, out_w)


@pytest.fixture(scope="session", params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session", params=["compiled", "reference"])
def ops(request) -> Ops:
    return Ops(request.param)


# ----------------------------------------------------------------------------- numpy oracles
STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def scipy_labels(masks: np.ndarray, connectivity: int) -> np.ndarray:
    """(B,H,W) -> int32 (B,H,W): scipy.ndimage.label of every image separately."""
    out = np.zeros(masks.shape, dtype=np.int32)
    for b, image in enumerate(masks):
        out[b] = ndimage.label(image != 0, structure=STRUCTURES[connectivity])[0]
    return out


def oracle_largest(masks: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B,H,W) -> (mask bool (B,H,W), boxes float32 (B,4) xyxy inclusive, areas int64 (B,)) from
    scipy labels; ties go to the lowest label, an empty image gives area 0 and box -1s."""
    labels = scipy_labels(masks, connectivity)
    B = masks.shape[0]
    mask = np.zeros(masks.shape, dtype=bool)
    boxes = np.full((B, 4), -1.0, dtype=np.float32)
    areas = np.zeros(B, dtype=np.int64)
    for b in range(B):
        counts = np.bincount(labels[b].ravel())
        counts[0] = 0
        if counts.max() == 0:
            continue
        best = int(np.argmax(counts))  # first maximum: the lowest label wins ties
        mask[b] = labels[b] == best
        areas[b] = counts[best]
        ys, xs = np.nonzero(mask[b])
        boxes[b] = (xs.min(), ys.min(), xs.max(), ys.max())
    return mask, boxes, areas


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


@pytest.fixture
def one_thread():
    """One torch CPU thread for the test (bit-identical CPU runs need the same thread count; small
    models run fastest so on a shared machine), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
