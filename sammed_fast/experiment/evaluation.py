"""Stage 5: deterministic evaluation on the source test split and on every target domain.

Rows (what each slice's mask comes from):

| key | row |
|---|---|
| segmenter | the coarse segmenter alone (prob > 0.5) |
| sam_whole | SAM prompted with the whole-slice box |
| sam_unfiltered | SAM prompted with the box of the whole thresholded coarse mask |
| sam_filtered | SAM prompted with the filtered box (largest component): the method |
| sam_gt | SAM prompted with the ground-truth box (upper bound) |
| ellipse_filtered | the ellipse inscribed in the filtered box (what the box alone is worth) |

Dice per 3D volume is the primary number (mean per domain, then over the target domains); per-slice
Dice (pooled over the domain's slices where truth or prediction has prostate) stands beside it. The method is also scored at every theta2
of the sweep. No randomness: boxes are never jittered here. ``results["boxes"]`` holds the box
diagnostics of every split (experiment.box_diagnostics).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from sammed_fast.experiment.box_diagnostics import DIAGNOSED_KINDS, box_diagnostics
from sammed_fast.experiment.boxes_stage import load_boxes
from sammed_fast.method.prompts import ellipse_in_boxes, structure_count
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.embedding_cache import EmbeddingCache
from sammed_fast.method.predictor import SEGMENTER_THRESHOLD, Predictor
from sammed_fast.experiment.run_data import RunData, Split
from sammed_fast.experiment.run_folder import RunFolder
from sammed_fast.experiment.scoring import CaseScore, assemble, score_split
from sammed_fast.experiment.segmenter_stage import load_predictions
from sammed_fast.metrics import dice_per_mosaic, summarise

__all__ = ["ROWS", "METHOD", "FigureSample", "EvaluationResult", "evaluate_run_data"]

ROWS = {
    "segmenter": "Segmenter alone (coarse mask)",
    "sam_whole": "SAM + whole-image box",
    "sam_unfiltered": "SAM + unfiltered boxes",
    "sam_filtered": "SAM + filtered boxes (the method)",
    "sam_gt": "SAM + ground-truth boxes (upper bound)",
    "ellipse_filtered": "Ellipse inscribed in the filtered box",
}
METHOD = "sam_filtered"
SAM_ROWS = {"sam_whole": "whole", "sam_unfiltered": "unfiltered", "sam_filtered": "filtered", "sam_gt": "gt"}


@dataclasses.dataclass(frozen=True)
class FigureSample:
    """One slice of the qualitative figure, at the volume's resolution: (H,W) arrays."""

    domain: str
    case_id: str
    slice_index: int
    image: torch.Tensor
    coarse: torch.Tensor
    final: torch.Tensor
    truth: torch.Tensor
    #: prompt kind -> its box on this slice in the volume's pixel frame (x0, y0, x1, y1 inclusive),
    #: or None where the slice got no box of that kind
    boxes: dict[str, tuple[float, float, float, float] | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    results: dict  # the content of results.json
    cases: list[dict]  # rows of cases.csv
    samples: list[FigureSample]


def _ellipse_masks(boxes: torch.Tensor, keep: torch.Tensor, size: int, structures: int) -> torch.Tensor:
    """(N*C,4) boxes -> (N,t,t) ellipse masks, (N,C,t,t) for C > 1 structures."""
    masks = ellipse_in_boxes(boxes, size)[:, 0]
    masks[~keep] = 0
    return masks if structures == 1 else masks.reshape(-1, structures, size, size)


def _mosaic_dice(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's mosaic Dice; for (N,C,t,t) the mosaics of every structure, one after another."""
    if structure_count(pred) == 1:
        return dice_per_mosaic(pred, labels)
    return torch.cat([dice_per_mosaic(pred[:, c], labels[:, c]) for c in range(pred.shape[1])])


def _split_scores(split: Split, run: RunFolder, config: TrainConfig, predictor: Predictor,
                  embeddings: torch.Tensor
                  ) -> tuple[dict[str, list[CaseScore]], dict[float, list[CaseScore]], dict[str, torch.Tensor]]:
    """(row -> case scores, theta2 -> case scores of the method, per-slice values used by the figure)."""
    coarse = load_predictions(run, split)
    boxes = load_boxes(run, split)
    labels, structures = split.slices.labels, split.slices.structures
    mosaics = {"segmenter": _mosaic_dice(coarse > SEGMENTER_THRESHOLD, labels > 0)}
    rows = {"segmenter": score_split(split, coarse, thresholds=[SEGMENTER_THRESHOLD])[SEGMENTER_THRESHOLD]}
    sweep: dict[float, list[CaseScore]] = {}
    method_probs = None
    for row, kind in SAM_ROWS.items():
        prompt, keep = predictor.prompter.prompts(boxes, kind)
        probs = predictor.decode(embeddings, prompt, keep, structures=structures)
        thresholds = sorted({config.theta2, *config.theta2_sweep}) if row == METHOD else [config.theta2]
        scores = score_split(split, probs, thresholds=thresholds)
        rows[row] = scores[config.theta2]
        mosaics[row] = _mosaic_dice(probs > config.theta2, labels > 0)
        if row == METHOD:
            sweep, method_probs = {t: scores[t] for t in config.theta2_sweep}, probs
    prompt, keep = predictor.prompter.prompts(boxes, "filtered")
    ellipses = _ellipse_masks(prompt, keep, config.tile_size, structures)
    rows["ellipse_filtered"] = score_split(split, ellipses, thresholds=[0.5], mode="nearest")[0.5]
    mosaics["ellipse_filtered"] = _mosaic_dice(ellipses > 0.5, labels > 0)
    return rows, sweep, {"coarse": coarse, "final": method_probs, "boxes": boxes, "mosaics": mosaics}


def _volume_frame_box(box: torch.Tensor, empty: bool, tile: int, height: int, width: int
                      ) -> tuple[float, float, float, float] | None:
    """An inclusive tile-frame box -> the pixels of the volume's slice that its tile pixels cover."""
    if empty:
        return None
    x0, y0, x1, y1 = box.tolist()
    sx, sy = width / tile, height / tile
    return (x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1)


def _split_diagnostics(boxes: dict[str, torch.Tensor], *, crossfit: bool) -> dict:
    """Diagnostics of the split's filtered and unfiltered boxes, and of the training split's
    cross-fitted boxes when the run has them."""
    kinds = DIAGNOSED_KINDS + (("crossfit",) if crossfit and "crossfit" in boxes else ())
    return {kind: box_diagnostics(boxes, kind) for kind in kinds}


def _grey(image: np.ndarray) -> np.ndarray:
    """An (H,W) slice as it is, an (H,W,3) RGB image as the mean of its channels (for the figure)."""
    return image if image.ndim == 2 else image.mean(-1)


def _figure_sample(split: Split, values: dict[str, torch.Tensor], boxes: dict[str, torch.Tensor],
                   config: TrainConfig) -> FigureSample:
    """The slice with the most foreground in the split's first volume, with its filtered and
    ground-truth boxes. With C > 1 structures: the union of the structures' masks (each
    thresholded) and the first structure's boxes."""
    volume = split.volumes[0]
    areas = volume.label.reshape(volume.num_slices, -1).sum(1)
    s = int(areas.argmax())
    structures = split.slices.structures

    def mask(values: torch.Tensor, threshold: float) -> torch.Tensor:
        if structures == 1:
            return assemble(split, values).volume(volume.key)[s] > threshold
        return torch.stack([assemble(split, values[:, c]).volume(volume.key)[s] > threshold
                            for c in range(structures)]).any(0)

    coarse = mask(values["coarse"], SEGMENTER_THRESHOLD)
    final = mask(values["final"], config.theta2)
    row = split.keys.index((*volume.key, s)) * structures
    height, width = volume.image.shape[1:3]
    drawn = {kind: _volume_frame_box(boxes[kind][row], bool(boxes[f"{kind}_empty"][row]),
                                     config.tile_size, height, width) for kind in ("filtered", "gt")}
    return FigureSample(domain=volume.domain, case_id=volume.case_id, slice_index=s,
                        image=torch.from_numpy(_grey(volume.image[s])), coarse=coarse, final=final,
                        truth=torch.from_numpy(volume.label[s]).bool(), boxes=drawn)


def _summary(scores: dict[str, list[CaseScore]], source: str,
             mosaics: dict[str, torch.Tensor] | None = None, structures: tuple[str, ...] = ()) -> dict:
    """Per-domain mean/std of 3D Dice and pooled per-slice Dice, plus the target means; with
    ``mosaics`` (domain -> Dice of each 2x2 mosaic) the paper's mosaic Dice too; with the names of
    C > 1 ``structures``, ``"structures"``: name -> its own dice3d, dice3d_std and dice2d."""
    by3d = {d: [c.dice3d for c in cases] for d, cases in scores.items()}
    by2d = {d: [v for c in cases for v in c.dice2d] for d, cases in scores.items()}
    s3, s2 = summarise(by3d, source=source), summarise(by2d, source=source, skip_nan=True)
    summary = {"dice3d": {**s3.mean, "target_mean": s3.target_mean},
               "dice3d_std": dict(s3.std),
               "dice2d": {**s2.mean, "target_mean": s2.target_mean},
               "cases": dict(s3.count), "scored_slices": dict(s2.count)}
    if mosaics is not None:
        sm = summarise({d: m.tolist() for d, m in mosaics.items()}, source=source, skip_nan=True)
        summary["dice_mosaic"] = {**sm.mean, "target_mean": sm.target_mean}
    if structures:  # C > 1: the same summary for each structure; the numbers above are their mean
        summary["structures"] = {}
        for i, name in enumerate(structures):
            own = _summary({d: [c.structures[i] for c in cases] for d, cases in scores.items()}, source)
            summary["structures"][name] = {k: own[k] for k in ("dice3d", "dice3d_std", "dice2d")}
    return summary


def _data_entries(config: TrainConfig) -> dict:
    """For a dataset description, or the six-site release read with --labels: where the data came
    from, its form and its label table (runs on prostate=* release data or the synthetic set carry
    none)."""
    if config.dataset is None and config.labels is None:
        return {}
    entries = {"data": str(config.data), "data_form": config.data_form, "labels": config.label_table.spec()}
    if config.dataset is not None and config.dataset.is_2d:
        entries["primary_metric"] = ("dice3d: Dice per image (2D data: every case is one image), mean per "
                                     "domain; target_mean averages the target domains' means")
        entries["case_unit"] = "image"
    return entries


def _case_lines(row: str, split: str, scores: list[CaseScore], names: tuple[str, ...]) -> list[dict]:
    """cases.csv lines of one row and split: one per case; with C > 1 structures these carry
    ``structure`` "mean" (their Dice is the mean over the structures) and every case and structure
    has a line of its own after them."""
    def line(score: CaseScore, **structure: str) -> dict:
        return {"row": row, "split": split, "domain": score.domain, "case_id": score.case_id,
                "dice3d": score.dice3d, "dice2d_mean": score.dice2d_mean, "slices": len(score.dice2d),
                **structure}

    if len(names) == 1:
        return [line(c) for c in scores]
    return [line(c, structure="mean") for c in scores] + \
        [line(c.structures[i], structure=name) for i, name in enumerate(names) for c in scores]


def evaluate_run_data(*, run: RunFolder, data: RunData, config: TrainConfig, predictor: Predictor,
                      cache: EmbeddingCache, extra: dict | None = None) -> EvaluationResult:
    """Scores every row on every evaluation split; returns results.json content, CSV rows and the
    figure's slices (one per target domain, up to config.figure_slices)."""
    per_row: dict[str, dict[str, list[CaseScore]]] = {row: {} for row in ROWS}
    per_theta: dict[float, dict[str, list[CaseScore]]] = {t: {} for t in config.theta2_sweep}
    per_row_mosaic: dict[str, dict[str, torch.Tensor]] = {row: {} for row in ROWS}
    samples: list[FigureSample] = []
    cases: list[dict] = []
    #: the names of C > 1 structures, scored each on its own (none for a single structure)
    structures = config.label_table.names if len(config.label_table) > 1 else ()
    for name in tqdm(data.eval_splits, desc="evaluation", unit="split", disable=not config.progress):
        split = data.splits[name]
        rows, sweep, values = _split_scores(split, run, config, predictor, cache.get(name))
        for row, scores in rows.items():
            per_row[row][split.domain] = scores
            per_row_mosaic[row][split.domain] = values["mosaics"][row]
            cases.extend(_case_lines(row, name, scores, config.label_table.names))
        for theta, scores in sweep.items():
            per_theta[theta][split.domain] = scores
        if name != "test" and len(samples) < config.figure_slices:
            samples.append(_figure_sample(split, values, values["boxes"], config))
    results = {
        "source": data.source,
        "targets": list(data.targets),
        "columns": [data.source, *data.targets],
        "primary_metric": "dice3d: Dice per 3D volume at the original resolution, mean per domain; "
                          "target_mean averages the target domains' means (the source column is "
                          "its held-out test split)",
        "secondary_metric": "dice2d: Dice per 2D slice, pooled over the domain's slices where the "
                            "truth or the prediction has prostate",
        "theta1": config.theta1, "theta2": config.theta2, "downscale": config.downscale,
        "filter_cells": config.filter_cells,
        "empty_box": config.empty_box, "decoder_prompts": config.decoder_prompts,
        "training_box_noise": config.box_noise, "training_box_jitter": config.box_jitter,
        "notes": config.notes(),
        **_data_entries(config),
        "tile_size": config.tile_size, "sam": config.sam, "sam_scaling": config.sam_scaling,
        "segmenter": config.segmenter, "seed": config.seed,
        "mosaic_metric": "dice_mosaic: the paper's own 2D metric, Dice over each 2x2 mosaic of "
                         "consecutive slices (one SAM canvas) at the tile size, mean per domain; "
                         "mosaics empty in truth and prediction are left out. Not comparable to dice3d",
        "rows": {row: {"label": label, **_summary(per_row[row], data.source, per_row_mosaic[row], structures)}
                 for row, label in ROWS.items()},
        "theta2_sweep": {f"{t:g}": _summary(per_theta[t], data.source, structures=structures)
                         for t in config.theta2_sweep},
        "boxes": {name: {"domain": split.domain,
                         **_split_diagnostics(load_boxes(run, split), crossfit=name == "train")}
                  for name, split in data.splits.items()},
        **(extra or {}),
    }
    return EvaluationResult(results=results, cases=cases, samples=samples)

