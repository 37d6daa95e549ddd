"""Procedural box-prompt segmentation data for pretraining the compact SAM (never medical data).

Training family (``generate``): a textured background, several overlapping objects (ellipses,
Fourier blobs, convex polygons; some made of two touching parts of different brightness) of every
size, with their own intensity (sometimes barely above the background) and texture, painted back to
front with soft edges, then a bias field, blur, noise and an intensity gamma. One visible object
(or several: ``targets``) is the target; its prompt box is noised as SAM's training boxes were
(``BoxNoise``: about 10% of the box side per side, shifts, and some loose or truncated boxes).

Held-out family (``generate_polygons_and_blobs``): star-shaped random polygons (concave) and blobs
cut from a thresholded random field, on a differently made background; pretraining never draws it.
Evaluation boxes come from ``tight_boxes`` and ``perturb_boxes``, which are exact (no randomness).

Everything is vectorised over the batch and drawn from a torch.Generator, so a seed fixes the data.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

from sammed_fast.data.filters import gaussian_blur

MAX_OBJECTS = 6
MIN_TARGET_AREA = 0.008  # fraction of the image: a 64 px tile keeps targets from about 6 px across


class ShapeBatch(NamedTuple):
    """N images with T targets each (T = 1 unless asked for); target j of image i is row i*T + j."""

    images: torch.Tensor  # (N,1,S,S) float32, z-scored per image
    masks: torch.Tensor  # (N*T,1,S,S) float32 {0,1}: the target object's visible part
    boxes: torch.Tensor  # (N*T,4) float32 xyxy prompt (noised), pixel indices in the image frame
    tight_boxes: torch.Tensor  # (N*T,4) float32 xyxy inclusive box of the target mask


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoxNoise:
    """How training prompt boxes depart from the tight box; fractions are of the box's own side.

    Each box is one of four kinds, drawn with these probabilities (the rest: ``jittered``):
    exact (the tight box), loose (every side outward by loose_range), truncated (one or two sides
    inward by truncate_range, cutting off part of the object; the mask stays the whole object) and
    jittered: every side moves by N(0, sigma^2) with sigma ~ U(0, side_sigma), plus a shift of the
    whole box by N(0, shift_sigma^2) per axis; offsets are clipped to +-max_offset.
    """

    exact: float = 0.3
    loose: float = 0.1
    truncated: float = 0.06
    side_sigma: float = 0.12
    shift_sigma: float = 0.05
    max_offset: float = 0.35
    loose_range: tuple[float, float] = (0.2, 1.2)
    truncate_range: tuple[float, float] = (0.1, 0.35)

    def __post_init__(self) -> None:
        if min(self.exact, self.loose, self.truncated) < 0 or self.exact + self.loose + self.truncated > 1:
            raise ValueError("BoxNoise probabilities must be >= 0 and sum to at most 1")


NO_BOX_NOISE = BoxNoise(exact=1.0, loose=0.0, truncated=0.0)


def _uniform(shape, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (high - low) + low


def _log_uniform(shape, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.exp(_uniform(shape, math.log(low), math.log(high), g))


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y, x), each (size,size) in (0,1)."""
    xs = (torch.arange(size) + 0.5) / size
    return torch.meshgrid(xs, xs, indexing="ij")


