"""Box prompts from a file instead of the segmenter (``sammed-fast predict --boxes FILE``).

The file is a CSV with the columns ``image,slice,structure,x0,y0,x1,y1`` (others ignored), one row
per box: ``image`` names an input (its path, relative to the CSV's folder or absolute, or just its
file name), ``slice`` the slice index and ``x0,y0,x1,y1`` an inclusive box in whole pixels of that
slice (x: column, y: row), both in the pixel frame of the volume as the run reads it (reoriented to
LPS, slices along axis 0: the file's own frame for an LPS-stored volume; slice 0 of a 2D image), and
``structure`` a structure name of the run's label table (may be left empty for a single-structure
run). Each box is mapped to the tile frame exactly as the run's own
boxes are made: a tile pixel samples the slice pixel that the run's nearest-exact resize of the
labels takes, and the box becomes the tile pixels whose samples fall inside it
(:func:`pixel_box_to_tile`). A slice and structure without a row gets no box: an empty mask.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from sammed_fast.errors import ConfigError

__all__ = ["BOX_FILE_COLUMNS", "FileBox", "pixel_box_to_tile", "read_box_file", "tile_prompts"]

BOX_FILE_COLUMNS = ("image", "slice", "structure", "x0", "y0", "x1", "y1")


@dataclasses.dataclass(frozen=True)
class FileBox:
    """One row of a box file: slice index, structure index (table order), inclusive pixel box."""

    slice_index: int
    structure: int
    box: tuple[int, int, int, int]
    origin: str  # "<file>, line <n>", for messages


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _tile_span(low: int, high: int, size: int, tile: int) -> tuple[int, int]:
    """Tile pixels j whose nearest-exact sample floor((j + 0.5) * size / tile) lies in [low, high]
    (integer arithmetic; at least one pixel, inside the tile)."""
    first = _ceil_div(2 * low * tile - size, 2 * size)
    last = _ceil_div(2 * (high + 1) * tile - size, 2 * size) - 1
    first = min(max(first, 0), tile - 1)
    return first, min(max(last, first), tile - 1)


def pixel_box_to_tile(box: Sequence[int], height: int, width: int, tile: int) -> tuple[int, int, int, int]:
    """An inclusive (x0, y0, x1, y1) box of an H x W slice -> the inclusive tile-frame box of the
    tile pixels that sample it (the box of the resized rectangle, as the run's ground-truth boxes
    are the boxes of resized labels)."""
    x0, y0, x1, y1 = box
    (tx0, tx1), (ty0, ty1) = _tile_span(x0, x1, width, tile), _tile_span(y0, y1, height, tile)
    return tx0, ty0, tx1, ty1


def _whole(text: str, column: str, origin: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{origin}: {column} {text!r} is not a number") from None
    if not value.is_integer():
        raise ConfigError(f"{origin}: {column} {text!r} is not a whole pixel")
    return int(value)


def _input_of(text: str, base: Path, inputs: Sequence[Path], origin: str) -> Path:
    """The input a row's ``image`` names: the same file, else the only input with that name."""
    named = Path(text).expanduser()
    named = named if named.is_absolute() else base / named
    for path in inputs:
        if named.exists() and path.exists() and named.resolve() == path.resolve():
            return path
    by_name = [path for path in inputs if path.name == Path(text).name]
    if len(by_name) == 1:
        return by_name[0]
    raise ConfigError(f"{origin}: image {text!r} is {'several' if by_name else 'none'} of the inputs")


def read_box_file(path: str | Path, inputs: Sequence[Path], structures: Sequence[str]
                  ) -> dict[Path, list[FileBox]]:
    """Every row of box file ``path``, by input; ConfigError naming the file and line for a missing
    column, an unknown image or structure, or a box that is not whole pixels with x0 <= x1 and
    y0 <= y1 (slice ranges and image bounds are checked per input, see :func:`tile_prompts`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError(f"--boxes {path}: cannot read it ({error.strerror or error})") from error
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in BOX_FILE_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ConfigError(f"--boxes {path}: missing column(s) {', '.join(missing)}; a box file has the "
                          f"columns {','.join(BOX_FILE_COLUMNS)}")
    out: dict[Path, list[FileBox]] = {p: [] for p in inputs}
    for line, row in enumerate(reader, start=2):
        origin = f"{path}, line {line}"
        source = _input_of(row["image"] or "", path.parent, inputs, origin)
        name = (row["structure"] or "").strip()
        if not name and len(structures) == 1:
            structure = 0
        elif name in structures:
            structure = list(structures).index(name)
        else:
            raise ConfigError(f"{origin}: unknown structure {name!r}; the run's structures are "
                              f"{', '.join(structures)}")
        slice_index = _whole(row["slice"], "slice", origin)
        x0, y0, x1, y1 = (_whole(row[c], c, origin) for c in ("x0", "y0", "x1", "y1"))
        if x0 > x1 or y0 > y1:
            raise ConfigError(f"{origin}: box ({x0}, {y0}, {x1}, {y1}) needs x0 <= x1 and y0 <= y1")
        out[source].append(FileBox(slice_index, structure, (x0, y0, x1, y1), origin))
    return out


def tile_prompts(entries: Sequence[FileBox], *, slices: int, height: int, width: int, structures: int,
                 tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One input's file boxes -> (boxes (S*C,4) float32 tile frame, keep (S*C,) bool), row s*C+c
    for slice s, structure c; rows without a box are kept False. A slice out of range, a box
    outside the H x W image or two boxes for one slice and structure -> ConfigError."""
    boxes = torch.full((slices * structures, 4), -1.0)
    keep = torch.zeros(slices * structures, dtype=torch.bool)
    for entry in entries:
        x0, y0, x1, y1 = entry.box
        if not 0 <= entry.slice_index < slices:
            raise ConfigError(f"{entry.origin}: slice {entry.slice_index} is outside the image's "
                              f"{slices} slice(s)")
        if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
            raise ConfigError(f"{entry.origin}: box ({x0}, {y0}, {x1}, {y1}) leaves the {width} x "
                              f"{height} image")
        row = entry.slice_index * structures + entry.structure
        if keep[row]:
            raise ConfigError(f"{entry.origin}: a second box for slice {entry.slice_index} and this "
                              "structure (one box per slice and structure)")
        boxes[row] = torch.tensor(pixel_box_to_tile(entry.box, height, width, tile), dtype=torch.float32)
        keep[row] = True
    return boxes, keep
