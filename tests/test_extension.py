"""The compiled library: build_info, dispatch, fallback with one warning, torch.compile."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sammed_fast
from conftest import DEVICES, DISPATCH_KEYS, OP_NAMES, missing_kernel
from sammed_fast import ops as public
from sammed_fast.ops import reference

INFO_TYPES = {"compiled": bool, "cpu": bool, "cuda": bool, "cuda_archs": str}


def running_torch() -> str:
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def test_build_info_keys_and_types():
    info = sammed_fast.build_info()
    assert set(info) >= {"compiled", "cpu", "cuda", "cuda_archs", "torch", "reason"}
    for key, kind in INFO_TYPES.items():
        assert isinstance(info[key], kind), (key, info[key])
    if info["compiled"]:
        assert info["reason"] is None
        assert isinstance(info["torch"], str) and ".".join(info["torch"].split(".")[:2]) == running_torch()
        assert info["cpu"], "CPU kernels are always built"
        assert bool(info["cuda_archs"]) == info["cuda"]
    else:
        assert isinstance(info["reason"], str) and info["reason"]
        assert info["torch"] is None and not info["cpu"] and not info["cuda"]


@pytest.mark.parametrize("device_key", ["cpu", "cuda"])
def test_compiled_library_has_every_kernel_it_claims(device_key):
    info = sammed_fast.build_info()
    if not info["compiled"]:
        pytest.skip(f"compiled library unusable: {info['reason']}")
    for name in OP_NAMES:
        assert hasattr(torch.ops.sammed_fast, name), f"schema of {name} missing"
    if not info[device_key]:
        pytest.skip(f"built without {device_key} kernels")
    missing = [name for name in OP_NAMES if missing_kernel(name, device_key)]
    assert not missing, f"build_info claims {DISPATCH_KEYS[device_key]} kernels but these have none: {missing}"


def small_inputs(device) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 9, 11, generator=g) > 0.5).to(device)
    return {
        "label_components": (masks,),
        "largest_component": (masks,),
        "boxes_from_probs": (torch.rand(2, 9, 11, generator=g).to(device),),
        "merge_tiles": (torch.rand(3, 1, 4, 5, generator=g).to(device) * 255,),
        "unmerge_tiles": (torch.randn(3, 1, 8, 10, generator=g).to(device),),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OP_NAMES)
def test_wrapper_uses_kernel_when_present_else_reference(monkeypatch, device, name):
    calls = []
    original = getattr(reference, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, name, spy)
    getattr(public, name)(*small_inputs(device)[name])
    expected = [] if missing_kernel(name, device) is None else [name]
    assert calls == expected, "compiled kernel bypassed" if calls else "reference not used as fallback"


# The child blocks ("missing") or replaces ("stale") sammed_fast._C, or leaves it alone ("usable"),
# before importing sammed_fast, records every warning of the import and of six op calls, and
# checks the results against scipy and plain torch.
FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, sys, types, warnings
    import numpy as np
    if sys.argv[1] == "missing":
        sys.modules["sammed_fast._C"] = None  # makes `from sammed_fast import _C` raise ImportError
    elif sys.argv[1] == "stale":
        stub = types.ModuleType("sammed_fast._C")
        stub.build_info = lambda: json.dumps({"torch": "1.0.0", "cpu": True, "cuda": False, "cuda_archs": ""})
        sys.modules["sammed_fast._C"] = stub
    import torch
    from scipy import ndimage
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sammed_fast
        from sammed_fast import ops
        rng = np.random.default_rng(0)
        masks = rng.random((3, 40, 33)) < 0.5
        labels = ops.label_components(torch.from_numpy(masks), 4).numpy()
        largest = ops.largest_component(torch.from_numpy(masks), 8)
        boxes = ops.boxes_from_probs(torch.from_numpy(masks).float(), 0.5, 1, 4)
        images = torch.from_numpy(rng.integers(0, 256, (5, 1, 4, 6))).to(torch.uint8)
        canvases = ops.merge_tiles(images, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        logits = torch.randn(5, 1, 8, 12)
        tiles = ops.unmerge_tiles(logits, 2)
    four = ndimage.generate_binary_structure(2, 1)
    eight = ndimage.generate_binary_structure(2, 2)
    areas = [np.bincount(ndimage.label(m, eight)[0].ravel())[1:].max() for m in masks]
    result = {
        "info": sammed_fast.build_info(),
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
        "labels": all((labels[b] == ndimage.label(masks[b], four)[0]).all() for b in range(3)),
        "areas": largest.areas.tolist() == [int(a) for a in areas],
        "boxes": boxes.boxes.shape == (3, 4) and not bool(boxes.empty.any()),
        "merge": torch.equal(canvases[0, 0, :4, 6:], images[1, 0].float())
                 and torch.equal(canvases[1, :, :4, :6], images[4].float().expand(3, -1, -1))
                 and not bool(canvases[1, :, 4:].any()),
        "unmerge": torch.equal(tiles[1], logits[1, :, :4, 6:]) and torch.equal(tiles[4], logits[4, :, :4, :6]),
    }
    print(json.dumps(result))
    """
)


