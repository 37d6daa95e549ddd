"""A synthetic six-domain prostate MRI set, written in the layout of the common release.

    python -m sammed_fast.data.synthetic --out DIR [--full] [--seed N]

Every case is an axial T2-like pelvis phantom (body outline and subcutaneous fat, gluteal,
obturator and psoas muscles, femoral heads, pubis and ischium, bladder, rectum, seminal vesicles,
periprostatic fat, and a prostate whose darker central gland and brighter peripheral zone change
from apex to base), with anatomy drawn per case. Each domain imitates its site's acquisition with
the parameters of ``ACQUISITIONS`` (one table, documented in docs/data.md): field of view and
in-plane matrix, slice count and thickness (partial volume across the slab), tissue contrast and
gamma, smooth body-coil bias or the strong fall-off of an endorectal coil, Gaussian blur and
Rician noise (1.5T noisier than 3T). Images are stored as int16 in scanner-like units.

The set is a pure function of the seed (each case has its own generator, so case k of domain X
does not depend on how many cases were asked for). It is written to a hidden temp folder next to
``out`` and renamed into place only when complete, with ``manifest.json`` listing every file's
SHA-256, so an interrupted run never leaves a complete-looking set; ``ensure_synthetic`` on a
complete set with the same parameters does nothing.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sammed_fast.data.filters import gaussian_blur
from sammed_fast.data.prostate import DOMAINS, to_nifti_order
from sammed_fast.files import sha256_file
from sammed_fast.plotting import image_panel, new_figure, png_bytes

__all__ = ["Acquisition", "ACQUISITIONS", "acquisition_table", "REAL_CASE_COUNTS", "DEFAULT_CASES", "write_synthetic",
           "ensure_synthetic", "synthetic_set_is_written", "render_case", "main"]

GENERATOR_VERSION = 2
MANIFEST = "manifest.json"
#: cases per domain in the real release; the default set and ``--full`` both have these counts
#: (``--cases N`` / ``cases_per_domain=N`` asks for N per domain instead: tests, quick checks).
REAL_CASE_COUNTS = {"A": 30, "B": 30, "C": 19, "D": 13, "E": 12, "F": 12}
DEFAULT_CASES = REAL_CASE_COUNTS


@dataclass(frozen=True)
class Acquisition:
    """How one site acquires its images. Signals are relative (fat ~0.8, urine 1.0 before gamma).

    fov_mm: (min, max) of the square in-plane field of view, drawn per case. matrix / matrix_full:
    in-plane pixels (default / --full).
    slices_full, thickness_full: slice count and thickness (mm) of --full; the default set keeps the
    same coverage with `slices` thicker slices. field: '3T', '1.5T' or '1.5T/3T' (chosen per case);
    noise: Rician sigma at that field (a '1.5T/3T' site uses noise_15 for its 1.5T cases).
    coil: peak gain of an endorectal receive coil (0 = none). bias: amplitude of the smooth
    body-coil bias field (log scale). gamma: exponent on the signal. zone: contrast of the central
    gland against the peripheral zone (1 = reference). fat: fat signal (sequence dependent).
    blur_px: Gaussian PSF sigma in output pixels. scanner_max: stored intensity of signal 1.2.
    """

    fov_mm: tuple[float, float]
    matrix: int
    matrix_full: int
    slices: int
    slices_full: int
    thickness_full: float
    field: str
    noise: float
    coil: float
    bias: float
    gamma: float
    zone: float
    fat: float
    blur_px: float
    scanner_max: int
    noise_15: float = 0.0

    def grid(self, full: bool) -> tuple[int, int, float]:
        """(matrix, slices, thickness mm) of the default set or of --full."""
        n = self.matrix_full if full else self.matrix
        s = self.slices_full if full else self.slices
        return n, s, self.thickness_full * self.slices_full / s


#: The one table of per-domain acquisition parameters (REFERENCE section 3 for the real sites).
ACQUISITIONS: dict[str, Acquisition] = {
    "A": Acquisition(fov_mm=(190, 210), matrix=112, matrix_full=224, slices=14, slices_full=20,
                     thickness_full=3.8, field="3T", noise=0.02, coil=0.0, bias=0.22, gamma=1.0,
                     zone=1.0, fat=0.80, blur_px=1.0, scanner_max=1500),
    "B": Acquisition(fov_mm=(160, 175), matrix=112, matrix_full=224, slices=14, slices_full=20,
                     thickness_full=3.0, field="1.5T", noise=0.05, coil=0.7, bias=0.10, gamma=0.9,
                     zone=0.85, fat=0.70, blur_px=0.6, scanner_max=700),
    "C": Acquisition(fov_mm=(215, 240), matrix=112, matrix_full=224, slices=18, slices_full=60,
                     thickness_full=1.25, field="3T", noise=0.02, coil=0.0, bias=0.38, gamma=1.25,
                     zone=1.25, fat=0.95, blur_px=0.6, scanner_max=4000),
    "D": Acquisition(fov_mm=(140, 200), matrix=128, matrix_full=256, slices=16, slices_full=24,
                     thickness_full=3.3, field="1.5T/3T", noise=0.02, coil=0.0, bias=0.45,
                     gamma=1.2, zone=0.85, fat=0.80, blur_px=1.1, scanner_max=1000, noise_15=0.05),
    "E": Acquisition(fov_mm=(153, 168), matrix=128, matrix_full=256, slices=16, slices_full=30,
                     thickness_full=2.5, field="3T", noise=0.02, coil=1.2, bias=0.10, gamma=0.9,
                     zone=1.2, fat=0.75, blur_px=0.5, scanner_max=2500),
    "F": Acquisition(fov_mm=(195, 205), matrix=104, matrix_full=208, slices=14, slices_full=20,
                     thickness_full=3.6, field="1.5T", noise=0.05, coil=0.0, bias=0.05, gamma=0.9,
                     zone=0.6, fat=0.66, blur_px=1.2, scanner_max=600),
}

def acquisition_table() -> str:
    """ACQUISITIONS as a markdown table (default grid, with --full in brackets)."""
    head = ("| domain | site | field | FOV mm | matrix | in-plane mm | slices x mm | noise sigma | "
            "endorectal coil | bias | gamma | CG contrast | fat | blur px |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for letter, a in ACQUISITIONS.items():
        n, s, thk = a.grid(False)
        nf, sf, thf = a.grid(True)
        noise = f"{a.noise_15} / {a.noise}" if a.field == "1.5T/3T" else f"{a.noise}"
        rows.append(
            f"| {letter} | {DOMAINS[letter].site} | {a.field} | {a.fov_mm[0]:g}-{a.fov_mm[1]:g} | "
            f"{n} ({nf}) | {a.fov_mm[0] / n:.2f}-{a.fov_mm[1] / n:.2f} "
            f"({a.fov_mm[0] / nf:.2f}-{a.fov_mm[1] / nf:.2f}) | {s} x {thk:.2f} ({sf} x {thf:g}) | "
            f"{noise} | {a.coil:g} | {a.bias:g} | {a.gamma:g} | {a.zone:g} | {a.fat:g} | "
            f"{a.blur_px:g} |")
    return "\n".join(rows)


# Reference T2 signal of each tissue at 3T (fat and marrow follow the domain's `fat`, the central
# gland its `zone`).
_TISSUE = dict(fat=0.80, pelvic_fat=0.74, muscle=0.28, cortex=0.04, marrow=0.62, urine=1.0,
               wall=0.30, rect_wall=0.36, rect_lumen=0.08, balloon=0.03, sv=0.88, pz=0.74,
               cg=0.40, capsule=0.20, plexus=0.60)
_SUPERSAMPLE = 2  # in-plane supersampling for partial volume at edges
_SUBSLICES = 3    # samples across each slab for through-plane partial volume


# ----------------------------------------------------------------------------------------------
# anatomy


class _Anatomy:
    """Per-case geometry in mm: x left-right, y anterior (-) to posterior (+), z inferior to
    superior; the prostate centre is near the origin."""

    def __init__(self, rng: np.random.Generator, *, coil: bool):
        u = rng.uniform
        self.px, self.py, self.pz = rng.normal(0, 2), rng.normal(0, 2), 0.0
        self.rx, self.ry, self.rz = u(19, 27), u(14, 19), u(17, 24)
        self.rot = math.radians(rng.normal(0, 6))
        self.harm = [(u(-0.06, 0.06), u(0, 2 * math.pi)) for _ in (2, 3)]
        self.flat = u(0.10, 0.22) + (0.15 if coil else 0.0)
        self.cg_frac, self.cg_shift, self.tilt = u(0.5, 0.75), u(0.10, 0.25), u(0.0, 0.25)
        self.nodules = [(u(-0.5, 0.5), u(-0.6, 0.2), u(-0.2, 0.8), u(3, 7), u(0.7, 1.4))
                        for _ in range(rng.integers(0, 5))]
        self.body_a, self.body_b, self.body_cy = u(150, 185), u(105, 130), u(5, 20)
        self.fat_thick = u(12, 30)
        self.bladder = (rng.normal(0, 3), -u(5, 15), self.rz + u(15, 28), u(35, 50), u(25, 35),
                        u(22, 32))
        self.rect_r = u(18, 22) if coil else u(9, 14)
        self.rect_gap = u(2, 5)
        self.rect_content = (u(-0.5, 0.5), u(-0.5, 0.5), u(0.3, 0.6), u(0.2, 0.7))
        self.sv = (math.radians(u(20, 40)), u(12, 18), u(4, 7), u(0, 6))
        self.femur = (u(88, 102), u(-5, 10), u(5, 20), u(22, 27))
        self.pubis_gap = u(12, 20)
        self.tissue_jitter = {k: u(0.95, 1.05) for k in _TISSUE}
        self.coil = coil
        self.noise_grid = torch.from_numpy(rng.standard_normal((49, 81, 81)).astype(np.float32))

    def rectum_centre(self, z: float) -> tuple[float, float]:
        y = self.py + self.ry * (1 - 0.5 * self.flat) + self.rect_gap + self.rect_r
        return 0.0, y + 0.15 * (z - self.pz)

    def prostate(self, X: np.ndarray, Y: np.ndarray, z: float):
        """(rho, boundary, xr, yr, s, uz) of the gland at height z, or None above/below it."""
        uz = (z - self.pz) / self.rz  # -1 apex .. +1 base
        if abs(uz) >= 1:
            return None
        s = (1 - uz * uz) ** (0.35 if uz > 0 else 0.6) * (1 + 0.15 * uz)
        cy = self.py - self.tilt * self.ry * uz
        c, sn = math.cos(self.rot), math.sin(self.rot)
        dx, dy = X - self.px, Y - cy
        xr, yr = c * dx + sn * dy, -sn * dx + c * dy
        xn, yn = xr / (self.rx * s), yr / (self.ry * s)
        rho = np.hypot(xn, yn)
        phi = np.arctan2(yn, xn)
        bound = 1.0 + sum(a * np.cos(k * phi + p) for k, (a, p) in zip((2, 3), self.harm))
        bound = bound - self.flat * np.clip(np.sin(phi), 0, None) ** 4
        return rho, bound, xr, yr, s, uz


def _ell(X, Y, cx, cy, a, b, angle=0.0):
    """Normalised squared radius of an (optionally rotated) ellipse; < 1 inside."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (dx / a) ** 2 + (dy / b) ** 2


