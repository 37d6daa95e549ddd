"""Where the stand-in SAM loses on held-out procedural shapes: Dice by boundary contrast and kind.

    python benchmarks/standin_boundaries.py [--weights FILE] [--images 512]

For each held-out family (the images of the sidecar's held-out protocol) and exact ground-truth
boxes, prints the Dice per image by quartile of the boundary's contrast-to-noise ratio: the
difference of the mean intensities in the 2 px bands inside and outside the object's boundary over
their pooled standard deviation. For the training family it then splits the same images by what the
generator drew for each target: a second part of another brightness, partly hidden behind a later
object, and the boundary's contrast in the image before blur and noise (its texture only).
docs/standin.md quotes its output.
"""
from __future__ import annotations

import argparse
from itertools import pairwise
from unittest import mock

import torch
import torch.nn.functional as F

from sammed_fast.data import procedural
from sammed_fast.experiment import pretraining
from sammed_fast.method.prompts import ellipse_in_boxes
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


def training_family_with_attributes(n: int, generator_seed: int) -> tuple[procedural.ShapeBatch, dict]:
    """The held-out training-family batch and, per target, what the generator drew: "second part"
    (bool), "hidden" (fraction of the object behind later ones) and "clean contrast" (boundary
    contrast before bias field, blur, noise and gamma). The generator's private steps are wrapped
    only to record their results; the batch is checked against an unwrapped draw."""
    seen: dict = {}

    def recorder(name, function):
        def wrapped(*args, **kwargs):
            seen[name] = (args, function(*args, **kwargs))
            return seen[name][1]
        return wrapped

    with (mock.patch.object(procedural, "_composite_objects", recorder("objects", procedural._composite_objects)),
          mock.patch.object(procedural, "_pick_targets", recorder("targets", procedural._pick_targets)),
          mock.patch.object(procedural, "_finish", recorder("finish", procedural._finish))):
        data = pretraining.HELDOUT_FAMILIES["training_family"](n, TILE, torch.Generator().manual_seed(generator_seed))
    plain = pretraining.HELDOUT_FAMILIES["training_family"](n, TILE, torch.Generator().manual_seed(generator_seed))
    if not (torch.equal(plain.images, data.images) and torch.equal(plain.masks, data.masks)):
        raise RuntimeError("recording the generator changed its draws")
    inside = seen["targets"][0][0]  # (n,k,S,S) object supports in painting order
    hidden_by_later = torch.flip(torch.cumsum(torch.flip(inside.int(), [1]), 1), [1]) > inside.int()
    visible = inside & ~hidden_by_later
    target = (visible == data.masks.bool()).flatten(2).all(2).float().argmax(1)  # object slot per target
    rows = torch.arange(n)
    second_part = seen["objects"][1][1][rows, target].flatten(1).amax(1) > 0
    hidden = 1 - data.masks.flatten(1).sum(1) / inside[rows, target].flatten(1).sum(1).clamp_min(1)
    clean = seen["finish"][0][0].unsqueeze(1)
    clean = (clean - clean.mean((2, 3), keepdim=True)) / clean.std((2, 3), keepdim=True).clamp_min(1e-6)
    return data, {"second part": second_part, "hidden": hidden,
                  "clean contrast": boundary_contrast(clean, data.masks)}


def print_by_kind(scores: torch.Tensor, ellipse: torch.Tensor, drawn: dict, contrast: torch.Tensor) -> None:
    """Dice of the model and of the ellipse inscribed in the box, (N,) each, per group of targets."""
    simple = ~drawn["second part"] & (drawn["hidden"] == 0)
    groups = {
        "one part, nothing hidden": simple,
        "with a second part": drawn["second part"],
        "partly hidden": drawn["hidden"] > 0,
        "more than 20% hidden": drawn["hidden"] > 0.2,
        **{f"clean-image boundary contrast {low:g} - {high:g}": (drawn["clean contrast"] >= low)
           & (drawn["clean contrast"] < high) for low, high in ((0, 1), (1, 2), (2, float("inf")))},
        "one part, nothing hidden, contrast in the image >= 2": simple & (contrast >= 2),
    }
    print("  by what the generator drew (model / ellipse inscribed in the box):")
    for name, chosen in groups.items():
        print(f"    {name}: Dice {scores[chosen].mean():.3f} / {ellipse[chosen].mean():.3f} "
              f"({int(chosen.sum())} images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(pretraining.shipped_checkpoint_path(TILE)),
                        help="compact SAM for tile size 64 (default: the shipped stand-in)")
    parser.add_argument("--images", type=int, default=512, help="held-out images per family")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = TiledSam(sam=build_sam("compact", checkpoint=args.weights, canvas_size=2 * TILE), tile_size=TILE)
    for index, (family, make) in enumerate(pretraining.HELDOUT_FAMILIES.items()):
        drawn = None
        if family == "training_family":
            data, drawn = training_family_with_attributes(args.images, SEED + index)
        else:
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
        if drawn is not None:
            ellipse = dice(ellipse_in_boxes(data.tight_boxes, TILE), data.masks).float().flatten()
            print_by_kind(scores, ellipse, drawn, contrast)


if __name__ == "__main__":
    main()
