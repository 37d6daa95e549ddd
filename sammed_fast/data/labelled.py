"""Reading one described case (NIfTI volume or 2D image) with its integer label map.

``read_described_case(case, table)`` returns a ``LabelledVolume``: a ``Volume`` (so the existing
pipeline takes it) whose ``label`` is the binary union of the table's structures, with the integer
``label_map`` and the table kept. NIfTI files are read as the six-site reader reads them (same
helpers): reoriented to LPS, (S, H, W), clipped at the 99.5th percentile and z-scored. 2D images
follow ``sammed_fast.data.images2d``: (1, H, W) grey or (1, H, W, 3) RGB, normalised per channel.

``inspect_case`` reads a case and lists every problem with it instead of stopping at the first;
``DatasetDescription.problems`` is built on it, so validation and reading share one code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sammed_fast.data import images2d
from sammed_fast.data.labels import LabelTable, integer_label_map
from sammed_fast.data.prostate import (
    Volume, canonical_spacing, file_orientation, normalise_intensity, read_nifti, to_canonical,
    to_nifti_order,
)
from sammed_fast.errors import ConfigError

if TYPE_CHECKING:
    from sammed_fast.data.manifest import DescribedCase

__all__ = ["LabelledVolume", "read_described_case", "read_image", "inspect_case", "file_ending",
           "NIFTI_ENDINGS", "AFFINE_TOLERANCE"]

NIFTI_ENDINGS = (".nii.gz", ".nii")
#: largest allowed absolute difference (mm) between an image's and its label's affine entries.
AFFINE_TOLERANCE = 1e-4
PIXEL_SPACING_2D = (1.0, 1.0, 1.0)


def file_ending(path: str | Path) -> str:
    """The lower-case ending that tells the format: ``.nii.gz`` (two suffixes) or the last suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