def _tissues(acq: Acquisition, anat: _Anatomy) -> dict[str, float]:
    t = {k: v * anat.tissue_jitter[k] for k, v in _TISSUE.items()}
    scale = acq.fat / _TISSUE["fat"]
    for k in ("fat", "pelvic_fat", "marrow", "plexus"):
        t[k] *= scale
    t["cg"] = t["pz"] - acq.zone * (t["pz"] - t["cg"])
    return t


def _render_slab(anat: _Anatomy, t: dict[str, float], X: np.ndarray, Y: np.ndarray, z: float):
    """Signal (float32) and prostate mask (bool) at height z on the grid given by X (1, W) and
    Y (H, 1) in mm (broadcasting keeps the unrotated shapes cheap)."""
    img = np.zeros((Y.shape[0], X.shape[1]), np.float32)
    a, b, cyb = anat.body_a, anat.body_b, anat.body_cy
    img[_ell(X, Y, 0, cyb, a, b) < 1] = t["fat"]
    inner = _ell(X, Y, 0, cyb, a - anat.fat_thick, b - anat.fat_thick) < 1
    img[inner] = t["pelvic_fat"]
    muscle = np.zeros(img.shape, bool)
    for side in (-1, 1):
        muscle |= _ell(X, Y, side * 0.45 * a, cyb + 0.55 * b, 0.42 * a, 0.36 * b, side * 0.45) < 1
        muscle |= _ell(X, Y, side * 52, anat.py + 5, 11, 32) < 1           # obturator internus
        muscle |= _ell(X, Y, side * 72, anat.py - 38, 20, 15) < 1          # iliopsoas
        muscle |= _ell(X, Y, side * 24, cyb - b + anat.fat_thick + 7, 22, 6) < 1  # rectus
    ring = _ell(X, Y, 0, anat.py + 18, 46, 40)
    muscle |= (ring > 0.8) & (ring < 1) & (Y > anat.py + 5)                 # levator ani
    img[muscle & inner] = t["muscle"]
    _bones(anat, t, img, X, Y, z)
    _rectum(anat, t, img, X, Y, z)
    bx, by, bz, ba, bb, bc = anat.bladder
    dz = (z - (anat.pz + bz)) / bc
    if abs(dz) < 1:
        k = math.sqrt(1 - dz * dz)
        r2 = _ell(X, Y, bx, by, ba * k, bb * k)
        img[r2 < 1] = t["wall"]
        img[_ell(X, Y, bx, by, max(ba * k - 3, 0.1), max(bb * k - 3, 0.1)) < 1] = t["urine"]
    ang, length, thick, dzs = anat.sv
    dz = (z - (anat.pz + 0.85 * anat.rz + dzs)) / 10
    if abs(dz) < 1:
        k = math.sqrt(1 - dz * dz)
        for side in (-1, 1):
            cx = side * (8 + 0.5 * length * math.cos(ang))
            cy = anat.py + 0.6 * anat.ry
            r2 = _ell(X, Y, cx, cy, length * k, thick * k, -side * ang)
            img[r2 < 1] = t["wall"]
            img[r2 < 0.55] = t["sv"]
    mask = np.zeros(img.shape, bool)
    # the gland and its surroundings only touch a box around the prostate: work there
    reach = 1.45 * max(anat.rx, anat.ry) + anat.tilt * anat.ry
    cols = np.flatnonzero(np.abs(X[0] - anat.px) < reach)
    rows = np.flatnonzero(np.abs(Y[:, 0] - anat.py) < reach)
    if cols.size and rows.size:
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        _render_gland(anat, t, img[box], mask[box], X[:, box[1]], Y[box[0], :], z)
    return img, mask


