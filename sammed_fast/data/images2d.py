"""2D image and label readers (PNG, JPEG, TIFF, BMP through Pillow).

Conventions (docs/byod.md):

- A 2D case is a one-slice volume: a grey image is float32 (1, H, W); a colour image stays colour,
  float32 (1, H, W, 3) with the channels R, G, B last. Alpha is dropped; palette images are
  expanded to RGB (images) or read as their palette indices (labels).
- Intensities are normalised per image and per channel by the volumes' rule: clip each channel at
  its 99.5th percentile, then z-score it (mean 0, standard deviation 1 over the image's pixels).
  A constant channel becomes 0; a wholly constant image is refused.
- Label maps are integer images (PNG or TIFF; grey, 16-bit or palette-indexed) read as their
  values, int32 (1, H, W). JPEG labels are refused (lossy compression changes label values) and so
  are colour labels unless their three channels are equal.
- Row 0 is the top of the image, column 0 its left, as stored; spacing is one pixel (1.0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sammed_fast.errors import ConfigError

__all__ = ["IMAGE_ENDINGS_2D", "LABEL_ENDINGS_2D", "is_2d_path", "read_image_2d", "read_label_2d",
           "normalise_image_2d"]

IMAGE_ENDINGS_2D = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_ENDINGS_2D = (".png", ".tif", ".tiff", ".bmp")
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}


def is_2d_path(path: str | Path) -> bool:
    """True when the file ending is one of ``IMAGE_ENDINGS_2D`` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_ENDINGS_2D


def _open(path: Path, what: str):
    """The decoded Pillow image; one frame only. ConfigError naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            img.load()
            if frames != 1:
                raise ConfigError(f"{path}: the {what} has {frames} frames; one 2D image is needed "
                                  "(store a volume as NIfTI)")
            return img.copy()
    except ConfigError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise ConfigError(f"{path}: cannot read the {what} as an image "
                          f"({type(error).__name__}: {error})") from error


def read_image_2d(path: str | Path) -> np.ndarray:
    """Raw pixel values as float32: (H, W) for a grey image, (H, W, 3) for a colour one."""
    path = Path(path)
    img = _open(path, "image")
    if img.mode in _GREY_MODES:
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.float32)
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def read_label_2d(path: str | Path) -> np.ndarray:
    """Label values, int32 (H, W). Palette images give their indices."""
    path = Path(path)
    if path.suffix.lower() not in LABEL_ENDINGS_2D:
        raise ConfigError(f"{path}: a label map must be lossless (PNG or TIFF); "
                          f"{path.suffix} compression changes label values")
    img = _open(path, "label")
    if img.mode in _GREY_MODES or img.mode == "P":
        label = np.asarray(img)
    else:
        channels = np.asarray(img.convert("RGB"))
        if not (channels == channels[..., :1]).all():
            raise ConfigError(f"{path}: the label is a colour image (mode {img.mode}); store label "
                              "values as a grey or palette-indexed PNG")
        label = channels[..., 0]
    from sammed_fast.data.labels import integer_label_map

    return integer_label_map(label, str(path))


def normalise_image_2d(image: np.ndarray, *, percentile: float = 99.5,
                       name: str = "image") -> np.ndarray:
    """(H, W) or (H, W, C) -> float32, same shape: per channel, clip at the `percentile`-th
    percentile, then z-score; a constant channel becomes 0, a constant image is refused."""
    x = np.asarray(image, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ConfigError(f"{name}: contains NaN or infinite values")
    channels = x[..., None] if x.ndim == 2 else x
    flat = channels.reshape(-1, channels.shape[-1])
    flat = np.minimum(flat, np.percentile(flat, percentile, axis=0))
    std = flat.std(axis=0)
    if not (std > 0).any():
        raise ConfigError(f"{name}: constant intensity, cannot be z-scored")
    out = np.where(std > 0, (flat - flat.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)
    return out.reshape(x.shape).astype(np.float32)
