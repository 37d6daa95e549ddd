"""Applies a finished run to new volumes: ``python -m sammed_fast.predict --run DIR --input PATH
--output PATH``.

PATH is a NIfTI volume or a folder of them (``*.nii`` / ``*.nii.gz``; ``*_segmentation`` labels and
earlier ``*_mask`` outputs are skipped), or a dataset description (a manifest .csv/.json or an
nnU-Net raw folder, docs/byod.md): the images of all its cases, in its case order. A 2D image (PNG,
JPEG, TIFF, BMP; grey or RGB) is a one-slice case normalised as a description's images are; its
mask is ``<stem>_mask.png``. Each volume goes through the run's own pipeline: the
training normalisation (clip at the 99.5th percentile, z-score), slices resized to the run's tile
size, the selected segmenter, the box filter (``ops.boxes_from_probs`` with the run's theta1 and
downscale), the run's SAM with its selected decoder on merged 2x2 canvases, and theta2. Slices of
consecutive volumes share canvases and batches, in input order, exactly as the run's evaluation
packs a split, so predicting a split's volumes reproduces its evaluation masks. SAM probabilities
return to the volume's in-plane size bilinearly and are thresholded there (as the evaluation
scores them). A run with several structures writes a label map instead: each structure's mask
painted with its label value in table order, later structures over earlier ones
(``LabelTable.paint``). One uint8 mask per input, with the input's affine and header, appears atomically as
``<stem>_mask.nii.gz`` in the output folder (or at ``--output`` itself when it names a .nii/.nii.gz
file and the input is one file); ``--overlays`` adds ``<stem>_overlay.png``. Masks are written in
each input's own voxel orientation. An output that is one of the inputs, or an existing file that
is not a mask written by this command (its NIfTI header's descrip says "sammed_fast mask"), is
refused before any work: a scan is never replaced.

``boxes`` (``--boxes FILE``) takes the box prompts from a CSV instead of the segmenter
(``experiment.box_file``: ``image,slice,structure,x0,y0,x1,y1``, mapped to the tile frame as the
run's boxes are); a slice and structure without a box gets an empty mask.

An unreadable input is reported on stderr, naming the file, and the others are still predicted;
the command then exits with status 1. The CLI parses its arguments and calls :func:`predict`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from sammed_fast.data.labelled import read_image
from sammed_fast.data.prostate import Volume, save_like
from sammed_fast.data.labels import LabelTable
from sammed_fast.data.manifest import describe_dataset
from sammed_fast.data.images2d import is_2d_path
from sammed_fast.data.slices import resize_images, slice_images
from sammed_fast.atomic import write_bytes_atomic
from sammed_fast.errors import ConfigError
from sammed_fast.files import natural_key
from sammed_fast.experiment.box_file import read_box_file, tile_prompts
from sammed_fast.experiment.config import TrainConfig, is_description
from sammed_fast.experiment.devices import resolve_device
from sammed_fast.experiment.run_method import RunMethod, open_finished_run
from sammed_fast.method.predictor import Predictor
from sammed_fast.plotting import image_panel, new_figure, png_bytes

__all__ = ["PredictionFailed", "list_inputs", "check_outputs", "load_run_predictor", "predict"]

DEFAULT_BATCH = 32  # slices per step: 8 canvases
#: Written into every predicted mask's NIfTI header (descrip): only such files are ever replaced.
MASK_DESCRIPTION = "sammed_fast mask"
OVERLAY_SLICES = 3
_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$", re.IGNORECASE)
_SKIPPED = re.compile(r"_(segmentation|mask)$", re.IGNORECASE)


class PredictionFailed(RuntimeError):
    """Some inputs could not be predicted (the others were written): ``failed`` maps each input to
    its error message, ``written`` lists the masks that were written."""

    def __init__(self, *, failed: dict[Path, str], written: list[Path]) -> None:
        self.failed, self.written = failed, written
        super().__init__(f"{len(failed)} input(s) failed: " + "; ".join(failed.values()))


# ----------------------------------------------------------------------------- inputs and outputs
def _stem(path: Path) -> str:
    match = _NIFTI.match(path.name)
    return match.group("stem") if match else (path.stem if is_2d_path(path) else path.name)


def list_inputs(path: str | Path) -> list[Path]:
    """The volumes to predict: ``path`` itself, or the NIfTI files of folder ``path`` in natural
    name order (Case2 before Case10), without labels (``*_segmentation``) and masks (``*_mask``), or
    the images of every case of the dataset description ``path`` (a manifest or nnU-Net folder)."""
    path = Path(path)
    if is_description(path):  # labels are not read: any table lists the images
        return [case.image for case in describe_dataset(path, labels="any=*").cases]
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"--input {path}: no such file or folder")
    found = [p for p in path.iterdir() if p.is_file() and _NIFTI.match(p.name)
             and not _SKIPPED.search(_stem(p))]
    if not found:
        raise ConfigError(f"--input {path}: the folder holds no NIfTI volumes (*.nii, *.nii.gz)")
    return sorted(found, key=lambda p: natural_key(p.name))


def _output_paths(inputs: list[Path], input_is_file: bool, output: Path) -> list[Path]:
    names_a_file = _NIFTI.match(output.name) is not None
    if names_a_file and input_is_file:
        return [output]
    if names_a_file:
        raise ConfigError(f"--output {output} names a NIfTI file, but --input is a folder: give a folder")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    return [output / f"{_stem(p)}_mask{'.png' if is_2d_path(p) else '.nii.gz'}" for p in inputs]


def _is_our_mask(path: Path) -> bool:
    """Whether the existing file ``path`` is a mask this command wrote (its header, or a PNG's
    Description text, says so)."""
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as image:
                return image.info.get("Description") == MASK_DESCRIPTION
        except Exception:  # not an image at all: certainly not ours
            return False
    try:
        description = bytes(nib.load(str(path)).header["descrip"].item())
    except Exception:  # not NIfTI at all, or unreadable: certainly not ours
        return False
    return description.rstrip(b"\0").startswith(MASK_DESCRIPTION.encode())


def check_outputs(inputs: list[Path], targets: list[Path]) -> None:
    """Refuses (ConfigError naming the files) outputs that would replace an input, or an existing
    file that is not a mask written by this command: a user's scan is never overwritten."""
    for source, target in zip(inputs, targets):
        if not target.exists():
            continue
        for other in inputs:
            if os.path.samefile(target, other):
                raise ConfigError(f"--output {target} is the input {other}: writing the mask there "
                                  "would replace the scan; choose another --output")
        if not _is_our_mask(target):
            raise ConfigError(f"--output: {target} (the mask of {source}) exists and is not a mask "
                              "written by sammed_fast.predict; it is left alone: move it or choose "
                              "another --output")