def _render_gland(anat: _Anatomy, t, img, mask, X, Y, z) -> None:
    """Paints periprostatic plexus, peripheral zone, central gland, nodules and capsule in place."""
    gland = anat.prostate(X, Y, z)
    if gland is None:
        return
    rho, bound, xr, yr, s, uz = gland
    img[rho < 1.18 * bound] = t["plexus"]
    mask[...] = rho < bound
    img[mask] = t["pz"]
    f = anat.cg_frac * min(max((uz + 0.6) / 1.2, 0.0), 1.0) ** 0.5
    if f > 0:
        cg = mask & (_ell(xr, yr, 0, -anat.cg_shift * anat.ry * s,
                          f * anat.rx * s, 0.85 * f * anat.ry * s) < 1)
        img[cg] = t["cg"]
        for nx, ny, nz, nr, gain in anat.nodules:
            dzn = (uz - nz) * anat.rz / nr
            if abs(dzn) < 1:
                r = nr * math.sqrt(1 - dzn * dzn)
                nod = cg & (_ell(xr, yr, nx * f * anat.rx * s, ny * f * anat.ry * s, r, r) < 1)
                img[nod] = t["cg"] * gain
    img[mask & (rho > bound - 1.2 / (min(anat.rx, anat.ry) * s))] = t["capsule"]
    img[mask & (yr < -0.8 * anat.ry * s * bound)] = t["capsule"]  # anterior stroma