def _smooth_noise(n: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """(n,size,size) band-limited noise of about unit std: random cells upsampled bicubically."""
    coarse = torch.randn(n, 1, cells + 1, cells + 1, generator=g)
    coarse = coarse / coarse.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[:, 0]


def _texture(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n,size,size) random mix of coarse, medium and fine noise and oriented stripes."""
    y, x = _grid(size)
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


def _shapes(cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Signed inside-distance (n,k,size,size) in pixels (> 0 inside) of random shapes centred at
    (cx, cy) with mean radius ``radius`` (all (n,k,1,1), fractions of the image side)."""
    n, k = cx.shape[:2]
    y, x = _grid(size)
    param = lambda low, high: _uniform((n, k, 1, 1), low, high, g)  # noqa: E731
    aspect, rot = param(0.4, 1.0), param(0, math.pi)
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


def _composite_objects(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed distances of MAX_OBJECTS objects and of their second parts, each (n,k,size,size).

    Object radii are log-uniform (every size, small ones common). About a third of the objects get a
    second part, a smaller shape centred near the main shape's rim so that the two touch; the parts
    of other objects are empty (distance -inf)."""
    k = MAX_OBJECTS
    radius = _log_uniform((n, k, 1, 1), 0.06, 0.36, g)
    cx, cy = _uniform((n, k, 1, 1), 0.12, 0.88, g), _uniform((n, k, 1, 1), 0.12, 0.88, g)
    main = _shapes(cx, cy, radius, size, g)
    angle = _uniform((n, k, 1, 1), 0, 2 * math.pi, g)
    reach = radius * _uniform((n, k, 1, 1), 0.6, 1.1, g)
    part_radius = radius * _uniform((n, k, 1, 1), 0.35, 0.8, g)
    part = _shapes(cx + reach * torch.cos(angle), cy + reach * torch.sin(angle), part_radius, size, g)
    has_part = torch.rand(n, k, 1, 1, generator=g) < 0.35
    return main, torch.where(has_part, part, torch.full_like(part, -math.inf))


def _finish(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Bias field, blur, noise, gamma, z-score: (n,S,S) raw intensities -> (n,1,S,S) float32."""
    n, size = image.shape[0], image.shape[-1]
    image = image * (1 + 0.3 * _uniform((n, 1, 1), 0, 1, g) * _smooth_noise(n, size, 2, g))
    image = gaussian_blur(image.unsqueeze(1), _uniform((n,), 0.0, 1.2, g), radius=3, padding="replicate")
    noise_std = _uniform((n, 1, 1, 1), 0.0, 0.25, g) * image.flatten(1).std(1).view(-1, 1, 1, 1)
    image = image + noise_std * torch.randn(image.shape, generator=g)
    low = image.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = image.flatten(1).amax(1).view(-1, 1, 1, 1)
    gamma = torch.exp(_uniform((n, 1, 1, 1), -0.7, 0.7, g))
    image = ((image - low) / (high - low).clamp_min(1e-6)) ** gamma
    return ((image - image.mean((2, 3), keepdim=True)) / image.std((2, 3), keepdim=True).clamp_min(1e-6)).float()


def _pick_targets(inside: torch.Tensor, active: torch.Tensor, g: torch.Generator, *,
                  fallback_visible: bool = False, targets: int = 1) -> torch.Tensor:
    """(n,k,S,S) bool object supports painted in slot order, (n,k) bool -> (n*targets,1,S,S) float
    masks of visible objects, ``targets`` per image (rows i*targets + j): at least MIN_TARGET_AREA
    of the image visible and at most half of it hidden, distinct while the image has enough such
    objects. When none qualifies: any drawn object, or with fallback_visible any object with a
    visible pixel (never an empty mask when the last drawn object is non-empty)."""
    n, size = inside.shape[0], inside.shape[-1]
    later = torch.flip(torch.cumsum(torch.flip(inside.int(), [1]), 1), [1]) - inside.int()
    visible = inside & (later == 0)
    area = visible.flatten(2).sum(2).float()
    whole = inside.flatten(2).sum(2).float()
    eligible = ((area >= MIN_TARGET_AREA * size * size) & (area >= 0.5 * whole)).float()
    fallback = (area > 0) & active if fallback_visible else active
    eligible = eligible + 1e-6 * fallback.float()  # never all zero: then any drawn (visible) object
    if targets == 1:
        target = torch.multinomial(eligible, 1, generator=g).view(n)
        return visible[torch.arange(n), target].float().unsqueeze(1)
    # Distinct objects first (a weighted random order from Gumbel keys, so eligible objects come
    # ahead of fallbacks), then repeats of them.
    order = torch.argsort(torch.log(eligible) - torch.log(-torch.log(torch.rand(eligible.shape, generator=g))),
                          dim=1, descending=True)
    usable = (eligible >= 1).sum(1).clamp_min(1)
    column = torch.arange(targets).view(1, -1) % usable.view(-1, 1)
    target = torch.gather(order, 1, column)  # (n, targets)
    rows = torch.arange(n).view(-1, 1).expand(n, targets)
    return visible[rows.reshape(-1), target.reshape(-1)].float().unsqueeze(1)


def generate(n: int, size: int, *, generator: torch.Generator, box_noise: BoxNoise = BoxNoise(),
             targets: int = 1) -> ShapeBatch:
    """n training-family images of size x size with ``targets`` target objects each (see module
    docs and ShapeBatch); ``boxes`` are the tight boxes noised by ``box_noise`` (NO_BOX_NOISE:
    exactly the tight box). targets=1 draws exactly what it drew before the option existed."""
    if n < 0 or size < 16 or targets < 1:
        raise ValueError(f"need n >= 0, size >= 16 and targets >= 1, got n={n}, size={size}, targets={targets}")
    g, k = generator, MAX_OBJECTS
    background = _uniform((n, 1, 1), -1, 1, g) + _uniform((n, 1, 1), 0.1, 0.8, g) * _texture(n, size, g)
    main, part = _composite_objects(n, size, g)
    count = torch.randint(1, k + 1, (n, 1), generator=g)
    active = torch.arange(k).view(1, k) < count
    slot_on = active.view(n, k, 1, 1)
    inside = ((main > 0) | (part > 0)) & slot_on
    softness = _uniform((n, k, 1, 1), 0.3, 1.5, g)
    alpha_main = torch.sigmoid(main / softness) * slot_on
    alpha_part = torch.sigmoid(part / softness) * slot_on

    # Objects differ from the background by a log-uniform contrast (often low) and carry a texture;
    # a second part differs from its main shape by its own offset (sometimes none).
    sign = torch.where(torch.rand(n, k, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    contrast = sign * _log_uniform((n, k, 1, 1), 0.12, 2.0, g)
    part_offset = _uniform((n, k, 1, 1), -0.8, 0.8, g) * (torch.rand(n, k, 1, 1, generator=g) < 0.7)
    texture_amp = _uniform((n, k, 1, 1), 0.0, 0.6, g)
    textures = _texture(n * k, size, g).view(n, k, size, size)
    image = background
    level = background.mean((1, 2), keepdim=True)
    for j in range(k):  # back to front; a loop over object slots, not over images
        obj = level + contrast[:, j] + texture_amp[:, j] * textures[:, j]
        image = image * (1 - alpha_main[:, j]) + obj * alpha_main[:, j]
        image = image * (1 - alpha_part[:, j]) + (obj + part_offset[:, j]) * alpha_part[:, j]
    masks = _pick_targets(inside, active, g, targets=targets)
    image = _finish(image, g)
    tight = masks_to_boxes(masks[:, 0]) if n else torch.zeros(0, 4)
    return ShapeBatch(image, masks, noisy_boxes(tight, size, box_noise, g), tight.float())


def generate_polygons_and_blobs(n: int, size: int, *, generator: torch.Generator) -> ShapeBatch:
    """n held-out-family images (never used for pretraining); ``boxes`` equal ``tight_boxes``.

    Objects: star-shaped random polygons (8 vertices at random angles and radii, so mostly concave,
    hard edges) and blobs cut from a thresholded smooth random field (the component around a seed point);
    background: a linear ramp plus Gaussian spots; 1-4 objects painted back to front.
    """
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
    g, k = generator, 4
    y, x = _grid(size)
    param = lambda low, high: _uniform((n, k, 1, 1), low, high, g)  # noqa: E731
    cx, cy, radius = param(0.15, 0.85), param(0.15, 0.85), _log_uniform((n, k, 1, 1), 0.07, 0.3, g)
    polygon = _star_polygons(n, k, size, (x - cx) / radius, (y - cy) / radius, g)
    rho = torch.sqrt(((x - cx) / radius) ** 2 + ((y - cy) / radius) ** 2)
    # Blob: the part of a thresholded smooth field (high at the centre) within 1.6 radii.
    field = _smooth_noise(n * k, size, 5, g).view(n, k, size, size) + 1.5 * (1 - rho ** 2)
    blob = ((field > _uniform((n, k, 1, 1), 0.6, 1.2, g)) | (rho < 0.35)) & (rho < 1.6)
    is_blob = torch.rand(n, k, 1, 1, generator=g) < 0.5
    active = torch.arange(k).view(1, k) < torch.randint(1, k + 1, (n, 1), generator=g)
    inside = torch.where(is_blob, blob, polygon) & active.view(n, k, 1, 1)

    ramp = param(-1, 1)[:, 0] * x + param(-1, 1)[:, 0] * y
    spots = sum(_uniform((n, 1, 1), -0.6, 0.6, g) * torch.exp(
        -((x - _uniform((n, 1, 1), 0, 1, g)) ** 2 + (y - _uniform((n, 1, 1), 0, 1, g)) ** 2)
        / (2 * _uniform((n, 1, 1), 0.03, 0.2, g) ** 2)) for _ in range(3))
    image = ramp + spots
    sign = torch.where(torch.rand(n, k, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    contrast = sign * _uniform((n, k, 1, 1), 0.25, 1.5, g)
    for j in range(k):
        image = torch.where(inside[:, j], image.mean((1, 2), keepdim=True) + contrast[:, j], image)
    masks = _pick_targets(inside, active, g, fallback_visible=True)
    image = _finish(image, g)
    tight = masks_to_boxes(masks[:, 0]) if n else torch.zeros(0, 4)
    return ShapeBatch(image, masks, tight.float(), tight.float())


def _star_polygons(n: int, k: int, size: int, u: torch.Tensor, v: torch.Tensor, g: torch.Generator,
                   vertices: int = 8) -> torch.Tensor:
    """(n,k,size,size) bool insides of star polygons around the origin of the unit frame (u, v)
    (each (n,k,size,size)): vertices at random angles (every gap under pi, so the origin sees every
    edge) and radii in [0.45, 1]; straight edges between consecutive vertices."""
    gaps = _uniform((n, k, vertices), 0.4, 1.6, g)
    angles = torch.cumsum(gaps, -1) / gaps.sum(-1, keepdim=True) * 2 * math.pi + _uniform((n, k, 1), 0, 2 * math.pi, g)
    angles = torch.remainder(angles, 2 * math.pi)
    angles, order = torch.sort(angles, -1)
    radii = torch.gather(_uniform((n, k, vertices), 0.3, 1.0, g), -1, order)
    rho, phi = torch.sqrt(u * u + v * v).flatten(-2), torch.remainder(torch.atan2(v, u), 2 * math.pi).flatten(-2)
    # Edge i runs from vertex i-1 to vertex i (vertex -1 = the last, one turn back).
    index = torch.searchsorted(angles.contiguous(), phi.contiguous())  # (n,k,P) in [0, vertices]
    before = torch.cat([angles[..., -1:] - 2 * math.pi, angles, angles[..., :1] + 2 * math.pi], -1)
    before_r = torch.cat([radii[..., -1:], radii, radii[..., :1]], -1)
    a0, a1 = torch.gather(before, -1, index), torch.gather(before, -1, index + 1)
    r0, r1 = torch.gather(before_r, -1, index), torch.gather(before_r, -1, index + 1)
    p0x, p0y, ex, ey = r0 * torch.cos(a0), r0 * torch.sin(a0), r1 * torch.cos(a1) - r0 * torch.cos(a0), r1 * torch.sin(a1) - r0 * torch.sin(a0)
    # Ray from the origin at angle phi meets the edge at t = (p0 x e) / (dir x e).
    denominator = torch.cos(phi) * ey - torch.sin(phi) * ex
    boundary = (p0x * ey - p0y * ex) / torch.where(denominator.abs() < 1e-9, torch.full_like(denominator, 1e-9), denominator)
    return (rho < boundary).view(n, k, size, size)


def noisy_boxes(tight: torch.Tensor, size: int, noise: BoxNoise, g: torch.Generator) -> torch.Tensor:
    """(N,4) inclusive tight xyxy boxes -> prompt boxes noised per ``noise`` (see BoxNoise), inside
    the image, at least 1 px wide and high. Draws from ``g`` for every N (also exact boxes)."""
    n = tight.shape[0]
    extent = (tight[:, 2:] - tight[:, :2] + 1).repeat(1, 2)  # (N,4): width, height, width, height
    outward_sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    kind = torch.rand(n, 1, generator=g)
    is_exact = kind < noise.exact
    is_loose = (kind >= noise.exact) & (kind < noise.exact + noise.loose)
    is_truncated = (kind >= noise.exact + noise.loose) & (kind < noise.exact + noise.loose + noise.truncated)
    sigma = _uniform((n, 1), 0, noise.side_sigma, g)
    jitter = sigma * torch.randn(n, 4, generator=g) * outward_sign  # outward-positive, then signed
    shift = noise.shift_sigma * torch.randn(n, 2, generator=g).repeat(1, 2)
    offset = (jitter + shift).clamp(-noise.max_offset, noise.max_offset)
    loose = _uniform((n, 4), *noise.loose_range, g) * outward_sign
    cut_sides = torch.rand(n, 4, generator=g).argsort(1) < torch.randint(1, 3, (n, 1), generator=g)
    truncate = -_uniform((n, 4), *noise.truncate_range, g) * cut_sides * outward_sign
    offset = torch.where(is_loose, loose, torch.where(is_truncated, truncate, offset))
    offset = torch.where(is_exact, torch.zeros_like(offset), offset)
    return _clamp_boxes(tight + offset * extent, size)


def perturb_boxes(tight: torch.Tensor, size: int, *, loosen: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Exact evaluation boxes: every side of (N,4) xyxy boxes moves outward by ``loosen`` x its
    side, then the box moves by ``shift`` = (dx, dy) x (width, height); clamped to the image."""
    extent = (tight[:, 2:] - tight[:, :2] + 1).repeat(1, 2)
    moved = tight + extent * (loosen * torch.tensor([-1.0, -1.0, 1.0, 1.0]) + torch.tensor([*shift, *shift]))
    return _clamp_boxes(moved, size)


def _clamp_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Boxes inside [0, size-1], with x1 >= x0 + 1 and y1 >= y0 + 1."""
    boxes = boxes.clamp(0, size - 1)
    low = torch.minimum(boxes[:, :2], boxes[:, 2:]).clamp(max=size - 2)
    high = torch.maximum(torch.maximum(boxes[:, :2], boxes[:, 2:]), low + 1)
    return torch.cat([low, high], 1).float()
