"""Headless matplotlib figures as PNG bytes (no pyplot, no global backend switch), and the panel
every figure of the package draws: a grey image with an optional red mask contour."""
from __future__ import annotations

import io

import numpy as np

__all__ = ["new_figure", "png_bytes", "image_panel"]


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on its own Agg canvas (thread-safe, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, *, dpi: int) -> bytes:
    """The figure as PNG bytes, without the 'Software' text chunk (matplotlib's version string), so
    the same drawing gives the same bytes under another matplotlib release that renders alike."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def image_panel(ax, image: np.ndarray, contour: np.ndarray | None = None, *, title: str | None = None,
                vmin: float | None = None, vmax: float | None = None, interpolation: str | None = None,
                linewidth: float = 1.0) -> None:
    """Draws ``image`` in grey (vmin/vmax: the grey range, default the image's own) with the 0.5
    contour of ``contour`` in red when it has any foreground, a small title, and no axes."""
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation=interpolation)
    if contour is not None and contour.any():
        ax.contour(contour, levels=[0.5], colors="red", linewidths=linewidth)
    if title:
        ax.set_title(title, fontsize=8)
    ax.axis("off")