def _bones(anat: _Anatomy, t, img, X, Y, z):
    fx, fy, fz, fr = anat.femur
    dz = z - (anat.pz + fz)
    if abs(dz) < fr:
        r = math.sqrt(fr * fr - dz * dz)
        for side in (-1, 1):
            r2 = _ell(X, Y, side * fx, fy, r, r)
            img[r2 < 1] = t["cortex"]
            img[r2 < ((r - 3) / r) ** 2] = t["marrow"]
    ys = anat.py - anat.ry - anat.pubis_gap
    if anat.pz - anat.rz - 10 < z < anat.pz + anat.rz + 5:
        for side in (-1, 1):
            r2 = _ell(X, Y, side * 9, ys, 8, 13)
            img[r2 < 1] = t["cortex"]
            img[r2 < 0.5] = t["marrow"]
            if z > anat.pz + 0.4 * anat.rz:  # superior pubic ramus, towards the acetabulum
                x0, y0, x1, y1 = side * 12, ys, side * (fx - 12), fy - 15
                ang = math.atan2(y1 - y0, x1 - x0)
                r2 = _ell(X, Y, (x0 + x1) / 2, (y0 + y1) / 2, math.hypot(x1 - x0, y1 - y0) / 2, 7,
                          ang)
                img[r2 < 1] = t["cortex"]
                img[r2 < 0.45] = t["marrow"]
    if z < anat.pz:
        for side in (-1, 1):
            r2 = _ell(X, Y, side * 55, anat.py + 45, 13, 13)
            img[r2 < 1] = t["cortex"]
            img[r2 < 0.6] = t["marrow"]


