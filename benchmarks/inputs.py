"""Deterministic benchmark inputs: coarse-mask-like images, uniform noise, coarse probabilities.

Every generator is fully vectorised over the batch and returns a cached numpy array that several
benchmark cases share: never write into it (it stays writable because cc3d's Cython interface
rejects read-only buffers). Sizes are (B, S) for B images of S x S pixels.

* ``coarse_masks``: what a coarse segmenter's thresholded output looks like: one large filled
  ellipse (random centre, axes 18-30% of the side, random angle) plus small noise specks
  (3x3 squares and single pixels, about 1 speck per 1500 pixels) scattered over the image.
* ``noise_masks``: i.i.d. pixels at 50% density, the adversarial case (many small components;
  below the 4-connectivity percolation threshold, above the 8-connectivity one).
* ``coarse_probs``: probabilities whose ``> 0.75`` set resembles ``coarse_masks``: a soft ellipse
  (a sigmoid of the distance to its border) plus speck bumps and mild noise, quantised to multiples
  of 1/256 so that any average over 2^k x 2^k cells and the 0.75 threshold are exact in float32
  (no peer can disagree with us through rounding alone).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

PROB_THRESHOLD = 0.75
SPECKS_PER_PIXEL = 1 / 1500


def _ellipse_distance(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """(B,S,S) float32: the ellipse's normalised radius at every pixel (< 1 inside)."""
    cy, cx = (rng.uniform(0.35, 0.65, (2, batch, 1, 1)) * size).astype(np.float32)
    ry, rx = (rng.uniform(0.18, 0.30, (2, batch, 1, 1)) * size).astype(np.float32)
    angle = rng.uniform(0, np.pi, (batch, 1, 1)).astype(np.float32)
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    dy, dx = ys[None] - cy, xs[None] - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _specks(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """(B,S,S) bool: half 3x3 squares, half single pixels, about SPECKS_PER_PIXEL per pixel."""
    seeds = rng.random((2, batch, size, size), dtype=np.float32) < SPECKS_PER_PIXEL / 2
    squares = F.max_pool2d(torch.from_numpy(seeds[0]).float()[:, None], 3, stride=1, padding=1)
    return squares[:, 0].numpy().astype(bool) | seeds[1]


@functools.lru_cache(maxsize=8)
def coarse_masks(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """(B,S,S) bool: a large ellipse blob plus noise specks per image (see module docs)."""
    rng = np.random.default_rng([seed, batch, size, 1])
    blob = _ellipse_distance(rng, batch, size) < 1.0
    return np.ascontiguousarray(blob | _specks(rng, batch, size))


@functools.lru_cache(maxsize=8)
def noise_masks(batch: int, size: int, seed: int = 0, density: float = 0.5) -> np.ndarray:
    """(B,S,S) bool: i.i.d. foreground with probability ``density``."""
    rng = np.random.default_rng([seed, batch, size, 2])
    return rng.random((batch, size, size), dtype=np.float32) < density


MASKS = {"coarse": coarse_masks, "noise": noise_masks}


@functools.lru_cache(maxsize=8)
def coarse_probs(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """(B,S,S) float32 in [0,1], multiples of 1/256 (see module docs)."""
    rng = np.random.default_rng([seed, batch, size, 3])
    border = (1.0 - _ellipse_distance(rng, batch, size)) * (size / 16)  # ~ pixels inside the border
    probs = 1.0 / (1.0 + np.exp(-np.clip(border, -30.0, 30.0)))
    probs = np.maximum(probs, _specks(rng, batch, size) * np.float32(0.9))
    probs += rng.normal(0.0, 0.04, probs.shape).astype(np.float32)
    quantised = np.round(np.clip(probs, 0.0, 1.0) * 256) / 256
    return quantised.astype(np.float32)


def z_scored_slices(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """(B,1,S,S) float32 MRI-like slices (smooth structure plus noise), z-scored per slice; the
    images fed to SAM in the pipeline benchmarks (content does not change SAM's cost)."""
    rng = np.random.default_rng([seed, batch, size, 4])
    coarse = torch.from_numpy(rng.random((batch, 1, size // 8 + 1, size // 8 + 1), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).numpy()
    images = smooth + 0.1 * rng.standard_normal(smooth.shape, dtype=np.float32)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    std = images.std(axis=(1, 2, 3), keepdims=True)
    return ((images - mean) / std).astype(np.float32)
