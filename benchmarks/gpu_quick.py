"""Quick GPU check and timings of the sammed_fast CUDA ops (run by benchmarks/device_check.sh).

First correctness: the CUDA ops against the CPU implementation (compiled CPU kernels or the
reference) on part of the batch, merge/unmerge against the PyTorch reference on the GPU. Then
timings with CUDA events (warm-up, median of many launches) at 256 x 512^2 coarse-mask-like
images, a device copy of the same bytes for merge/unmerge, and a cupyx.scipy.ndimage.label
pipeline when cupy imports. Writes gpu_quick.json and gpu_quick_summary.txt to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import sammed_fast
from sammed_fast import ops as public
from sammed_fast.ops import reference

OPS = torch.ops.sammed_fast


def cuda_time_ms(fn, iters: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of fn() between CUDA events (launch queue kept full)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def wall_time_ms(fn, iters: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def coarse_masks(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,size,size) bool masks (an ellipse per image plus noise specks) and float32 probabilities
    (about 0.85 inside the ellipse, below 0.3 outside), made on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, device="cuda")  # noqa: E731
    ys = torch.arange(size, device="cuda", dtype=torch.float32).view(1, size, 1)
    xs = torch.arange(size, device="cuda", dtype=torch.float32).view(1, 1, size)
    cy, cx = (0.25 + 0.5 * rand(batch, 1, 1)) * size, (0.25 + 0.5 * rand(batch, 1, 1)) * size
    ay, ax = (0.08 + 0.2 * rand(batch, 1, 1)) * size, (0.08 + 0.2 * rand(batch, 1, 1)) * size
    ellipse = ((ys - cy) / ay) ** 2 + ((xs - cx) / ax) ** 2 < 1
    masks = ellipse ^ (rand(batch, size, size) < 0.003)
    probs = (ellipse.float() * 0.7 + 0.3 * rand(batch, size, size)).clamp_(0, 1)
    return masks, probs


def check_correctness(masks: torch.Tensor, probs: torch.Tensor, n: int) -> dict[str, bool]:
    """CUDA ops against the CPU path (public wrappers on CPU tensors: compiled CPU kernels when
    built) on the first n images; a mismatch is also checked against the pure-PyTorch reference on
    8 images (key "<name>_vs_reference8"), to tell which side is wrong."""
    cases = {}
    for c in (4, 8):
        cases[f"label_components_c{c}"] = (
            lambda m, p, c=c: OPS.label_components(m, c), lambda m, p, c=c: public.label_components(m, c),
            lambda m, p, c=c: reference.label_components(m, c))
        cases[f"largest_component_c{c}"] = (
            lambda m, p, c=c: OPS.largest_component(m, c), lambda m, p, c=c: public.largest_component(m, c),
            lambda m, p, c=c: reference.largest_component(m, c))
        for d in (1, 4):
            cases[f"boxes_from_probs_c{c}_d{d}"] = (
                lambda m, p, c=c, d=d: OPS.boxes_from_probs(p, 0.75, d, c, True),
                lambda m, p, c=c, d=d: public.boxes_from_probs(p, 0.75, d, c),
                lambda m, p, c=c, d=d: reference.boxes_from_probs(p, 0.75, d, c, True))

    def same(got, want) -> bool:
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        return all(torch.equal(g.cpu(), w) for g, w in zip(got, want))

    results = {}
    m_cpu, p_cpu = masks[:n].cpu(), probs[:n].cpu()
    for name, (cuda_op, cpu_op, reference_op) in cases.items():
        results[name] = same(cuda_op(masks[:n], probs[:n]), cpu_op(m_cpu, p_cpu))
        if not results[name]:
            results[f"{name}_vs_reference8"] = same(cuda_op(masks[:8], probs[:8]),
                                                    reference_op(m_cpu[:8], p_cpu[:8]))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/sammed_fast_device_check"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--check", type=int, default=64, help="images checked against the CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = sammed_fast.build_info()
    if not torch.cuda.is_available() or not info.get("cuda"):
        print(f"gpu_quick: needs a GPU and a CUDA build of sammed_fast._C, got {info}")
        return 1
    card = torch.cuda.get_device_name()
    print(f"gpu_quick on {card}, torch {torch.__version__}, build {info}")
    B, S = args.batch, args.size
    masks, probs = coarse_masks(B, S, seed=0)
    report: dict = {"card": card, "torch": torch.__version__, "batch": B, "size": S, "timings_ms": {}}

    correct = check_correctness(masks, probs, min(args.check, B))
    images = torch.rand(B, 1, S, S, device="cuda") * 255
    merged = OPS.merge_tiles(images, 2, list(public.SAM_PIXEL_MEAN), list(public.SAM_PIXEL_STD), torch.float32)
    want = reference.merge_tiles(images, 2, list(public.SAM_PIXEL_MEAN), list(public.SAM_PIXEL_STD), torch.float32)
    correct["merge_tiles"] = torch.equal(merged, want)
    logits = torch.randn(B, 1, 256, 256, device="cuda")
    for size in (None, (512, 512), (100, 90)):
        out_h, out_w = size or (0, 0)
        got = OPS.unmerge_tiles(logits, 2, out_h, out_w)
        ref = reference.unmerge_tiles(logits, 2, out_h, out_w)
        key = f"unmerge_tiles_{out_h}x{out_w}"
        same_shape = got.shape == ref.shape
        correct[key] = same_shape and torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
        report[f"{key}_bitwise_equal"] = same_shape and torch.equal(got, ref)
        report[f"{key}_max_abs_diff"] = float((got - ref).abs().max()) if same_shape else float("inf")
        print(f"     {key}: bitwise equal to F.interpolate {report[f'{key}_bitwise_equal']}, "
              f"max abs diff {report[f'{key}_max_abs_diff']:.3g}")
    report["correct"] = correct
    for name, ok in correct.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")

    t = report["timings_ms"]
    for c in (8, 4):
        t[f"label_components_c{c}"] = cuda_time_ms(lambda: OPS.label_components(masks, c))
        t[f"largest_component_c{c}"] = cuda_time_ms(lambda: OPS.largest_component(masks, c))
    for d in (4, 1):
        t[f"boxes_from_probs_d{d}_c4"] = cuda_time_ms(lambda: OPS.boxes_from_probs(probs, 0.75, d, 4, True))
    mean, std = list(public.SAM_PIXEL_MEAN), list(public.SAM_PIXEL_STD)
    t["merge_tiles_f32"] = cuda_time_ms(lambda: OPS.merge_tiles(images, 2, mean, std, torch.float32))
    copy_src = torch.empty_like(merged)
    t["copy_merge_output_bytes"] = cuda_time_ms(lambda: copy_src.clone())
    big_logits = torch.randn(B, 1, 2 * S, 2 * S, device="cuda")
    t["unmerge_tiles_copy"] = cuda_time_ms(lambda: OPS.unmerge_tiles(big_logits, 2, 0, 0))
    tile_bytes = torch.empty(B, 1, S, S, device="cuda")
    t["copy_unmerge_output_bytes"] = cuda_time_ms(lambda: tile_bytes.clone())
    t["unmerge_tiles_resize_256to512"] = cuda_time_ms(lambda: OPS.unmerge_tiles(logits, 2, S, S))
    t["torch_reference_unmerge_resize"] = cuda_time_ms(lambda: reference.unmerge_tiles(logits, 2, S, S))
    del big_logits

    try:
        import cupy
        from cupyx.scipy import ndimage as cndi
    except Exception as error:  # noqa: BLE001  (any import failure means: no cupy peer)
        report["cupy"] = f"unavailable: {error}"
    else:
        structure = cupy.asarray([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
        masks_cp = cupy.asarray(masks)

        def cupy_largest_loop() -> None:
            for b in range(B):
                labels, count = cndi.label(masks_cp[b], structure)
                if count == 0:
                    continue
                areas = cupy.bincount(labels.ravel())
                areas[0] = 0
                component = labels == int(areas.argmax())
                ys, xs = cupy.nonzero(component)
                _ = (xs.min(), ys.min(), xs.max(), ys.max())

        structure3d = cupy.zeros((3, 3, 3), dtype=structure.dtype)
        structure3d[1] = structure
        t["cupy_label_loop_largest_box_c4"] = wall_time_ms(cupy_largest_loop, iters=2)
        t["cupy_label_batched3d_only_c4"] = wall_time_ms(lambda: cndi.label(masks_cp, structure3d), iters=3)
        report["cupy"] = cupy.__version__

    for name, ms in t.items():
        print(f"{name:40s} {ms:9.3f} ms")
    lines = [
        f"card: {card}",
        f"correct: {all(correct.values())} ({sum(correct.values())}/{len(correct)})"
        + ("" if all(correct.values()) else f" FAILED: {[k for k, v in correct.items() if not v]}"),
        f"{B}x{S}^2 label c8 {t['label_components_c8']:.3f} ms, c4 {t['label_components_c4']:.3f} ms",
        f"{B}x{S}^2 largest c8 {t['largest_component_c8']:.3f} ms, c4 {t['largest_component_c4']:.3f} ms",
        f"boxes_from_probs d4 {t['boxes_from_probs_d4_c4']:.3f} ms, d1 {t['boxes_from_probs_d1_c4']:.3f} ms",
        f"merge {t['merge_tiles_f32']:.3f} ms vs copy {t['copy_merge_output_bytes']:.3f} ms "
        f"(x{t['merge_tiles_f32'] / t['copy_merge_output_bytes']:.2f}); unmerge {t['unmerge_tiles_copy']:.3f} ms "
        f"vs copy {t['copy_unmerge_output_bytes']:.3f} ms (x{t['unmerge_tiles_copy'] / t['copy_unmerge_output_bytes']:.2f})",
    ]
    if "cupy_label_loop_largest_box_c4" in t:
        speedup = t["cupy_label_loop_largest_box_c4"] / t["largest_component_c4"]
        lines.append(f"cupyx label loop (largest+box, c4) {t['cupy_label_loop_largest_box_c4']:.1f} ms "
                     f"-> x{speedup:.0f}; cupyx batched 3D label only {t['cupy_label_batched3d_only_c4']:.2f} ms")
    else:
        lines.append(f"cupy: {report['cupy']}")
    (args.out / "gpu_quick.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_quick_summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(correct.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