def _rectum(anat: _Anatomy, t, img, X, Y, z):
    cx, cy = anat.rectum_centre(z)
    r = anat.rect_r
    r2 = _ell(X, Y, cx, cy, r, r)
    img[r2 < 1] = t["rect_wall"]
    lumen = r2 < ((r - 3) / r) ** 2
    if anat.coil:
        img[lumen] = t["balloon"]
    else:
        img[lumen] = t["rect_lumen"]
        ox, oy, rr, val = anat.rect_content
        img[lumen & (_ell(X, Y, cx + ox * r, cy + oy * r, rr * r, rr * r) < 1)] = val


# ----------------------------------------------------------------------------------------------
# acquisition


def render_case(letter: str, case_index: int, *, seed: int = 0, full: bool = False):
    """One synthetic case: (image int16 (S, H, W), label uint8 (S, H, W), spacing (sx, sy, sz) mm,
    z of slice 0 in mm). Slice 0 is the most inferior (apex side)."""
    acq = ACQUISITIONS[letter]
    rng = np.random.default_rng([seed, ord(letter), case_index])
    anat = _Anatomy(rng, coil=acq.coil > 0)
    tissues = _tissues(acq, anat)
    n, s, thk = acq.grid(full)
    fov = rng.uniform(*acq.fov_mm)
    pix = fov / n
    s = max(4, s + int(rng.integers(-1, 2)))
    noise = acq.noise
    if acq.field == "1.5T/3T" and rng.random() < 0.5:
        noise = acq.noise_15
    fov_cx = rng.normal(0, 4)
    fov_cy = anat.py + 0.3 * anat.ry + rng.normal(0, 4)
    z_mid = anat.pz + rng.uniform(0, 10)
    z0 = z_mid - (s - 1) / 2 * thk

    m = n * _SUPERSAMPLE
    coords = (np.arange(m, dtype=np.float32) + 0.5) / m * fov - fov / 2
    X, Y = (coords + fov_cx)[None, :], (coords + fov_cy)[:, None]
    offsets = (np.arange(_SUBSLICES) + 0.5) / _SUBSLICES - 0.5
    img = np.zeros((s, m, m), np.float32)
    frac = np.zeros((s, m, m), np.float32)
    tex_z = []
    for k in range(s):
        for off in offsets:
            z = z0 + k * thk + off * thk
            slab, mask = _render_slab(anat, tissues, X, Y, z)
            img[k] += slab / _SUBSLICES
            frac[k] += mask / _SUBSLICES
        tex_z.append(z0 + k * thk)
    # tissue texture: a smooth random field on a 5 mm grid spanning x,y in +-200 mm, z in +-120 mm
    grid = torch.stack(torch.broadcast_tensors(
        torch.from_numpy(X / 200).expand(m, m)[None], torch.from_numpy(Y / 200).expand(m, m)[None],
        torch.tensor(tex_z, dtype=torch.float32).view(-1, 1, 1) / 120), dim=-1)
    tex = F.grid_sample(anat.noise_grid[None, None], grid[None].float(), mode="bilinear",
                        padding_mode="border", align_corners=True)[0, 0]
    signal = torch.from_numpy(img) * (1 + 0.08 * tex)
    signal = F.avg_pool2d(signal.unsqueeze(1), _SUPERSAMPLE)[:, 0]
    label = F.avg_pool2d(torch.from_numpy(frac).unsqueeze(1), _SUPERSAMPLE)[:, 0] >= 0.5

    signal = signal.clamp_min(0) ** acq.gamma
    # output pixel centres, for the bias fields
    Xo = torch.from_numpy(X.reshape(1, n, _SUPERSAMPLE).mean(-1))
    Yo = torch.from_numpy(Y.reshape(n, _SUPERSAMPLE, 1).mean(1))
    zc = (torch.tensor(tex_z) - anat.pz).view(-1, 1, 1) / 60
    xn, yn = (Xo / 150)[None], (Yo / 150)[None]
    c = torch.from_numpy(rng.normal(0, 1, 6).astype(np.float32))
    bias = torch.exp(acq.bias * (c[0] * xn + c[1] * yn + c[2] * xn * xn + c[3] * yn * yn
                                 + c[4] * xn * yn + c[5] * zc))
    if acq.coil > 0:
        rcx, rcy = anat.rectum_centre(anat.pz)
        d2 = ((Xo - rcx) ** 2 + (Yo - rcy) ** 2)[None] + (torch.clamp(zc.abs() * 60 - 25, min=0)) ** 2
        bias = bias * (1 + acq.coil / (1 + d2 / 20.0 ** 2))
    signal = gaussian_blur((signal * bias).unsqueeze(1), acq.blur_px)[:, 0]
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    n1 = torch.randn(signal.shape, generator=gen) * noise
    n2 = torch.randn(signal.shape, generator=gen) * noise
    signal = torch.sqrt((signal + n1) ** 2 + n2 ** 2)
    image = torch.round(signal * (acq.scanner_max / 1.2)).clamp(0, 32767).to(torch.int16)
    return image.numpy(), label.numpy().astype(np.uint8), (pix, pix, thk), z0


