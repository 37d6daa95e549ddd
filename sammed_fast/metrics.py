"""Dice scores (per 3D volume, the primary number; per 2D slice) and per-domain aggregation.

Empty masks: Dice = 2|P∩G| / (|P| + |G|). When prediction and ground truth are both empty the
ratio is 0/0; we score it `both_empty` (default 1.0: nothing to find, nothing found). An empty
prediction against a non-empty truth, or the reverse, scores 0.0. This equals MONAI's
DiceMetric(include_background=True, ignore_empty=False). Pass both_empty=float("nan") to drop such
cases, and summarise(..., skip_nan=True) to average without them.

All scores are computed on the inputs' device, batched, in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

__all__ = ["dice", "dice_per_volume", "dice_per_slice", "dice_per_mosaic", "DomainSummary", "summarise"]


def _as_bool(x: torch.Tensor, name: str) -> torch.Tensor:
    _check_tensor(x, name)
    if x.dtype == torch.bool:
        return x
    if x.is_complex():
        raise TypeError(f"{name} must be a real binary mask, got {x.dtype}")
    binary = (x == 0) | (x == 1)
    if not bool(binary.all()):
        raise ValueError(f"{name} must contain only 0 and 1 (threshold probabilities first)")
    return x != 0


def dice(pred: torch.Tensor, target: torch.Tensor, *, both_empty: float = 1.0) -> torch.Tensor:
    """Dice over all dims but the first: (B, ...) binary masks -> float64 (B,)."""
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    if p.device != t.device:
        raise ValueError(f"pred is on {p.device}, target on {t.device}")
    if p.ndim < 2:
        raise ValueError(f"masks need a batch dim and at least one spatial dim, got {tuple(p.shape)}")
    p, t = p.flatten(1), t.flatten(1)
    inter = (p & t).sum(1, dtype=torch.int64).double()
    total = (p.sum(1, dtype=torch.int64) + t.sum(1, dtype=torch.int64)).double()
    score = 2 * inter / total.clamp_min(1)
    return torch.where(total == 0, torch.full_like(score, both_empty), score)


def dice_per_volume(pred: torch.Tensor, target: torch.Tensor, *,
                    both_empty: float = 1.0) -> torch.Tensor:
    """3D Dice: one volume (S, H, W) -> 0-dim tensor; a batch (B, S, H, W) -> (B,)."""
    _check_tensor(pred, "pred"), _check_tensor(target, "target")
    if pred.ndim == 3:
        return dice(pred.unsqueeze(0), target.unsqueeze(0), both_empty=both_empty)[0]
    if pred.ndim == 4:
        return dice(pred, target, both_empty=both_empty)
    raise ValueError(f"pred must be (S, H, W) or (B, S, H, W), got {tuple(pred.shape)}")


def dice_per_slice(pred: torch.Tensor, target: torch.Tensor, *,
                   both_empty: float = 1.0) -> torch.Tensor:
    """2D Dice of each slice: (N, H, W) or (N, 1, H, W) -> (N,)."""
    _check_tensor(pred, "pred"), _check_tensor(target, "target")
    if pred.ndim == 4 and pred.shape[1] == 1:
        return dice(pred, target, both_empty=both_empty)
    if pred.ndim == 3:
        return dice(pred, target, both_empty=both_empty)
    raise ValueError(f"pred must be (N, H, W) or (N, 1, H, W), got {tuple(pred.shape)}")


def dice_per_mosaic(pred: torch.Tensor, target: torch.Tensor, *, tiles: int = 4) -> torch.Tensor:
    """The paper's own 2D metric: Dice over each mosaic of ``tiles`` consecutive slices (the 2x2
    SAM canvas, slices 4m..4m+3), (N, H, W) or (N, 1, H, W) -> (ceil(N/tiles),) float64. A mosaic
    whose prediction and truth are both empty scores NaN (leave it out when averaging)."""
    _check_tensor(pred, "pred"), _check_tensor(target, "target")
    if pred.ndim not in (3, 4) or (pred.ndim == 4 and pred.shape[1] != 1):
        raise ValueError(f"pred must be (N, H, W) or (N, 1, H, W), got {tuple(pred.shape)}")
    if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
        raise ValueError(f"tiles must be a positive int, got {tiles!r}")
    n = pred.shape[0]
    pad = -n % tiles
    p = torch.cat([_as_bool(pred, "pred").reshape(n, -1), torch.zeros(pad, pred[0].numel(), dtype=torch.bool)])
    t = torch.cat([_as_bool(target, "target").reshape(n, -1), torch.zeros(pad, pred[0].numel(), dtype=torch.bool)])
    return dice(p.reshape(-1, tiles * pred[0].numel()), t.reshape(-1, tiles * pred[0].numel()),
                both_empty=math.nan)


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


@dataclass(frozen=True)
class DomainSummary:
    """Per-domain mean/std/count of case scores and the mean of domain means over `targets`."""

    mean: dict[str, float]
    std: dict[str, float]
    count: dict[str, int]
    targets: tuple[str, ...]
    target_mean: float

    def to_markdown(self, *, percent: bool = True) -> str:
        """One-row table: each domain's mean, then the target average."""
        k = 100.0 if percent else 1.0
        doms = list(self.mean)
        head = "| " + " | ".join(doms) + " | target avg |"
        sep = "|" + "---|" * (len(doms) + 1)
        row = "| " + " | ".join(f"{k * self.mean[d]:.2f}" for d in doms)
        return f"{head}\n{sep}\n{row} | {k * self.target_mean:.2f} |"


def summarise(scores: Mapping[str, Iterable[float]] | Iterable[tuple[str, float]], *,
              source: str | None = None, skip_nan: bool = False) -> DomainSummary:
    """Mean per domain, then mean over the target domains (all domains except `source`).

    scores: {domain: [case scores]} or an iterable of (domain, score) pairs. Domains keep their
    first-seen order. NaN scores raise unless skip_nan (then they are left out).
    """
    groups: dict[str, list[float]] = {}
    items = scores.items() if isinstance(scores, Mapping) else (
        (d, [s]) for d, s in scores)
    for domain, values in items:
        for v in values:
            v = float(v)
            if math.isnan(v) and not skip_nan:
                raise ValueError(f"domain {domain}: NaN score (pass skip_nan=True to drop it)")
            groups.setdefault(domain, [])
            if not math.isnan(v):
                groups[domain].append(v)
    if source is not None and source not in groups:
        raise ValueError(f"source domain {source!r} has no scores (have {list(groups)})")
    mean, std, count = {}, {}, {}
    for domain, values in groups.items():
        if not values:
            raise ValueError(f"domain {domain}: no scores left to average")
        x = torch.tensor(values, dtype=torch.float64)
        mean[domain] = float(x.mean())
        std[domain] = float(x.std(correction=0))
        count[domain] = len(values)
    targets = tuple(d for d in groups if d != source)
    if not targets:
        raise ValueError("no target domains to average (only the source has scores)")
    target_mean = sum(mean[d] for d in targets) / len(targets)
    return DomainSummary(mean, std, count, targets, target_mean)
