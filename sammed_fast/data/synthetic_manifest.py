"""Small synthetic datasets in manifest form, so every "bring your own data" path runs without data.

- ``write_synthetic_multilabel(out)``: NIfTI volumes of a two-zone phantom (an inner zone, label 1,
  inside an outer zone, label 2, in a body outline) from three sites that differ in grid, voxel
  size, contrast, gamma, bias, blur and noise; site ``siteB`` is stored in RAS orientation (the
  reader brings it back to LPS). Writes ``manifest.json`` (labels ``inner=1,outer=2``).
- ``write_synthetic_2d(out)``: fundus-like RGB PNGs with an optic disc (label 1, the rim) and a
  cup inside it (label 2) from three cameras that differ in colour, contrast, blur, noise and size.
  Writes ``manifest.csv`` and its label sidecar ``manifest.labels.json`` (``disc=1+2,cup=2``: the
  disc region includes the cup).

Both are pure functions of the seed (each case has its own generator), and every file is written
atomically; the manifest is written last, so an interrupted run leaves no manifest. The
``render_*`` functions return what is drawn, in the arrays' reading order: (S, H, W) canonical LPS
for volumes, (H, W[, 3]) for 2D.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from sammed_fast.atomic import write_bytes_atomic, write_text_atomic
from sammed_fast.data.manifest import MANIFEST_COLUMNS, labels_sidecar
from sammed_fast.data.prostate import to_nifti_order

__all__ = ["VolumeSite", "VOLUME_SITES", "MULTILABEL_LABELS", "render_multilabel_case",
           "write_synthetic_multilabel", "Camera", "CAMERAS", "FUNDUS_LABELS", "render_fundus_case",
           "write_synthetic_2d"]

MULTILABEL_LABELS = {"inner": 1, "outer": 2}
FUNDUS_LABELS = {"disc": [1, 2], "cup": 2}


@dataclass(frozen=True, kw_only=True)
class VolumeSite:
    """One site's acquisition. shape: (S, H, W) voxels; spacing: (x, y, z) mm; signals: relative
    (body, outer zone, inner zone) before gamma; bias: amplitude of a linear bias field; blur: in-
    plane Gaussian sigma in voxels; noise: Gaussian sigma (relative); ras: stored in RAS order."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    signals: tuple[float, float, float]
    gamma: float
    bias: float
    blur: float
    noise: float
    scanner_max: int
    ras: bool = False


VOLUME_SITES: dict[str, VolumeSite] = {
    "siteA": VolumeSite(shape=(10, 64, 64), spacing=(1.0, 1.0, 3.0), signals=(0.35, 0.8, 0.45),
                        gamma=1.0, bias=0.1, blur=0.5, noise=0.02, scanner_max=1200),
    "siteB": VolumeSite(shape=(8, 56, 56), spacing=(1.2, 1.2, 3.6), signals=(0.4, 0.7, 0.55),
                        gamma=0.8, bias=0.3, blur=1.0, noise=0.05, scanner_max=600, ras=True),
    "siteC": VolumeSite(shape=(12, 64, 64), spacing=(0.9, 0.9, 2.5), signals=(0.3, 0.5, 0.9),
                        gamma=1.3, bias=0.2, blur=0.7, noise=0.03, scanner_max=3000),
}


def _unit_grid(n: int) -> np.ndarray:
    """n pixel centres spanning [-1, 1]."""
    return (np.arange(n) + 0.5) / n * 2 - 1