# ----------------------------------------------------------------------------------------------
# writing


def _nifti_bytes(array: np.ndarray, spacing, z0: float) -> bytes:
    """(S, H, W) -> gzip'd NIfTI bytes; affine LPS-like (columns -> patient left, rows ->
    posterior, slices -> superior) with the voxel sizes on its diagonal."""
    sx, sy, sz = spacing
    data = np.ascontiguousarray(to_nifti_order(array))
    ni, nj, _ = data.shape
    affine = np.array([[-sx, 0, 0, sx * (ni - 1) / 2], [0, -sy, 0, sy * (nj - 1) / 2],
                       [0, 0, sz, z0], [0, 0, 0, 1]], dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _params(full: bool, seed: int, cases_per_domain: int | None, domains) -> dict:
    """The generation parameters, as they read back from the manifest (JSON types)."""
    return json.loads(json.dumps({"generator": "sammed_fast.data.synthetic", "version": GENERATOR_VERSION,
            "seed": int(seed), "full": bool(full), "cases_per_domain": cases_per_domain,
            "domains": list(domains), "cases": _case_counts(full, cases_per_domain, domains),
            "acquisitions": {k: asdict(ACQUISITIONS[k]) for k in domains}}))


def _case_counts(full: bool, cases_per_domain: int | None, domains) -> dict[str, int]:
    if cases_per_domain is not None:
        if isinstance(cases_per_domain, bool) or not isinstance(cases_per_domain, int) \
                or cases_per_domain < 1:
            raise ValueError(f"cases_per_domain must be a positive int, got {cases_per_domain!r}")
        return {d: cases_per_domain for d in domains}
    return {d: REAL_CASE_COUNTS[d] for d in domains}


def _check_domains(domains) -> list[str]:
    domains = list(DOMAINS) if domains is None else [str(d).upper() for d in domains]
    bad = [d for d in domains if d not in DOMAINS]
    if bad or not domains or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct letters from {list(DOMAINS)}, got {domains}")
    return domains


def synthetic_set_is_written(out_dir: str | os.PathLike, *, full: bool = False, seed: int = 0,
                             cases_per_domain: int | None = None, domains=None, verify: bool = True) -> bool:
    """True when `out_dir` holds a finished set written with these parameters (and, with verify,
    every file in the manifest still has its checksum)."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != _params(full, seed, cases_per_domain, _check_domains(domains)):
        return False
    for rel, entry in manifest.get("files", {}).items():
        path = out_dir / rel
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        if verify and sha256_file(path) != entry["sha256"]:
            return False
    return True


def write_synthetic(out_dir: str | os.PathLike, *, full: bool = False, seed: int = 0,
                    cases_per_domain: int | None = None, domains=None, previews: bool = True,
                    progress: bool = True) -> Path:
    """Writes a fresh set into `out_dir` (which must not exist or be empty) and returns it.

    Folders and names follow the real release (ISBI_1.5 uses ``_Segmentation``). Files are built in
    a hidden sibling folder and renamed into place at the end, manifest included.
    """
    out_dir = Path(out_dir)
    domains = _check_domains(domains)
    counts = _case_counts(full, cases_per_domain, domains)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out or "
                              "remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files: dict[str, dict] = {}
        preview_slices = {}
        total = sum(counts.values())
        bar = tqdm(total=total, desc="synthetic prostate set", unit="case", disable=not progress)
        for letter in domains:
            folder = DOMAINS[letter].folder
            suffix = "_Segmentation" if letter == "B" else "_segmentation"
            (tmp / folder).mkdir(parents=True)
            for i in range(counts[letter]):
                image, label, spacing, z0 = render_case(letter, i, seed=seed, full=full)
                case = f"Case{i:02d}"
                for rel, arr in ((f"{folder}/{case}.nii.gz", image),
                                 (f"{folder}/{case}{suffix}.nii.gz", label)):
                    payload = _nifti_bytes(arr, spacing, z0)
                    (tmp / rel).write_bytes(payload)
                    files[rel] = {"sha256": hashlib.sha256(payload).hexdigest(),
                                  "bytes": len(payload)}
                if i == 0:
                    preview_slices[letter] = (image, label, spacing)
                bar.update(1)
        bar.close()
        if previews:
            for rel, payload in _previews(preview_slices).items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(payload)
                files[rel] = {"sha256": hashlib.sha256(payload).hexdigest(),
                              "bytes": len(payload)}
        manifest = {"params": _params(full, seed, cases_per_domain, domains),
                    "cases": counts, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above); a non-empty one makes rmdir fail loudly
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _outdated_set(out_dir: Path) -> bool:
    """True when `out_dir` holds an unmodified set written by another version of this generator and
    nothing else (every file is in its manifest, with the recorded size): safe to replace."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        params, files = manifest["params"], manifest["files"]
        if params.get("generator") != "sammed_fast.data.synthetic" \
                or params.get("version") == GENERATOR_VERSION:
            return False
        present = {p.relative_to(out_dir).as_posix(): p for p in out_dir.rglob("*")
                   if not p.is_dir()}
        present.pop(MANIFEST, None)
        return set(present) == set(files) and all(
            p.is_file() and not p.is_symlink() and p.stat().st_size == files[rel]["bytes"]
            for rel, p in present.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_synthetic(out_dir: str | os.PathLike, *, full: bool = False, seed: int = 0,
                     cases_per_domain: int | None = None, domains=None, previews: bool = True,
                     progress: bool = True) -> Path:
    """Returns `out_dir` after making sure it holds the requested set: does nothing when a complete
    set with these parameters is there, writes one when `out_dir` is missing or empty, replaces a
    set written by another GENERATOR_VERSION (an outdated cache: unmodified, nothing else in the
    folder; the new set is written aside and swapped in), and raises FileExistsError for anything
    else (a different or damaged set, unrelated files)."""
    out_dir = Path(out_dir)
    kw = dict(full=full, seed=seed, cases_per_domain=cases_per_domain, domains=domains)
    if synthetic_set_is_written(out_dir, **kw):
        return out_dir
    if out_dir.is_dir() and not out_dir.is_symlink() and _outdated_set(out_dir):
        fresh = out_dir.parent / f".{out_dir.name}.new-{os.getpid()}"
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(fresh, ignore_errors=True)
        write_synthetic(fresh, previews=previews, progress=progress, **kw)
        try:
            os.rename(out_dir, old)
            os.rename(fresh, out_dir)
        except OSError:
            shutil.rmtree(fresh, ignore_errors=True)
            if synthetic_set_is_written(out_dir, **kw):  # another process replaced it first
                return out_dir
            raise
        shutil.rmtree(old, ignore_errors=True)
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        why = ("its manifest was written with other parameters or files fail their checksums"
               if (out_dir / MANIFEST).is_file() else "it has no manifest.json")
        raise FileExistsError(f"{out_dir} is not a complete synthetic set for seed={seed}, "
                              f"full={full}: {why}. Remove it or choose another --out")
    try:
        return write_synthetic(out_dir, previews=previews, progress=progress, **kw)
    except OSError:
        if synthetic_set_is_written(out_dir, **kw):  # another process finished the same set first
            return out_dir
        raise


def _previews(cases: dict[str, tuple[np.ndarray, np.ndarray, tuple]]) -> dict[str, bytes]:
    """PNG bytes: the mid-gland slice of Case00 of every domain side by side, with and without the
    label outline, and Case00 of the first domain from apex to base."""
    def show(ax, img, lab=None, title=None):
        lo, hi = np.percentile(img, [0.5, 99.5])
        image_panel(ax, img, lab, title=title, vmin=lo, vmax=hi, interpolation="nearest", linewidth=0.8)

    letters = list(cases)
    fig = new_figure((2.1 * len(letters), 4.4))
    axes = fig.subplots(2, len(letters), squeeze=False)
    for col, letter in enumerate(letters):
        image, label, spacing = cases[letter]
        k = int(np.argmax(label.reshape(label.shape[0], -1).sum(1)))
        site = DOMAINS[letter].site
        show(axes[0, col], image[k].astype(np.float32),
             title=f"{letter} {site}\n{spacing[0]:.2f} mm, {spacing[2]:.2f} mm slices")
        show(axes[1, col], image[k].astype(np.float32), label[k])
    fig.tight_layout()
    out = {"previews/domains.png": png_bytes(fig, dpi=110)}

    image, label, _ = cases[letters[0]]
    cols = min(8, image.shape[0])
    fig = new_figure((1.8 * cols, 2.1))
    axes = fig.subplots(1, cols, squeeze=False)[0]
    for ax, k in zip(axes, np.linspace(0, image.shape[0] - 1, cols).round().astype(int)):
        show(ax, image[k].astype(np.float32), label[k], title=f"slice {k}")
    fig.tight_layout()
    out[f"previews/{letters[0]}_apex_to_base.png"] = png_bytes(fig, dpi=110)
    return out


if __name__ == "__main__":  # python -m sammed_fast.data.synthetic: the `sammed-fast synthetic` command
    import sys

    from sammed_fast.cli.synthetic import main

    sys.exit(main())
