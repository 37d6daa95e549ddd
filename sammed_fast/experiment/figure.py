"""figure.png, like the paper's qualitative figure: for a few target slices, the image with the
filtered box (yellow) and the ground-truth box (green, dashed), the segmenter's coarse mask, the
final mask (SAM + filtered box) and the ground truth."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sammed_fast.atomic import write_bytes_atomic
from sammed_fast.experiment.evaluation import FigureSample
from sammed_fast.metrics import dice
from sammed_fast.plotting import image_panel, new_figure, png_bytes

__all__ = ["write_figure"]

COLUMNS = ("image", "coarse mask", "final mask", "ground truth")


def _dice(pred, truth) -> float:
    return float(dice(pred[None], truth[None])[0])


#: How the image column draws each prompt kind's box.
BOX_STYLES = {"filtered": ("yellow", "-"), "gt": ("lime", "--")}


def _draw_boxes(ax, boxes: dict) -> None:
    """Outlines the slice's boxes (volume pixel frame, inclusive) on the image axis."""
    from matplotlib.patches import Rectangle

    for kind, box in boxes.items():
        if box is None or kind not in BOX_STYLES:
            continue
        colour, style = BOX_STYLES[kind]
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                               edgecolor=colour, linestyle=style, linewidth=1, label=kind))


def write_figure(path: Path, samples: Sequence[FigureSample]) -> None:
    """Draws one row per sample (masks in colour over the image, 2D Dice in the titles)."""
    rows = max(1, len(samples))
    fig = new_figure((2.4 * len(COLUMNS), 2.5 * rows))
    axes = fig.subplots(rows, len(COLUMNS), squeeze=False)
    for r, sample in enumerate(samples):
        image = sample.image.float().numpy()
        low, high = np.percentile(image, [0.5, 99.5])
        masks = (None, sample.coarse, sample.final, sample.truth)
        titles = (f"{sample.domain} {sample.case_id} slice {sample.slice_index}",
                  f"coarse, Dice {100 * _dice(sample.coarse, sample.truth):.1f}",
                  f"final, Dice {100 * _dice(sample.final, sample.truth):.1f}",
                  "ground truth")
        for ax, mask, title in zip(axes[r], masks, titles):
            image_panel(ax, image, title=title, vmin=low, vmax=high, interpolation="nearest")
            if mask is not None:
                overlay = np.zeros((*mask.shape, 4))
                overlay[mask.numpy()] = (1.0, 0.2, 0.1, 0.45)
                ax.imshow(overlay, interpolation="nearest")
            else:
                _draw_boxes(ax, sample.boxes)
    for ax, name in zip(axes[0], COLUMNS):
        ax.text(0.5, 1.18, name, transform=ax.transAxes, ha="center", fontsize=9, weight="bold")
    if not samples:
        axes[0, 0].text(0.5, 0.5, "no target slices", ha="center")
    fig.tight_layout()
    write_bytes_atomic(Path(path), png_bytes(fig, dpi=100))