def render_multilabel_case(domain: str, case_index: int, *, seed: int = 0):
    """(image int16 (S, H, W), label_map uint8 (S, H, W) in {0, 1, 2}, spacing (x, y, z) mm).
    The first and last slices lie outside both zones."""
    site = VOLUME_SITES[domain]
    rng = np.random.default_rng([seed, list(VOLUME_SITES).index(domain), case_index])
    s, h, w = site.shape
    z = np.linspace(-1, 1, s)[:, None, None]
    y, x = _unit_grid(h)[None, :, None], _unit_grid(w)[None, None, :]
    cx, cy = rng.uniform(-0.15, 0.15, 2)
    ax, ay = rng.uniform(0.3, 0.45, 2)
    az = rng.uniform(0.6, 0.75)
    outer = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + (z / az) ** 2 <= 1
    shrink = rng.uniform(0.45, 0.6)
    inner = ((x - cx) / (ax * shrink)) ** 2 + ((y - cy - 0.05) / (ay * shrink)) ** 2 \
        + (z / (az * 0.8)) ** 2 <= 1
    body = (x / 0.9) ** 2 + (y / 0.8) ** 2 <= 1
    label = np.where(outer, np.where(inner, 1, 2), 0).astype(np.uint8)
    body_signal, outer_signal, inner_signal = np.array(site.signals) * rng.uniform(0.9, 1.1, 3)
    signal = np.select([label == 1, label == 2, body], [inner_signal, outer_signal, body_signal], 0.0)
    tilt = rng.uniform(-1, 1, 2)
    signal = signal ** site.gamma * np.exp(site.bias * (tilt[0] * x + tilt[1] * y))
    signal = ndimage.gaussian_filter(signal, sigma=(0, site.blur, site.blur))
    signal = np.abs(signal + site.noise * rng.standard_normal(signal.shape))
    image = np.round(signal * site.scanner_max).clip(0, 32767).astype(np.int16)
    return image, label, site.spacing


