"""figure.png, like the paper's qualitative figure: for a few target slices, the image, the
segmenter's coarse mask, the final mask (SAM + filtered box) and the ground truth."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from sammed_fast.atomic import write_bytes_atomic
from sammed_fast.engine.evaluation import FigureSample
from sammed_fast.metrics import dice

__all__ = ["write_figure"]

COLUMNS = ("image", "coarse mask", "final mask", "ground truth")


def _dice(pred, truth) -> float:
    return float(dice(pred[None], truth[None])[0])


def write_figure(path: Path, samples: Sequence[FigureSample]) -> None:
    """Draws one row per sample (masks in colour over the image, 2D Dice in the titles)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(samples))
    fig = Figure(figsize=(2.4 * len(COLUMNS), 2.5 * rows))
    FigureCanvasAgg(fig)
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
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            if mask is not None:
                overlay = np.zeros((*mask.shape, 4))
                overlay[mask.numpy()] = (1.0, 0.2, 0.1, 0.45)
                ax.imshow(overlay, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    for ax, name in zip(axes[0], COLUMNS):
        ax.text(0.5, 1.18, name, transform=ax.transAxes, ha="center", fontsize=9, weight="bold")
    if not samples:
        axes[0, 0].text(0.5, 0.5, "no target slices", ha="center")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    write_bytes_atomic(Path(path), buffer.getvalue())