def _read_volume(path: Path) -> Volume:
    """The input as the run saw its volumes (``data.labelled.read_image``): float32 (S,H,W)
    normalised, a 2D image (1,H,W) or (1,H,W,3) RGB normalised per channel. Errors name it."""
    read = read_image(path)
    return Volume(domain="", case_id=_stem(path), image=read.array, label=np.zeros(0, dtype=np.uint8),
                  spacing=read.spacing, image_path=path, orientation=read.orientation,
                  affine=read.affine if read.affine is not None else np.eye(4))


# ----------------------------------------------------------------------------- the run's method
def load_run_predictor(run_dir: Path, device: str) -> Predictor:
    """The method of a finished run: its selected segmenter, box filter and SAM with its selected
    decoder (the very objects its evaluation uses); a missing or incomplete run folder raises
    ConfigError naming what is missing."""
    return _open_run(run_dir, device)[0]


def _open_run(run_dir: Path, device: str) -> tuple[Predictor, TrainConfig]:
    """load_run_predictor's predictor and the run's config, the run folder read once."""
    run, config = open_finished_run(run_dir)
    missing = [str(run.paths.checkpoint(name, "best")) for name in ("segmenter", "decoder")
               if not run.paths.checkpoint(name, "best").is_file()]
    if missing:
        raise ConfigError(f"--run {run_dir}: incomplete run folder, missing {', '.join(missing)}; "
                          f"finish it with `python -m sammed_fast.train --out {run_dir} --resume`")
    method = RunMethod(run, config, resolve_device(device), create_sam=False)
    method.with_segmenter()
    return method.with_decoder(), config


