"""--seeds: one run per seed and a summary whose numbers are those of the per-seed runs."""
from __future__ import annotations

import json
import statistics
import pytest
import torch

from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.report import seeds_summary
from sammed_fast.experiment.jobs import train


def test_a_seeds_run_summarises_exactly_its_per_seed_runs(tmp_path):
    config = TrainConfig(cache_dir=tmp_path / "cache", synthetic_cases=3, targets="B", tile_size=32,
                         segmenter_epochs=1, decoder_epochs=1, compact_pretrain_steps=0, figure_slices=1,
                         out=tmp_path / "seeds", progress=False, device="cpu", threads=1, seeds=(0, 5))
    out = train(config)
    per_seed = {seed: json.loads((out / f"seed_{seed}" / "results.json").read_text()) for seed in (0, 5)}
    assert per_seed[0]["seed"] == 0 and per_seed[5]["seed"] == 5
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [0, 5]
    for row, entry in summary["rows"].items():
        for metric in ("dice3d", "dice2d"):
            for column in ("A", "B", "target_mean"):
                values = [per_seed[s]["rows"][row][metric][column] for s in (0, 5)]
                stats = entry[metric][column]
                assert stats["per_seed"] == values
                assert stats["mean"] == pytest.approx(statistics.fmean(values))
                assert stats["std"] == pytest.approx(statistics.stdev(values))
    gains = [per_seed[s]["rows"]["sam_filtered"]["dice3d"]["target_mean"]
             - per_seed[s]["rows"]["segmenter"]["dice3d"]["target_mean"] for s in (0, 5)]
    assert summary["method_gain_over_segmenter"]["per_seed"] == pytest.approx(gains)
    text = (out / "results.md").read_text()
    assert "seed 0" in text and "seed 5" in text and "±" in text
    # Different seeds really ran differently: their segmenters differ.
    weights = [torch.load(out / f"seed_{s}" / "checkpoints" / "segmenter_best.pt", weights_only=True)["model"]
               for s in (0, 5)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_summary_of_hand_made_results():
    def result(segmenter: float, method: float) -> dict:
        rows = {"segmenter": {"label": "seg", "dice3d": {"A": segmenter, "B": segmenter, "target_mean": segmenter},
                              "dice2d": {"A": 0.0, "B": 0.0, "target_mean": 0.0}},
                "sam_filtered": {"label": "method", "dice3d": {"A": method, "B": method, "target_mean": method},
                                 "dice2d": {"A": 0.0, "B": 0.0, "target_mean": 0.0}}}
        return {"source": "A", "targets": ["B"], "columns": ["A", "B"], "rows": rows}

    summary = seeds_summary({0: result(0.5, 0.6), 1: result(0.7, 0.6), 2: result(0.6, 0.9)})
    method = summary["rows"]["sam_filtered"]["dice3d"]["target_mean"]
    assert method["mean"] == pytest.approx(0.7) and method["std"] == pytest.approx(0.17320508)
    gain = summary["method_gain_over_segmenter"]
    assert gain["per_seed"] == pytest.approx([0.1, -0.1, 0.3]) and gain["mean"] == pytest.approx(0.1)


@pytest.mark.parametrize("changes, message", [
    ({"seeds": (1, 1)}, "distinct"),
    ({"seeds": ()}, "distinct"),
    ({"seeds": (0, 2**32)}, "from 0 to 4294967295"),
    ({"seeds": (0, 1), "all_sources": True}, "cannot be combined"),
])
def test_bad_seeds_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_default_folder_of_a_seeds_run():
    assert TrainConfig(seeds=(0, 1, 2)).resolved().out.name == "sammed_fast_A_seeds"