def _nifti_gz(array: np.ndarray, site: VolumeSite) -> bytes:
    """(S, H, W) canonical -> gzip'd NIfTI in the site's storage order (LPS, or RAS: the first two
    voxel axes flipped, with the affine that keeps every voxel's world position)."""
    sx, sy, sz = site.spacing
    data = to_nifti_order(array)
    affine = np.array([[-sx, 0, 0, 0], [0, -sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], float)
    if site.ras:
        ni, nj = data.shape[:2]
        flip = np.array([[-1, 0, 0, ni - 1], [0, -1, 0, nj - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        data, affine = data[::-1, ::-1], affine @ flip
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _check_count(cases_per_domain) -> int:
    if isinstance(cases_per_domain, bool) or not isinstance(cases_per_domain, int) \
            or cases_per_domain < 1:
        raise ValueError(f"cases_per_domain must be a positive int, got {cases_per_domain!r}")
    return cases_per_domain


def _check_domains(domains: Sequence[str] | None, known: dict) -> list[str]:
    domains = list(known) if domains is None else list(domains)
    unknown = [d for d in domains if d not in known]
    if unknown or len(domains) < 1 or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct names from {', '.join(known)}, got {domains}")
    return domains


def write_synthetic_multilabel(out: str | os.PathLike, *, cases_per_domain: int = 3, seed: int = 0,
                               domains: Sequence[str] | None = None) -> Path:
    """Writes ``images/<case>.nii.gz``, ``labels/<case>.nii.gz`` and ``manifest.json`` under
    ``out``; returns the manifest's path. Case ids are ``<domain>_<NNN>``."""
    out = Path(out)
    domains = _check_domains(domains, VOLUME_SITES)
    records = []
    for domain in domains:
        for index in range(_check_count(cases_per_domain)):
            case_id = f"{domain}_{index:03d}"
            image, label, _ = render_multilabel_case(domain, index, seed=seed)
            for folder, array in (("images", image), ("labels", label)):
                write_bytes_atomic(out / folder / f"{case_id}.nii.gz",
                                   _nifti_gz(array, VOLUME_SITES[domain]))
            records.append({"case_id": case_id, "image": f"images/{case_id}.nii.gz",
                            "label": f"labels/{case_id}.nii.gz", "domain": domain})
    manifest = {"labels": MULTILABEL_LABELS, "domains": domains, "cases": records,
                "generator": {"name": "sammed_fast.data.synthetic_manifest.multilabel",
                              "seed": int(seed), "cases_per_domain": cases_per_domain}}
    return write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------
# 2D fundus-like images

@dataclass(frozen=True, kw_only=True)
class Camera:
    """One camera. size: (H, W) pixels; tint: RGB gain; contrast: gain around mid-grey; blur:
    Gaussian sigma in pixels; noise: Gaussian sigma in 8-bit units."""

    size: tuple[int, int]
    tint: tuple[float, float, float]
    contrast: float
    blur: float
    noise: float


CAMERAS: dict[str, Camera] = {
    "cam1": Camera(size=(64, 64), tint=(1.0, 0.55, 0.25), contrast=1.0, blur=0.0, noise=2.0),
    "cam2": Camera(size=(64, 64), tint=(0.85, 0.35, 0.2), contrast=0.7, blur=1.0, noise=4.0),
    "cam3": Camera(size=(72, 72), tint=(1.0, 0.8, 0.5), contrast=1.2, blur=0.6, noise=6.0),
}


def render_fundus_case(domain: str, case_index: int, *, seed: int = 0):
    """(image uint8 (H, W, 3) RGB, label_map uint8 (H, W): 1 disc rim, 2 cup, 0 elsewhere)."""
    camera = CAMERAS[domain]
    rng = np.random.default_rng([seed, 100 + list(CAMERAS).index(domain), case_index])
    h, w = camera.size
    y, x = _unit_grid(h)[:, None], _unit_grid(w)[None, :]
    r2 = x ** 2 + y ** 2
    dx, dy = rng.uniform(0.2, 0.4) * rng.choice([-1, 1]), rng.uniform(-0.15, 0.15)
    disc_r = rng.uniform(0.16, 0.22)
    cup_r = disc_r * rng.uniform(0.35, 0.65)
    disc_d2 = ((x - dx) ** 2 + ((y - dy) / 1.1) ** 2) / disc_r ** 2
    cup_d2 = ((x - dx - 0.02) ** 2 + ((y - dy) / 1.1) ** 2) / cup_r ** 2
    label = np.select([cup_d2 <= 1, disc_d2 <= 1], [2, 1], 0).astype(np.uint8)
    # retina: vignetted, with dark vessels leaving the disc at a few angles
    brightness = 0.75 * (1 - 0.35 * r2)
    angles = rng.uniform(0, 2 * np.pi, 4)
    for angle in angles:
        along = (x - dx) * np.cos(angle) + (y - dy) * np.sin(angle)
        across = -(x - dx) * np.sin(angle) + (y - dy) * np.cos(angle) - 0.1 * along ** 2
        brightness = brightness * (1 - 0.35 * ((np.abs(across) < 0.025) & (along > 0)))
    brightness = np.select([label == 2, label == 1], [1.35, 1.15], brightness)
    rgb = brightness[..., None] * np.array(camera.tint)
    rgb = np.where(label[..., None] > 0, np.maximum(rgb, 0.55 + 0.3 * (label[..., None] == 2)), rgb)
    rgb = 0.5 + camera.contrast * (rgb - 0.5)
    rgb = np.where((r2 <= 0.95 ** 2)[..., None], rgb, 0.0) * 255
    rgb = ndimage.gaussian_filter(rgb, sigma=(camera.blur, camera.blur, 0))
    rgb = rgb + camera.noise * rng.standard_normal(rgb.shape)
    return np.round(rgb).clip(0, 255).astype(np.uint8), label


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic_2d(out: str | os.PathLike, *, cases_per_domain: int = 4, seed: int = 0,
                       domains: Sequence[str] | None = None) -> Path:
    """Writes ``images/<case>.png`` (RGB), ``labels/<case>.png`` (grey, values 0/1/2),
    ``manifest.csv`` and ``manifest.labels.json`` under ``out``; returns the manifest's path."""
    out = Path(out)
    domains = _check_domains(domains, CAMERAS)
    rows = []
    for domain in domains:
        for index in range(_check_count(cases_per_domain)):
            case_id = f"{domain}_{index:03d}"
            image, label = render_fundus_case(domain, index, seed=seed)
            write_bytes_atomic(out / "images" / f"{case_id}.png", _png(image))
            write_bytes_atomic(out / "labels" / f"{case_id}.png", _png(label))
            rows.append((case_id, f"images/{case_id}.png", f"labels/{case_id}.png", domain))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([MANIFEST_COLUMNS, *rows])
    manifest = out / "manifest.csv"
    write_text_atomic(labels_sidecar(manifest), json.dumps(FUNDUS_LABELS) + "\n")
    return write_text_atomic(manifest, text.getvalue())
