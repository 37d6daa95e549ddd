"""Where the stand-in SAM loses on held-out procedural shapes: Dice by boundary contrast.

    python benchmarks/standin_boundaries.py [--weights FILE] [--images 512]

For each held-out family (the images of the sidecar's held-out protocol) and exact ground-truth
boxes, prints the Dice per image by quartile of the boundary's contrast-to-noise ratio: the
difference of the mean intensities in the 2 px bands inside and outside the object's boundary over
their pooled standard deviation. docs/standin.md quotes its output.
"""
from __future__ import annotations

import argparse
from itertools import pairwise

import torch
import torch.nn.functional as F

from sammed_fast.experiment import pretraining
from sammed_fast.metrics import dice
from sammed_fast.models import TiledSam, build_sam

TILE = 64
SEED = pretraining.PretrainConfig().seed + pretraining.HELDOUT_SEED_OFFSET  # the sidecar's held-out images


def boundary_contrast(images: torch.Tensor, masks: torch.Tensor, band: int = 2) -> torch.Tensor:
    """(N,1,S,S) images and {0,1} masks -> (N,) |mean inside band - mean outside band| / pooled std."""
    width = 2 * band + 1
    eroded = 1 - F.max_pool2d(1 - masks, width, 1, band)
    inside, outside = masks - eroded, F.max_pool2d(masks, width, 1, band) - masks

    def mean_var(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = weight.sum((1, 2, 3)).clamp_min(1)
        mean = (images * weight).sum((1, 2, 3)) / count
        return mean, ((images - mean.view(-1, 1, 1, 1)) ** 2 * weight).sum((1, 2, 3)) / count

    (mean_in, var_in), (mean_out, var_out) = mean_var(inside), mean_var(outside)
    return (mean_in - mean_out).abs() / torch.sqrt((var_in + var_out) / 2).clamp_min(1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(pretraining.shipped_checkpoint_path(TILE)),
                        help="compact SAM for tile size 64 (default: the shipped stand-in)")
    parser.add_argument("--images", type=int, default=512, help="held-out images per family")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = TiledSam(sam=build_sam("compact", checkpoint=args.weights, canvas_size=2 * TILE), tile_size=TILE)
    for index, (family, make) in enumerate(pretraining.HELDOUT_FAMILIES.items()):
        data = make(args.images, TILE, torch.Generator().manual_seed(SEED + index))
        with torch.no_grad():
            logits = model.eval().decode(model.encode(data.images), data.tight_boxes)
        scores = dice((logits > 0).float(), data.masks).float().flatten()
        contrast = boundary_contrast(data.images, data.masks)
        edges = [0.0, *torch.quantile(contrast, torch.tensor([0.25, 0.5, 0.75])).tolist(), float("inf")]
        print(f"{family}: Dice {scores.mean():.3f} with exact boxes ({args.images} images)")
        for low, high in pairwise(edges):
            chosen = (contrast >= low) & (contrast < high)
            print(f"  boundary contrast {low:5.2f} - {high:5.2f}: Dice {scores[chosen].mean():.3f} "
                  f"({int(chosen.sum())} images)")


if __name__ == "__main__":
    main()