@dataclass(eq=False, kw_only=True)
class LabelledVolume(Volume):
    """A ``Volume`` read with a label table.

    image: float32 (S, H, W), or (1, H, W, 3) for an RGB 2D image (channels last).
    label: uint8 (S, H, W) in {0, 1}: the union of the table's structures.
    label_map: int32 (S, H, W), the label values as stored (S = 1 for a 2D image).
    labels: the table that names the structures.
    """

    label_map: np.ndarray
    labels: LabelTable

    @property
    def structures(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def is_rgb(self) -> bool:
        return self.image.ndim == 4

    def masks(self) -> np.ndarray:
        """bool (C, S, H, W), one mask per structure in table order."""
        return self.labels.masks(self.label_map)


@dataclass(frozen=True, kw_only=True)
class _Read:
    """One file, read: array in (S, H, W[, 3]) order; affine/orientation None for 2D files."""

    array: np.ndarray
    affine: np.ndarray | None = None
    orientation: np.ndarray | None = None
    spacing: tuple[float, float, float] = PIXEL_SPACING_2D


def _read_nifti_file(path: Path, what: str, *, prepare=None) -> _Read:
    """A NIfTI file in (S, H, W) order; ``prepare`` (e.g. intensity normalisation) runs on the
    canonical array before the axes are reordered, as the six-site reader does, so every NIfTI
    image gets the very same float32 values whichever reader reads it."""
    try:
        data, img = read_nifti(path, what)
        orientation = file_orientation(img, path)
        canonical = to_canonical(data, orientation)
        if prepare is not None:
            canonical = prepare(canonical)
    except ValueError as error:  # the prostate helpers raise ValueError naming the file
        raise ConfigError(str(error)) from error
    return _Read(array=np.ascontiguousarray(to_nifti_order(canonical)),
                 affine=np.asarray(img.affine, dtype=np.float64), orientation=orientation,
                 spacing=canonical_spacing(img, orientation))


def read_image(path: Path) -> _Read:
    """An image file as the method sees it: a NIfTI volume reoriented, normalised (six-site reader's
    normalisation) and in (S, H, W) order, or a 2D image (1, H, W[, 3]) normalised per channel;
    ConfigError naming the file when it cannot be read."""
    if file_ending(path) in NIFTI_ENDINGS:
        read = _read_nifti_file(path, "image", prepare=lambda canonical: normalise_intensity(
            np.asarray(canonical, dtype=np.float32), name=str(path)))
        if not all(z > 0 for z in read.spacing):
            raise ConfigError(f"{path}: voxel sizes must be positive, header says {read.spacing}")
        return read
    image = images2d.normalise_image_2d(images2d.read_image_2d(path), name=str(path))
    return _Read(array=np.ascontiguousarray(image[None]))


def _read_label(path: Path) -> _Read:
    if file_ending(path) in NIFTI_ENDINGS:
        read = _read_nifti_file(path, "label")
        return _Read(array=integer_label_map(read.array, str(path)), affine=read.affine,
                     orientation=read.orientation, spacing=read.spacing)
    return _Read(array=images2d.read_label_2d(path)[None])


def _supported(path: Path) -> str | None:
    """Why ``path``'s ending cannot be read, or None."""
    ending = file_ending(path)
    if ending in NIFTI_ENDINGS or ending in images2d.IMAGE_ENDINGS_2D:
        return None
    return (f"{path}: unsupported file ending {ending or '(none)'!r} (NIfTI "
            f"{', '.join(NIFTI_ENDINGS)} or 2D {', '.join(images2d.IMAGE_ENDINGS_2D)})")


def _read_or_problem(path: Path, reader, what: str, problems: list[str]) -> _Read | None:
    """``reader(path)``, or None after appending why it failed (missing, unsupported, unreadable)."""
    if not path.is_file():
        problems.append(f"{path}: {what} file not found" if not path.exists()
                        else f"{path}: the {what} is not a file")
        return None
    unsupported = _supported(path)
    if unsupported:
        problems.append(unsupported)
        return None
    try:
        return reader(path)
    except ConfigError as error:
        problems.append(str(error))
        return None


def inspect_case(case: "DescribedCase", table: LabelTable,
                 ) -> tuple[_Read | None, _Read | None, list[str]]:
    """Reads a case's image and label; returns both (None where unreadable) and every problem
    found: missing/unreadable files, 2D image with 3D label (or back), label values outside
    ``table``, image/label shape or affine mismatch. Each problem starts with the file's path."""
    problems: list[str] = []
    image = _read_or_problem(case.image, read_image, "image", problems)
    label = _read_or_problem(case.label, _read_label, "label", problems)
    if image is None or label is None:
        return image, label, problems
    if (image.affine is None) != (label.affine is None):
        problems.append(f"{case.label}: a {'2D' if label.affine is None else 'NIfTI'} label for "
                        f"the {'2D' if image.affine is None else 'NIfTI'} image {case.image.name}; "
                        "use the same kind for both")
        return image, label, problems
    unknown = table.unknown_values(label.array)
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        problems.append(f"{case.label}: label values {shown} are not in the label table "
                        f"({table.spec()}; 0 is background)")
    if image.array.shape[:3] != label.array.shape:
        problems.append(f"{case.label}: label shape {label.array.shape} does not match the image "
                        f"{case.image.name} shape {image.array.shape[:3]} (S, H, W after "
                        "reorientation)")
    elif image.affine is not None and not np.allclose(image.affine, label.affine, rtol=0,
                                                      atol=AFFINE_TOLERANCE):
        difference = float(np.abs(image.affine - label.affine).max())
        problems.append(f"{case.label}: affine differs from the image {case.image.name}'s by up to "
                        f"{difference:.3g} (tolerance {AFFINE_TOLERANCE}); resample or fix the header")
    return image, label, problems


def read_described_case(case: "DescribedCase", table: LabelTable) -> LabelledVolume:
    """The case as a ``LabelledVolume``; ConfigError listing every problem when it cannot be read
    cleanly (see ``inspect_case``)."""
    image, label, problems = inspect_case(case, table)
    if problems:
        raise ConfigError(f"case {case.case_id} (domain {case.domain!r}) cannot be read:\n  "
                          + "\n  ".join(problems))
    return LabelledVolume(
        domain=case.domain,
        case_id=case.case_id,
        image=image.array,
        label=table.union(label.array),
        spacing=image.spacing,
        affine=image.affine if image.affine is not None else np.eye(4),
        image_path=case.image,
        label_path=case.label,
        orientation=image.orientation,
        label_map=label.array,
        labels=table,
    )


def with_label_table(volume: Volume, table: LabelTable) -> LabelledVolume:
    """A volume read by the six-site reader (label binarised) with its label file's values kept
    apart by ``table``: the label map is read again in the reader's orientation; values outside the
    table are a ConfigError naming the file."""
    label = _read_label(Path(volume.label_path))
    if label.array.shape != volume.label.shape:
        raise ConfigError(f"{volume.label_path}: label shape {label.array.shape} does not match its "
                          f"volume's {volume.label.shape}")
    unknown = table.unknown_values(label.array)
    if unknown:
        raise ConfigError(f"{volume.label_path}: label values {', '.join(map(str, unknown[:10]))} are not "
                          f"in the label table ({table.spec()}; 0 is background)")
    fields = {name: getattr(volume, name) for name in volume.__dataclass_fields__ if name != "label"}
    return LabelledVolume(**fields, label=table.union(label.array), label_map=label.array, labels=table)
