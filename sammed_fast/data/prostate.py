"""Reader of the common six-site prostate MRI release (and of the synthetic set written in its layout).

Layout: ``<root>/<folder>/CaseNN.nii.gz`` with ``CaseNN_segmentation.nii.gz`` (``_Segmentation`` in
ISBI_1.5); ``.nii`` is accepted too. Labels > 0 are prostate.

Orientation. Every volume is brought to one canonical voxel orientation on read, LPS (the DICOM
patient frame, in which the release and the synthetic set are stored): NIfTI axis i runs to the
patient's left, j to posterior, k to superior, whatever order and directions the file uses (found
from its affine, ``nibabel.orientations.io_orientation``). So slices are always axial, also for a
volume stored slice-axis-first. A file already in LPS is read as stored.

Axis convention. A canonical voxel (i, j, k) is ``Volume.image[k, j, i]``: slices run along the
third axis, rows along the second, columns along the first. ``to_nifti_order`` undoes this (the
transpose is its own inverse); ``save_like`` writes an (S, H, W) prediction back in the input
file's own orientation, with its affine and header.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, NamedTuple, Sequence

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from sammed_fast.atomic import write_bytes_atomic
from sammed_fast.files import natural_key

__all__ = [
    "DOMAINS", "Domain", "Volume", "CaseFiles", "find_cases", "read_case", "load_domain",
    "split_source", "normalise_intensity", "to_nifti_order", "save_like", "domain_letter", "read_nifti",
    "CANONICAL_AXES",
]

#: The voxel orientation every volume is read in (see module docs).
CANONICAL_AXES = ("L", "P", "S")
_CANONICAL = nib.orientations.axcodes2ornt(CANONICAL_AXES)


class Domain(NamedTuple):
    site: str
    folder: str


#: letter -> (site name, folder name in the common release), in the protocol's order A..F.
DOMAINS: Mapping[str, Domain] = MappingProxyType({
    "A": Domain("RUNMC", "ISBI"),
    "B": Domain("BMC", "ISBI_1.5"),
    "C": Domain("HCRUDB", "I2CVB"),
    "D": Domain("UCL", "UCL"),
    "E": Domain("BIDMC", "BIDMC"),
    "F": Domain("HK", "HK"),
})

_IMAGE_RE = re.compile(r"^(Case\d+)\.nii(\.gz)?$")
_LABEL_RE = re.compile(r"^(Case\d+)_[Ss]egmentation\.nii(\.gz)?$")


def domain_letter(letter: str) -> str:
    """Validates a domain letter (case-insensitive) and returns it upper-case."""
    if not isinstance(letter, str) or letter.upper() not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {letter!r}")
    return letter.upper()


@dataclass(eq=False)
class Volume:
    """One normalised case.

    image: float32 (S, H, W), clipped at its 99.5th percentile and z-scored.
    label: uint8 (S, H, W) in {0, 1}.
    spacing: voxel size in mm in canonical axis order (i, j, k), i.e. (W, H, S) of the arrays.
    affine: float64 (4, 4) voxel -> world of the image file (its stored voxel order).
    orientation: the file's voxel orientation (nibabel ornt, (3, 2)); None when it is canonical.
    """

    domain: str
    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    image_path: Path
    label_path: Path | None = None
    orientation: np.ndarray | None = None

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.case_id)


class CaseFiles(NamedTuple):
    case_id: str
    image: Path
    label: Path


def to_nifti_order(array):
    """(S, H, W) array -> NIfTI (i, j, k) order; also the inverse. Works on numpy arrays and tensors."""
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (S, H, W), got shape {tuple(array.shape)}")
    return array.transpose(2, 1, 0) if isinstance(array, np.ndarray) else array.permute(2, 1, 0)


def find_cases(root: str | os.PathLike, letter: str) -> list[CaseFiles]:
    """Lists the (image, label) pairs of one domain, sorted by case id; checks the pairing only."""
    letter = domain_letter(letter)
    folder = Path(root) / DOMAINS[letter].folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"domain {letter} ({DOMAINS[letter].site}): folder {folder} does not exist")
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        for regex, found in ((_IMAGE_RE, images), (_LABEL_RE, labels)):
            match = regex.match(path.name)
            if match:
                case_id = match.group(1)
                if case_id in found:
                    raise ValueError(f"{path}: a second file for {case_id} "
                                     f"(already have {found[case_id].name})")
                found[case_id] = path
    if not images:
        raise ValueError(f"{folder}: no CaseNN.nii[.gz] images in this folder "
                         f"(domain {letter} is empty)")
    for case_id, path in labels.items():
        if case_id not in images:
            raise FileNotFoundError(f"{path}: label without its image {case_id}.nii.gz")
    cases = []
    for case_id in sorted(images, key=natural_key):
        if case_id not in labels:
            raise FileNotFoundError(f"{images[case_id]}: no label file "
                                    f"{case_id}_segmentation.nii.gz next to it")
        cases.append(CaseFiles(case_id, images[case_id], labels[case_id]))
    return cases


def read_nifti(path: Path, what: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The 3D data array in the file's own voxel order, and the image; trailing singleton axes are
    dropped. Complex, RGB (structured) and other non-real data are refused naming the file."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as error:  # nibabel raises many types for broken files; name the file once
        raise ValueError(f"{path}: cannot read the {what} as NIfTI "
                         f"({type(error).__name__}: {error})") from error
    if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.integer)
                                             or np.issubdtype(data.dtype, np.floating)
                                             or data.dtype == np.bool_):
        raise ValueError(f"{path}: the {what} has data type {data.dtype} (e.g. complex or RGB); "
                         "a real-valued single-channel volume is needed")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: the {what} must be a 3D volume, got shape {data.shape}")
    if min(data.shape) == 0:
        raise ValueError(f"{path}: the {what} is empty, shape {data.shape}")
    return data, img


def file_orientation(img: nib.Nifti1Image, path: Path) -> np.ndarray | None:
    """The file's voxel orientation (nibabel ornt), None when it is already canonical (LPS)."""
    ornt = nib.orientations.io_orientation(img.affine)
    if np.isnan(ornt).any():
        raise ValueError(f"{path}: the affine does not say which voxel axis is which (degenerate "
                         f"matrix {np.asarray(img.affine)[:3, :3].tolist()}); fix the header")
    return None if np.array_equal(ornt, _CANONICAL) else ornt


