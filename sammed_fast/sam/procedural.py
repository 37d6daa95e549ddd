"""Procedural box-prompt segmentation data for pretraining the compact SAM (never medical data).

Each image: a textured background, several overlapping objects (ellipses, Fourier blobs, convex
polygons) with their own intensity and texture, painted back to front with soft edges, then a bias
field, blur, noise and an intensity gamma. One visible object is the target; its prompt is its
bounding box with jitter. Everything is vectorised over the batch and drawn from a torch.Generator,
so a seed fixes the data.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

MAX_OBJECTS = 6


class ShapeBatch(NamedTuple):
    images: torch.Tensor  # (N,1,S,S) float32, z-scored per image
    masks: torch.Tensor  # (N,1,S,S) float32 {0,1}: the target object's visible part
    boxes: torch.Tensor  # (N,4) float32 xyxy prompt (jittered), pixel indices in the image frame
    tight_boxes: torch.Tensor  # (N,4) float32 xyxy inclusive box of the target mask


def _uniform(shape, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (high - low) + low


def _smooth_noise(n: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """(n,size,size) band-limited noise of about unit std: random cells upsampled bicubically."""
    coarse = torch.randn(n, 1, cells + 1, cells + 1, generator=g)
    coarse = coarse / coarse.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[:, 0]


def _texture(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n,size,size) random mix of coarse, medium and fine noise and oriented stripes."""
    xs = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(xs, xs, indexing="ij")
    angle = _uniform((n, 1, 1), 0, math.pi, g)
    freq = _uniform((n, 1, 1), 2, size / 6, g)
    phase = _uniform((n, 1, 1), 0, 2 * math.pi, g)
    stripes = torch.sin(2 * math.pi * freq * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
    parts = (
        _smooth_noise(n, size, 3, g),
        _smooth_noise(n, size, max(4, size // 8), g),
        _smooth_noise(n, size, max(8, size // 2), g),
        stripes * (torch.rand(n, 1, 1, generator=g) < 0.3),
    )
    weights = torch.rand(n, len(parts), generator=g) ** 2
    return sum(w.view(-1, 1, 1) * p for w, p in zip(weights.unbind(1), parts))


def _shapes(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Signed inside-distance (n,MAX_OBJECTS,size,size) in pixels (> 0 inside) of random shapes."""
    k = MAX_OBJECTS
    xs = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(xs, xs, indexing="ij")
    param = lambda low, high: _uniform((n, k, 1, 1), low, high, g)  # noqa: E731
    cx, cy = param(0.15, 0.85), param(0.15, 0.85)
    radius, aspect, rot = param(0.1, 0.32), param(0.4, 1.0), param(0, math.pi)
    dx, dy = x - cx, y - cy
    u = (dx * torch.cos(rot) + dy * torch.sin(rot)) / radius
    v = (-dx * torch.sin(rot) + dy * torch.cos(rot)) / (radius * aspect)
    rho, phi = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    # Boundary radius r(phi) of the unit shape: 1 (ellipse), a Fourier blob, or a regular polygon
    # (an affine image of one after the aspect scaling).
    blob = torch.ones_like(phi)
    for m in range(2, 6):
        blob = blob + param(0, 0.35 / m) * torch.cos(m * phi + param(0, 2 * math.pi))
    sides = torch.randint(3, 8, (n, k, 1, 1), generator=g).float()
    sector = 2 * math.pi / sides
    local = torch.remainder(phi - param(0, 2 * math.pi), sector) - sector / 2
    polygon = torch.cos(sector / 2) / torch.cos(local)
    kind = torch.randint(0, 3, (n, k, 1, 1), generator=g)
    boundary = torch.where(kind == 0, torch.ones_like(blob), torch.where(kind == 1, blob, polygon))
    return (boundary - rho) * radius * aspect * size


def generate(
    n: int, size: int, *, generator: torch.Generator, jitter: tuple[float, float] = (-0.1, 0.2)
) -> ShapeBatch:
    """n images of size x size with one target object each (see module docs).

    jitter: each box side moves outward by a uniform fraction in [jitter[0], jitter[1]] of the
    box's extent (negative shrinks it), plus up to 2 px; boxes stay inside the image.
    """
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
    g, k = generator, MAX_OBJECTS
    background = _uniform((n, 1, 1), -1, 1, g) + _uniform((n, 1, 1), 0.1, 0.8, g) * _texture(n, size, g)
    distance = _shapes(n, size, g)
    softness = _uniform((n, k, 1, 1), 0.3, 1.5, g)
    count = torch.randint(2, k + 1, (n, 1), generator=g)
    active = (torch.arange(k).view(1, k) < count).view(n, k, 1, 1)
    inside = (distance > 0) & active
    alpha = torch.sigmoid(distance / softness) * active

    # Objects differ from the background by a random contrast (sometimes low) and carry a texture.
    sign = torch.where(torch.rand(n, k, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    contrast = sign * _uniform((n, k, 1, 1), 0.15, 2.0, g)
    texture_amp = _uniform((n, k, 1, 1), 0.0, 0.6, g)
    textures = _texture(n * k, size, g).view(n, k, size, size)
    image = background
    for j in range(k):  # back to front; a loop over object slots, not over images
        obj = background.mean((1, 2), keepdim=True) + contrast[:, j] + texture_amp[:, j] * textures[:, j]
        image = image * (1 - alpha[:, j]) + obj * alpha[:, j]

    # Visible part of object j: inside it and inside no object painted after it.
    later = torch.flip(torch.cumsum(torch.flip(inside.int(), [1]), 1), [1]) - inside.int()
    visible = inside & (later == 0)
    # Targets: objects with at least 1.5% of the image visible and at most half of them hidden.
    area = visible.flatten(2).sum(2).float()
    whole = inside.flatten(2).sum(2).float()
    eligible = ((area >= 0.015 * size * size) & (area >= 0.5 * whole)).float()
    eligible = eligible + 1e-6 * active.view(n, k)  # never all zero: then any drawn object
    target = torch.multinomial(eligible, 1, generator=g).view(n)
    masks = visible[torch.arange(n), target].float().unsqueeze(1)

    image = image * (1 + 0.3 * _uniform((n, 1, 1), 0, 1, g) * _smooth_noise(n, size, 2, g))
    image = _blur(image.unsqueeze(1), _uniform((n,), 0.0, 1.2, g))
    noise_std = _uniform((n, 1, 1, 1), 0.0, 0.25, g) * image.flatten(1).std(1).view(-1, 1, 1, 1)
    image = image + noise_std * torch.randn(image.shape, generator=g)
    low = image.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = image.flatten(1).amax(1).view(-1, 1, 1, 1)
    gamma = torch.exp(_uniform((n, 1, 1, 1), -0.7, 0.7, g))
    image = ((image - low) / (high - low).clamp_min(1e-6)) ** gamma
    image = (image - image.mean((2, 3), keepdim=True)) / image.std((2, 3), keepdim=True).clamp_min(1e-6)

    tight = masks_to_boxes(masks[:, 0]) if n else torch.zeros(0, 4)
    extent = (tight[:, 2:] - tight[:, :2] + 1).repeat(1, 2)
    outward = _uniform((n, 4), *jitter, g) * extent + _uniform((n, 4), 0, 2, g)
    boxes = tight + outward * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    boxes = boxes.clamp(0, size - 1)
    # Keep each box valid (x0 <= x1) and containing at least the target's centre row/column.
    centre = (tight[:, :2] + tight[:, 2:]) / 2
    boxes[:, :2] = torch.minimum(boxes[:, :2], centre)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], centre)
    return ShapeBatch(image.float(), masks, boxes.float(), tight.float())


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (n,1,S,S) with a per-image sigma in pixels (0 = identity)."""
    n = images.shape[0]
    radius = 3
    taps = torch.arange(-radius, radius + 1).float()
    kernel = torch.exp(-0.5 * (taps / sigma.clamp_min(1e-3).view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    x = images.transpose(0, 1)  # (1,n,S,S): one group per image
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(n, 1, 1, -1), groups=n)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(n, 1, -1, 1), groups=n)
    return x.transpose(0, 1)


def ellipse_in_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N,4) inclusive xyxy boxes -> (N,1,size,size) float masks of the inscribed ellipses.

    A baseline: what the box alone is worth as a segmentation."""
    centre = torch.arange(size, dtype=torch.float32)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rx = ((boxes[:, 2] - boxes[:, 0] + 1) / 2).clamp_min(0.5)
    ry = ((boxes[:, 3] - boxes[:, 1] + 1) / 2).clamp_min(0.5)
    dx = (centre.view(1, 1, -1) - cx.view(-1, 1, 1)) / rx.view(-1, 1, 1)
    dy = (centre.view(1, -1, 1) - cy.view(-1, 1, 1)) / ry.view(-1, 1, 1)
    return (dx * dx + dy * dy <= 1).float().unsqueeze(1)