def import_and_call_ops_in_a_child(mode: str) -> dict:
    """Runs FALLBACK_SCRIPT in a fresh interpreter that imports the very sammed_fast this test
    process imported (the installed package in CI, the source tree in a development checkout)."""
    child = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, mode], cwd=Path(sammed_fast.__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_no_warning_when_compiled_library_is_usable():
    if not sammed_fast.build_info()["compiled"]:
        pytest.skip("compiled library unusable: the fallback warning is expected")
    result = import_and_call_ops_in_a_child("usable")  # the import itself is observed, in a fresh process
    assert result["info"]["compiled"] is True, result["info"]
    assert not [w for w in result["warnings"] if w[0] == "RuntimeWarning"], result["warnings"]
    for check in ("labels", "areas", "boxes", "merge", "unmerge"):
        assert result[check], f"{check} wrong with the compiled library"


@pytest.mark.parametrize("mode, reason", [("missing", "could not be imported"), ("stale", "built for torch 1.0")])
def test_fallback_without_usable_library_warns_once(mode, reason):
    result = import_and_call_ops_in_a_child(mode)
    info = result["info"]
    assert info["compiled"] is False and reason in info["reason"], info
    runtime = [message for category, message in result["warnings"] if category == "RuntimeWarning"]
    assert len(runtime) == 1, result["warnings"]
    assert reason in runtime[0] and "reference" in runtime[0]
    for check in ("labels", "areas", "boxes", "merge", "unmerge"):
        assert result[check], f"{check} wrong on the reference fallback"


# ----------------------------------------------------------------------------- torch.compile
def pipeline(masks, probs, images, logits):
    labels = public.label_components(masks)
    largest = public.largest_component(masks)
    filtered = public.boxes_from_probs(probs)  # check_finite is skipped under torch.compile
    canvases = public.merge_tiles(images, 2)
    tiles = public.unmerge_tiles(logits, 2, (6, 10))
    return labels, largest.mask, largest.boxes, largest.areas, filtered.boxes, filtered.empty, canvases, tiles


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    for name in OP_NAMES:
        reason = missing_kernel(name, device)
        if reason:
            pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 17, 20, generator=g) > 0.4).to(device)
    probs = torch.rand(3, 17, 20, generator=g).to(device)
    images = (torch.rand(5, 1, 6, 10, generator=g) * 255).to(device)
    logits = torch.randn(5, 1, 12, 20, generator=g).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(pipeline, backend="aot_eager", fullgraph=True)
    eager_logits, eager_images = logits.clone().requires_grad_(), images.clone().requires_grad_()
    compiled_logits, compiled_images = logits.clone().requires_grad_(), images.clone().requires_grad_()
    want = pipeline(masks, probs, images=eager_images, logits=eager_logits)
    got = compiled(masks, probs, images=compiled_images, logits=compiled_logits)
    for index, (g_out, w_out) in enumerate(zip(got, want)):
        torch.testing.assert_close(g_out, w_out, msg=lambda m: f"output {index}: {m}")
    (want[-1].square().sum() + want[-2].square().sum()).backward()
    (got[-1].square().sum() + got[-2].square().sum()).backward()
    torch.testing.assert_close(compiled_logits.grad, eager_logits.grad)
    assert eager_images.grad is not None and compiled_images.grad is not None  # merge_tiles' backward
    torch.testing.assert_close(compiled_images.grad, eager_images.grad)


@pytest.mark.skipif(
    os.environ.get("SAMMED_FAST_REQUIRE_COMPILED") != "1",
    reason="set SAMMED_FAST_REQUIRE_COMPILED=1 (CI does) to require the compiled kernels",
)
def test_ci_exercises_the_compiled_cpu_kernels_not_the_fallback():
    from sammed_fast._extension import OPS, kernel_table

    info = sammed_fast.build_info()
    assert info["compiled"], info["reason"]
    missing = [op for op in OPS if not kernel_table().get((op, "cpu"))]
    assert not missing, f"no compiled CPU kernel for {missing}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared libraries only")
def test_extension_links_the_shared_libstdcxx():
    """A private static libstdc++ in _C crashed on the first error message that formatted a number
    (seen with a g++ that had only libstdc++.a); setup.py refuses such compilers."""
    if not sammed_fast.build_info()["compiled"]:
        pytest.skip("sammed_fast._C is not built")
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    import sammed_fast._C as compiled

    dynamic = subprocess.run([readelf, "-d", compiled.__file__], capture_output=True, text=True,
                             check=True).stdout
    assert "libstdc++.so" in dynamic, f"{compiled.__file__} does not load the shared libstdc++"
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    with pytest.raises((RuntimeError, ValueError), match="connectivity must be 4 or 8, got 6"):
        torch.ops.sammed_fast.label_components(masks, 6)  # formats an int64 into the message
