"""Dice of per-slice predictions, scored per 3D volume (primary) and per 2D slice, at the volumes'
original resolution.

Per-slice values at the tile size (probabilities, or {0,1} masks) go through a VolumeAssembler back
to each volume's own grid (bilinear for probabilities, nearest for masks), are thresholded
(``value > threshold``) and compared with the volume's label by ``sammed_fast.metrics``. Slices
where both prediction and truth are empty get a per-slice Dice of NaN and are left out of 2D means
(they would otherwise count as perfect and hide failures on prostate slices).

With C > 1 structures (values (N,C,t,t)) every structure is scored on its own against its mask
(``data.slices.structure_masks``); a case's dice3d is the mean over its structures, its dice2d the
per-slice values of every structure, and ``CaseScore.structures`` holds the per-structure scores.

Under torchrun each rank scores a share of the volumes and every rank gets every score.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from sammed_fast.data import Volume, VolumeAssembler
from sammed_fast.data.slices import structure_masks
from sammed_fast.experiment import distributed
from sammed_fast.experiment.run_data import Split
from sammed_fast.method.prompts import structure_count
from sammed_fast.metrics import dice_per_slice, dice_per_volume

__all__ = ["CaseScore", "assemble", "score_split", "mean_volume_dice"]


@dataclasses.dataclass(frozen=True)
class CaseScore:
    domain: str
    case_id: str
    dice3d: float  # Dice of the whole volume
    dice2d: tuple[float, ...]  # Dice of each slice; NaN where prediction and truth are both empty
    #: C > 1 structures: the score of each structure (dice3d is their mean, dice2d their values
    #: one structure after the other); empty for a single structure
    structures: tuple["CaseScore", ...] = ()

    @property
    def dice2d_mean(self) -> float:
        """Mean over the slices where the truth or the prediction has prostate (NaN if none)."""
        scored = [v for v in self.dice2d if not math.isnan(v)]
        return sum(scored) / len(scored) if scored else math.nan


def assemble(split: Split, values: torch.Tensor) -> VolumeAssembler:
    """Per-slice values (N,t,t) or (N,1,t,t), row i = slice i of ``split`` -> an assembler."""
    if values.shape[0] != len(split):
        raise ValueError(f"split {split.name} has {len(split)} slices, got {values.shape[0]} predictions")
    assembler = VolumeAssembler(split.volumes)
    domains, case_ids, slices = zip(*split.keys) if len(split) else ((), (), ())
    assembler.add(values.float(), domains, case_ids, list(slices))
    return assembler


def _structures_score(volume: Volume, scores: Sequence[CaseScore]) -> CaseScore:
    """One case's score over its structures: mean dice3d, every structure's per-slice Dice."""
    return CaseScore(domain=volume.domain, case_id=volume.case_id,
                     dice3d=sum(s.dice3d for s in scores) / len(scores),
                     dice2d=tuple(v for s in scores for v in s.dice2d), structures=tuple(scores))


def _case_score(volume: Volume, pred: torch.Tensor, label: torch.Tensor) -> CaseScore:
    """Scores of one volume's (S,H,W) bool prediction against its (S,H,W) bool label."""
    return CaseScore(domain=volume.domain, case_id=volume.case_id,
                     dice3d=float(dice_per_volume(pred, label)),
                     dice2d=tuple(dice_per_slice(pred, label, both_empty=math.nan).tolist()))


def score_split(split: Split, values: torch.Tensor, *, thresholds: Sequence[float],
                mode: str = "bilinear") -> dict[float, list[CaseScore]]:
    """{threshold: [CaseScore of every volume of the split]}; values (N,t,t) or (N,1,t,t), or
    (N,C,t,t) for C > 1 structures; mode "bilinear" for probabilities, "nearest" for masks."""
    thresholds = list(dict.fromkeys(float(t) for t in thresholds))
    if structure_count(values) > 1:
        return _score_structures(split, values, thresholds=thresholds, mode=mode)
    assembler = assemble(split, values)

    def score_volume(volume: Volume) -> list[CaseScore]:
        """One CaseScore per threshold."""
        stack = assembler.volume(volume.key, mode=mode)
        label = torch.from_numpy(volume.label).bool()
        return [_case_score(volume, stack > t, label) for t in thresholds]

    per_volume = distributed.map_sharded(score_volume, split.volumes)
    return {t: [scores[i] for scores in per_volume] for i, t in enumerate(thresholds)}


def _score_structures(split: Split, values: torch.Tensor, *, thresholds: list[float],
                      mode: str) -> dict[float, list[CaseScore]]:
    """score_split for values (N,C,t,t): each structure against its own mask, then combined."""
    assemblers = [assemble(split, values[:, c]) for c in range(values.shape[1])]

    def score_volume(volume: Volume) -> list[CaseScore]:
        truths = torch.from_numpy(structure_masks(volume)).bool()
        stacks = [assembler.volume(volume.key, mode=mode) for assembler in assemblers]
        return [_structures_score(volume, [_case_score(volume, stack > t, truth)
                                           for stack, truth in zip(stacks, truths)])
                for t in thresholds]

    per_volume = distributed.map_sharded(score_volume, split.volumes)
    return {t: [scores[i] for scores in per_volume] for i, t in enumerate(thresholds)}


def mean_volume_dice(split: Split, values: torch.Tensor, *, threshold: float,
                     mode: str = "bilinear") -> float:
    """Mean per-volume Dice of one split: the model-selection score on source val."""
    cases = score_split(split, values, thresholds=[threshold], mode=mode)[float(threshold)]
    return sum(c.dice3d for c in cases) / len(cases)
