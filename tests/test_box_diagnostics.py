"""Box diagnostics against a numpy oracle that rasterises every box into a pixel mask."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sammed_fast.experiment.box_diagnostics import box_diagnostics, box_iou_rows
from sammed_fast.experiment.report import boxes_table

SIZE = 16


def raster(box) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def oracle(kind_boxes, kind_empty, gt_boxes, gt_empty) -> dict:
    ious, ratios = [], []
    missed = stray = 0
    for box, empty, gt, no_prostate in zip(kind_boxes, kind_empty, gt_boxes, gt_empty):
        if not no_prostate and not empty:
            a, b = raster(box), raster(gt)
            ious.append((a & b).sum() / (a | b).sum())
            ratios.append(a.sum() / b.sum())
        missed += (not no_prostate) and empty
        stray += no_prostate and not empty
    prostate = sum(not e for e in gt_empty)
    boxes = sum(not e for e in kind_empty)
    return {"iou": np.mean(ious) if ious else math.nan, "area_ratio": np.mean(ratios) if ratios else math.nan,
            "missed": missed / prostate if prostate else math.nan,
            "boxes_without_prostate": stray / boxes if boxes else math.nan,
            "prostate_slices": prostate, "boxes": boxes, "slices": len(gt_boxes)}


def as_dict(kind_boxes, kind_empty, gt_boxes, gt_empty) -> dict:
    return {"filtered": torch.tensor(kind_boxes, dtype=torch.float32),
            "filtered_empty": torch.tensor(kind_empty), "gt": torch.tensor(gt_boxes, dtype=torch.float32),
            "gt_empty": torch.tensor(gt_empty)}


EMPTY = (-1, -1, -1, -1)
HAND_MADE = [
    # identical, half as wide, disjoint, a box without prostate, prostate without box, neither
    ([(2, 2, 9, 9), (2, 2, 5, 9), (12, 12, 15, 15), (1, 1, 3, 3), EMPTY, EMPTY],
     [False, False, False, False, True, True],
     [(2, 2, 9, 9), (2, 2, 9, 9), (0, 0, 3, 3), EMPTY, (4, 4, 6, 6), EMPTY],
     [False, False, False, True, False, True]),
    # one-pixel boxes that touch and that coincide
    ([(3, 3, 3, 3), (5, 5, 5, 5)], [False, False], [(3, 3, 3, 3), (5, 5, 6, 5)], [False, False]),
]


@pytest.mark.parametrize("case", HAND_MADE)
def test_diagnostics_equal_the_raster_oracle_on_hand_made_cases(case):
    got = box_diagnostics(as_dict(*case), "filtered")
    want = oracle(*case)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value), key


def test_the_first_hand_made_case_by_hand():
    got = box_diagnostics(as_dict(*HAND_MADE[0]), "filtered")
    # IoUs 1, 0.5 and 0 over the three prostate slices with a box; area ratios 1, 0.5, 1.
    assert got["iou"] == pytest.approx(0.5) and got["area_ratio"] == pytest.approx(2.5 / 3)
    assert got["missed"] == pytest.approx(1 / 4) and got["boxes_without_prostate"] == pytest.approx(1 / 4)


def test_diagnostics_equal_the_oracle_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        def boxes():
            a, b = np.sort(rng.integers(0, SIZE, (2, n, 2)), axis=0)
            return [(int(a[i, 0]), int(a[i, 1]), int(b[i, 0]), int(b[i, 1])) for i in range(n)]
        case = (boxes(), list(rng.random(n) < 0.3), boxes(), list(rng.random(n) < 0.3))
        case = ([EMPTY if e else b for b, e in zip(case[0], case[1])], case[1],
                [EMPTY if e else b for b, e in zip(case[2], case[3])], case[3])
        got, want = box_diagnostics(as_dict(*case), "filtered"), oracle(*case)
        for key, value in want.items():
            assert (math.isnan(got[key]) and math.isnan(value)) or got[key] == pytest.approx(value), key


def test_box_iou_rows_is_symmetric_and_one_on_itself():
    a = torch.tensor([[0.0, 0, 4, 4], [2, 3, 7, 3]])
    b = torch.tensor([[2.0, 2, 6, 6], [2, 3, 7, 3]])
    assert torch.equal(box_iou_rows(a, b), box_iou_rows(b, a))
    assert box_iou_rows(a, a).tolist() == [1.0, 1.0]
    assert box_iou_rows(a, b)[0].item() == pytest.approx(9 / 41)


def test_the_markdown_table_shows_every_split_and_kind():
    entry = box_diagnostics(as_dict(*HAND_MADE[0]), "filtered")
    table = boxes_table({"boxes": {"val": {"domain": "A", "filtered": entry, "unfiltered": entry}}})
    lines = table.splitlines()
    assert len(lines) == 4 and "| val | A | filtered | 0.50 | 0.83 | 0.25 of 4 | 0.25 of 4 |" in lines