# ----------------------------------------------------------------------------- one volume's output
@dataclasses.dataclass(eq=False)
class _Job:
    """One input on its way: its slices at the tile size and the SAM probabilities filled so far."""

    source: Path
    target: Path
    volume: Volume
    tiles: torch.Tensor  # (S,1,t,t)
    probs: torch.Tensor  # (S,t,t), or (S,C,t,t) for C > 1 structures
    #: with a box file: (boxes (S*C,4) tile frame, keep (S*C,)), row s*C+c
    prompts: tuple[torch.Tensor, torch.Tensor] | None = None
    filled: int = 0


def _write_overlay(path: Path, volume: Volume, mask: np.ndarray) -> None:
    """A PNG of up to OVERLAY_SLICES slices (the largest masks, else the middle one) with the mask contour."""
    areas = mask.reshape(mask.shape[0], -1).sum(1, dtype=np.int64)
    largest = np.argsort(-areas, kind="stable")[:min(OVERLAY_SLICES, int((areas > 0).sum()))]
    chosen = sorted(largest.tolist()) or [mask.shape[0] // 2]
    fig = new_figure((3 * len(chosen), 3.2))
    axes = fig.subplots(1, len(chosen), squeeze=False)
    for ax, s in zip(axes[0], chosen):
        image = volume.image[s] if volume.image.ndim == 3 else volume.image[s].mean(-1)  # RGB: grey
        image_panel(ax, image, mask[s], title=f"{volume.case_id} slice {s}")
    fig.tight_layout()
    write_bytes_atomic(path, png_bytes(fig, dpi=100))


def _save_png(mask: np.ndarray, path: Path) -> None:
    """An (H,W) mask or label map as a grey PNG (16-bit beyond 255) marked as ours (atomic)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Description", MASK_DESCRIPTION)
    buffer = io.BytesIO()
    Image.fromarray(mask if mask.max(initial=0) <= 255 else mask.astype(np.uint16)).save(
        buffer, format="PNG", pnginfo=info)
    write_bytes_atomic(path, buffer.getvalue())


def _finish(job: _Job, theta2: float, overlays: bool, table: LabelTable) -> None:
    """Probabilities at the tile size -> the volume's in-plane size (bilinear) -> mask > theta2 ->
    NIfTI with the input's affine and header (atomic); C > 1 structures: their masks painted into
    one label map with the table's values."""
    size = tuple(job.volume.image.shape[1:3])
    if job.probs.ndim == 3:
        mask = (resize_images(job.probs.unsqueeze(1), size)[:, 0] > theta2).numpy().astype(np.uint8)
    else:  # (S,C,t,t) -> (C,S,H,W) masks -> label map
        masks = (resize_images(job.probs, size) > theta2).transpose(0, 1).numpy()
        mask = table.paint(masks)
    if is_2d_path(job.volume.image_path):
        _save_png(mask[0], job.target)
    else:
        save_like(job.volume, mask, job.target, description=MASK_DESCRIPTION)
    if overlays:
        stem = re.sub(r"_mask$", "", _stem(job.target))
        _write_overlay(job.target.with_name(f"{stem}_overlay.png"), job.volume, mask)


# ----------------------------------------------------------------------------- the driver
def predict(*, run: str | Path, inputs: str | Path | Sequence[str | Path], output: str | Path,
            overlays: bool = False, device: str = "auto", batch: int = DEFAULT_BATCH,
            progress: bool = True, boxes: str | Path | None = None) -> list[Path]:
    """Predicts every input volume with run folder ``run``; returns the written mask paths.

    inputs: a NIfTI file, a folder of them (see :func:`list_inputs`) or a list of files.
    output: a folder, or a .nii/.nii.gz file name when ``inputs`` is one file.
    batch: slices per step, a positive multiple of 4 (the tiles of a canvas).
    boxes: a box file (see :mod:`sammed_fast.experiment.box_file`) replacing the segmenter's boxes.
    Raises ConfigError for bad arguments and a missing or incomplete run (before any work), and
    PredictionFailed after the other inputs were written when some inputs could not be read or
    written.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 4 or batch % 4:
        raise ConfigError(f"--batch must be a positive multiple of 4 (slices per step), got {batch!r}")
    output = Path(output)
    if isinstance(inputs, (str, Path)):
        files, single = list_inputs(inputs), Path(inputs).is_file()
    else:
        files, single = [Path(p) for p in inputs], False
        if not files:
            raise ConfigError("inputs is empty")
    targets = _output_paths(files, single, output)
    check_outputs(files, targets)
    predictor, config = _open_run(Path(run), device)
    t, theta2 = predictor.sam.tile_size, predictor.theta2
    table = config.label_table
    channels = () if len(table) == 1 else (len(table),)
    file_boxes = None if boxes is None else read_box_file(boxes, files, table.names)

    failed: dict[Path, str] = {}
    written: list[Path] = []
    queue: list[tuple[_Job, int]] = []  # (job, first slice not yet sent), in input order
    bar = tqdm(total=len(files), desc="predict", unit="volume", disable=not progress)

    def fail(path: Path, error: BaseException) -> None:
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        failed[path] = message
        tqdm.write(f"error: {message}", file=sys.stderr)
        bar.update(1)

    def step(limit: int) -> None:
        """Runs one batch of up to ``limit`` queued slices; writes the volumes it completes."""
        parts, owners, taken = [], [], 0
        while queue and taken < limit:
            job, start = queue[0]
            n = min(len(job.tiles) - start, limit - taken)
            parts.append(job.tiles[start:start + n])
            owners.append((job, start, n))
            taken += n
            if start + n == len(job.tiles):
                queue.pop(0)
            else:
                queue[0] = (job, start + n)
        images = torch.cat(parts)
        if file_boxes is None:
            probs = predictor.predict(images).probs
        else:  # rows s*C+c of the jobs' own prompts
            C = len(table)
            rows = [(job.prompts[0][start * C:(start + n) * C], job.prompts[1][start * C:(start + n) * C])
                    for job, start, n in owners]
            probs = predictor.decode(predictor.embed(images), torch.cat([r[0] for r in rows]),
                                     torch.cat([r[1] for r in rows]), structures=C)
        offset = 0
        for job, start, n in owners:
            job.probs[start:start + n] = probs[offset:offset + n]
            job.filled, offset = job.filled + n, offset + n
            if job.filled == len(job.tiles):
                try:
                    _finish(job, theta2, overlays, table)
                except (OSError, ValueError) as error:
                    fail(job.source, error)
                else:
                    written.append(job.target)
                    bar.update(1)

    try:
        seen: set[Path] = set()
        for source, target in zip(files, targets):
            try:
                if target in seen:
                    raise ValueError(f"{source}: another input already writes {target}")
                volume = _read_volume(source)
            except (OSError, ValueError) as error:
                fail(source, error)
                continue
            seen.add(target)
            tiles = resize_images(slice_images(volume.image), (t, t))
            prompts = None if file_boxes is None else tile_prompts(
                file_boxes[source], slices=len(tiles), height=volume.image.shape[1],
                width=volume.image.shape[2], structures=len(table), tile=t)
            queue.append((_Job(source=source, target=target, volume=volume, tiles=tiles,
                               probs=torch.zeros(len(tiles), *channels, t, t), prompts=prompts), 0))
            while sum(len(job.tiles) - start for job, start in queue) >= batch:
                step(batch)
        while queue:
            step(batch)
    finally:
        bar.close()
    if failed:
        raise PredictionFailed(failed=failed, written=written)
    return written