def to_canonical(data: np.ndarray, orientation: np.ndarray | None) -> np.ndarray:
    """A volume in its file's voxel order -> canonical (LPS) voxel order (see module docs)."""
    if orientation is None:
        return data
    return nib.orientations.apply_orientation(data, nib.orientations.ornt_transform(orientation, _CANONICAL))


def from_canonical(data: np.ndarray, orientation: np.ndarray | None) -> np.ndarray:
    """The inverse of :func:`to_canonical`: canonical voxel order -> the file's own."""
    if orientation is None:
        return data
    return nib.orientations.apply_orientation(data, nib.orientations.ornt_transform(_CANONICAL, orientation))


def canonical_spacing(img: nib.Nifti1Image, orientation: np.ndarray | None) -> tuple[float, float, float]:
    """Voxel sizes (mm) in canonical axis order."""
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    if orientation is None:
        return tuple(zooms)
    spacing = [0.0] * 3
    for axis, (new_axis, _) in enumerate(orientation):
        spacing[int(new_axis)] = zooms[axis]
    return tuple(spacing)


def normalise_intensity(image: np.ndarray, *, percentile: float = 99.5,
                        name: str = "image") -> np.ndarray:
    """Clips above the volume's `percentile`-th percentile, then z-scores; float32, same shape."""
    x = np.asarray(image, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    x = np.minimum(x, np.percentile(x, percentile))
    std = x.std()
    if not std > 0:
        raise ValueError(f"{name}: constant intensity, cannot be z-scored")
    return ((x - x.mean()) / std).astype(np.float32)


def read_case(files: CaseFiles, letter: str) -> Volume:
    """Reads, checks, reorients (see module docs) and normalises one case; errors name the
    offending file."""
    image, img = read_nifti(files.image, "image")
    label, lab_img = read_nifti(files.label, "label")
    orientation = file_orientation(img, files.image)
    image = to_canonical(image, orientation)
    label = to_canonical(np.asarray(label), file_orientation(lab_img, files.label))
    if image.shape != label.shape:
        raise ValueError(f"{files.label}: label shape {label.shape} does not match the image "
                         f"{files.image.name} shape {image.shape} (both in canonical orientation)")
    if not np.allclose(img.affine, lab_img.affine, rtol=1e-4, atol=1e-3):
        warnings.warn(f"{files.label}: affine differs from its image's; using the image's",
                      stacklevel=3)
    if np.issubdtype(label.dtype, np.floating) and not np.isfinite(label).all():
        raise ValueError(f"{files.label}: label contains NaN or infinite values")
    spacing = canonical_spacing(img, orientation)
    if not all(z > 0 for z in spacing):
        raise ValueError(f"{files.image}: voxel sizes must be positive, header says {spacing}")
    return Volume(
        domain=letter,
        case_id=files.case_id,
        image=np.ascontiguousarray(to_nifti_order(
            normalise_intensity(np.asarray(image, dtype=np.float32), name=str(files.image)))),
        label=np.ascontiguousarray(to_nifti_order((label > 0).astype(np.uint8))),
        spacing=spacing,
        affine=np.asarray(img.affine, dtype=np.float64),
        image_path=files.image,
        label_path=files.label,
        orientation=orientation,
    )


def load_domain(root: str | os.PathLike, letter: str, *, progress: bool = False) -> list[Volume]:
    """All volumes of domain `letter` under `root`, sorted by case id."""
    letter = domain_letter(letter)
    cases = find_cases(root, letter)
    it = tqdm(cases, desc=f"domain {letter}", unit="case", disable=not progress, leave=False)
    return [read_case(files, letter) for files in it]


def split_source(volumes: Sequence[Volume], *,
                 fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, list[Volume]]:
    """Source-domain split by sorted case id: first ~70% train, next ~10% val, last ~20% test.

    val and test get round-half-up(fraction * n) cases but at least one each; train the rest.
    """
    volumes = list(volumes)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    domains = {v.domain for v in volumes}
    if len(domains) > 1:
        raise ValueError(f"volumes come from several domains {sorted(domains)}; split one source")
    n = len(volumes)
    n_val = max(1, math.floor(fractions[1] * n + 0.5))
    n_test = max(1, math.floor(fractions[2] * n + 0.5))
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} volumes are too few for a train/val/test split (need at least 3)")
    ordered = sorted(volumes, key=lambda v: natural_key(v.case_id))
    n_train = n - n_val - n_test
    return {"train": ordered[:n_train], "val": ordered[n_train:n_train + n_val],
            "test": ordered[n_train + n_val:]}


def save_like(volume: Volume, array: np.ndarray, path: str | os.PathLike, *,
              description: str | None = None) -> Path:
    """Writes an (S, H, W) array (e.g. a mask) as NIfTI in the input image's own orientation, with
    its affine and header; ``description`` goes into the header's descrip field (80 bytes at most).

    The file appears atomically (temp name, then rename); ``.nii.gz`` is gzip-compressed.
    """
    array = np.asarray(array)
    if array.shape != volume.image.shape:
        raise ValueError(f"array shape {array.shape} does not match volume "
                         f"{volume.domain}/{volume.case_id} shape {volume.image.shape}")
    ref = nib.load(str(volume.image_path))
    header = ref.header.copy()
    header.set_data_dtype(array.dtype)
    if description is not None:
        header["descrip"] = description.encode()[:79]
    stored = from_canonical(to_nifti_order(array), volume.orientation)
    out = nib.Nifti1Image(np.ascontiguousarray(stored), ref.affine, header)
    path = Path(path)
    payload = out.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    write_bytes_atomic(path, payload)
    return path
