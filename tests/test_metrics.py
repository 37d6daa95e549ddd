"""Dice metrics against MONAI's DiceMetric (independent oracle) and the aggregation rules."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.metrics import DiceMetric

from sammed_fast.metrics import dice, dice_per_slice, dice_per_volume, summarise


def monai_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) binary -> (B,) via MONAI, empty-handling as documented for ours."""
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    return metric(pred.unsqueeze(1).float(), target.unsqueeze(1).float()).flatten().double()


def random_masks(gen, shape, p_empty=0.3):
    """Binary masks with a few all-empty members, to exercise the empty rules."""
    density = torch.rand(shape[0], generator=gen).view(-1, *[1] * (len(shape) - 1))
    masks = torch.rand(shape, generator=gen) < density
    masks &= (torch.rand(shape[0], generator=gen) > p_empty).view_as(density)
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_per_volume_matches_monai(seed):
    gen = torch.Generator().manual_seed(seed)
    pred, target = (random_masks(gen, (6, 5, 9, 7)) for _ in range(2))
    pred[0] = False
    target[0] = False  # both empty -> 1
    ours = dice_per_volume(pred, target)
    torch.testing.assert_close(ours, monai_dice(pred, target))
    assert ours[0] == 1.0
    for b in range(6):
        torch.testing.assert_close(dice_per_volume(pred[b], target[b]), ours[b])


@pytest.mark.parametrize("layout", ["NHW", "N1HW"])
def test_per_slice_matches_monai(layout):
    gen = torch.Generator().manual_seed(7)
    pred, target = (random_masks(gen, (12, 16, 16), p_empty=0.4) for _ in range(2))
    expected = monai_dice(pred, target)
    if layout == "N1HW":
        pred, target = pred.unsqueeze(1), target.unsqueeze(1)
    torch.testing.assert_close(dice_per_slice(pred, target), expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40),
       st.sampled_from([torch.bool, torch.uint8, torch.int64, torch.float32]))
def test_dtypes_and_sizes_against_monai(pairs, dtype):
    pred = torch.tensor([p for p, _ in pairs]).view(1, -1).to(dtype)
    target = torch.tensor([t for _, t in pairs]).view(1, -1).to(dtype)
    torch.testing.assert_close(dice(pred, target), monai_dice(pred.bool(), target.bool()))


def test_empty_rules():
    empty, full = torch.zeros(2, 3, 3, dtype=torch.bool), torch.ones(2, 3, 3, dtype=torch.bool)
    assert dice_per_volume(empty, empty).item() == 1.0
    assert dice_per_volume(empty, full).item() == 0.0
    assert dice_per_volume(full, empty).item() == 0.0
    assert math.isnan(dice_per_volume(empty, empty, both_empty=float("nan")).item())
    assert dice_per_slice(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)).shape == (0,)


def test_bad_inputs():
    a = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        dice_per_slice(a + 0.5, a)
    with pytest.raises(ValueError, match="target shape"):
        dice_per_slice(a, torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="pred"):
        dice_per_volume(a.numpy(), a)
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        dice_per_volume(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        dice_per_slice(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(3)
    pred, target = (random_masks(gen, (5, 8, 32, 32)) for _ in range(2))
    out = dice_per_volume(pred.cuda(), target.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), dice_per_volume(pred, target))


def test_summarise_means_per_domain_then_over_targets():
    scores = {"A": [0.9, 0.7], "B": [0.5, 0.6, 0.7], "C": [0.2]}
    s = summarise(scores, source="A")
    assert s.mean == pytest.approx({"A": 0.8, "B": 0.6, "C": 0.2})
    assert s.count == {"A": 2, "B": 3, "C": 1}
    assert s.targets == ("B", "C")
    assert s.target_mean == pytest.approx(0.4)  # not the case mean 0.5
    pairs = [(d, v) for d, vs in scores.items() for v in vs]
    assert summarise(pairs, source="A") == s
    assert summarise(scores).target_mean == pytest.approx((0.8 + 0.6 + 0.2) / 3)
    assert "| A | B | C | target avg |" in s.to_markdown()


def test_summarise_errors():
    with pytest.raises(ValueError, match="NaN"):
        summarise({"A": [0.5], "B": [float("nan")]}, source="A")
    s = summarise({"A": [0.5], "B": [float("nan"), 0.3]}, source="A", skip_nan=True)
    assert s.mean["B"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="source domain 'Z'"):
        summarise({"A": [0.5]}, source="Z")
    with pytest.raises(ValueError, match="no target"):
        summarise({"A": [0.5]}, source="A")


# ---------------------------------------------------------------------------------------------
# the paper's mosaic Dice

def _numpy_mosaic_dice(pred: np.ndarray, target: np.ndarray, tiles: int = 4) -> list[float]:
    scores = []
    for start in range(0, len(pred), tiles):
        p, t = pred[start:start + tiles].astype(bool), target[start:start + tiles].astype(bool)
        total = p.sum() + t.sum()
        scores.append(float("nan") if total == 0 else 2.0 * np.logical_and(p, t).sum() / total)
    return scores


def test_mosaic_dice_equals_a_numpy_oracle():
    from sammed_fast.metrics import dice_per_mosaic

    rng = np.random.default_rng(7)
    for n in (1, 3, 4, 5, 8, 11):
        pred = rng.random((n, 6, 5)) < 0.4
        target = rng.random((n, 6, 5)) < 0.4
        pred[0], target[0] = False, False  # an empty slice inside a mosaic
        got = dice_per_mosaic(torch.from_numpy(pred), torch.from_numpy(target)).tolist()
        np.testing.assert_allclose(got, _numpy_mosaic_dice(pred, target), equal_nan=True)
        got1 = dice_per_mosaic(torch.from_numpy(pred[:, None]), torch.from_numpy(target[:, None]))
        np.testing.assert_allclose(got1.tolist(), got, equal_nan=True)


def test_mosaic_dice_by_hand():
    from sammed_fast.metrics import dice_per_mosaic

    pred = torch.zeros(5, 2, 2, dtype=torch.bool)
    target = torch.zeros(5, 2, 2, dtype=torch.bool)
    pred[0, 0, 0] = target[0, 0, 0] = True  # mosaic 0: one shared pixel...
    target[3, 1, 1] = True  # ...and one pixel only in the truth (another slice): 2*1/(1+2)
    got = dice_per_mosaic(pred, target)  # mosaic 1 (slice 4 alone) is empty in both: NaN
    assert got[0].item() == pytest.approx(2 / 3) and math.isnan(got[1].item())
