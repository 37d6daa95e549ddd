"""Every CUDA op of sammed_fast once, on small odd-size inputs, checked against the CPU reference.

Run under compute-sanitizer (benchmarks/device_check.sh does): only sammed_fast kernels run on the
GPU (inputs are made on the CPU and copied, outputs are compared on the CPU), so the sanitizer's
report is about our kernels. Exit status 1 when an output differs from the reference.
"""
from __future__ import annotations

import sys

import torch

import sammed_fast
from sammed_fast.ops import reference

OPS = torch.ops.sammed_fast
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def main() -> int:
    info = sammed_fast.build_info()
    if not torch.cuda.is_available() or not info.get("cuda"):
        print(f"sanitizer_case: needs a GPU and a CUDA build of sammed_fast._C, got {info}")
        return 1
    generator = torch.Generator().manual_seed(0)
    failures: list[str] = []

    def check(name: str, ok: bool) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failures.append(name)

    for shape in [(3, 37, 53), (2, 1, 41), (2, 29, 1)]:
        masks = torch.rand(shape, generator=generator) < 0.45
        masks[-1] = False  # an empty image
        probs = torch.rand(shape, generator=generator)
        for connectivity in (4, 8):
            tag = f"{shape} c{connectivity}"
            labels = OPS.label_components(masks.cuda(), connectivity).cpu()
            check(f"label_components {tag}", torch.equal(labels, reference.label_components(masks, connectivity)))
            got = OPS.largest_component(masks.to(torch.uint8).cuda(), connectivity)
            want = reference.largest_component(masks, connectivity)
            check(f"largest_component {tag}", all(torch.equal(g.cpu(), w) for g, w in zip(got, want)))
            for downscale in (1, 4):
                got = OPS.boxes_from_probs(probs.cuda(), 0.5, downscale, connectivity, downscale == 1)
                want = reference.boxes_from_probs(probs, 0.5, downscale, connectivity, downscale == 1)
                same = torch.equal(got[1].cpu(), want[1]) and torch.allclose(
                    got[0].cpu(), want[0], equal_nan=True, atol=0, rtol=0)
                check(f"boxes_from_probs {tag} d{downscale}", same)

    for channels, dtype in [(1, torch.float32), (3, torch.uint8)]:
        images = (torch.rand(5, channels, 37, 53, generator=generator) * 255).to(dtype)
        for out_dtype in (torch.float32, torch.float16):
            got = OPS.merge_tiles(images.cuda(), 2, MEAN, STD, out_dtype).cpu()
            want = reference.merge_tiles(images, 2, MEAN, STD, out_dtype)
            check(f"merge_tiles C{channels} {dtype} -> {out_dtype}", torch.equal(got, want))

    logits = torch.randn(5, 1, 74, 106, generator=generator)
    check("unmerge_tiles copy", torch.equal(OPS.unmerge_tiles(logits.cuda(), 2, 0, 0).cpu(),
                                            reference.unmerge_tiles(logits, 2, 0, 0)))
    for out_h, out_w in [(64, 48), (80, 131)]:
        got = OPS.unmerge_tiles(logits.cuda(), 2, out_h, out_w).cpu()
        want = reference.unmerge_tiles(logits, 2, out_h, out_w)
        check(f"unmerge_tiles resize {out_h}x{out_w}", torch.allclose(got, want, atol=1e-5, rtol=1e-5))
    torch.cuda.synchronize()
    print(f"sanitizer_case: {len(failures)} mismatches" + (f": {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
