"""Image filters shared by the data generators (the synthetic prostate set, the procedural shapes)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur"]


def gaussian_blur(images: torch.Tensor, sigma: float | torch.Tensor, *, radius: int | None = None,
                  padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (n,1,H,W) images, each image on its own.

    sigma: in pixels; one float for every image (<= 0: the images come back unchanged), or an (n,)
    tensor, one per image (clamped at 1e-3, so 0 leaves an image as it is up to rounding).
    radius: taps on each side of the centre; default ceil(3 sigma), at least 1 (for a tensor: of its
    largest sigma). padding: the F.pad mode at the borders ("reflect", "replicate").
    """
    if isinstance(sigma, torch.Tensor):
        sigmas = sigma.clamp_min(1e-3).view(-1, 1)
        if radius is None:
            radius = max(1, math.ceil(3 * float(sigmas.max())))
    else:
        if sigma <= 0:
            return images
        if radius is None:
            radius = max(1, math.ceil(3 * sigma))
        sigmas = torch.tensor([[sigma]], dtype=images.dtype)
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigmas) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    k = kernel.shape[0]
    # One kernel: the images are the batch. One kernel per image: (1,n,H,W), one group per image.
    x = images if k == 1 else images.transpose(0, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=padding), kernel.view(k, 1, 1, -1), groups=k)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=padding), kernel.view(k, 1, -1, 1), groups=k)
    return x if k == 1 else x.transpose(0, 1)
