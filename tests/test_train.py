"""The main job end to end on a tiny synthetic set: result files, re-evaluation, resume, bad input.

One tiny run (3 cases per domain, targets B and C, tile 32, 2 epochs per model, a 2-step compact-SAM
pretraining into the run folder) is shared by the module; a second run is interrupted after the
boxes stage and resumed, and must reproduce the first run's numbers exactly (same seed, CPU).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.ops import masks_to_boxes

from sammed_fast.method.prompts import mask_boxes, prompts_for
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import STAGES, TrainConfig
from sammed_fast.experiment.evaluation import ROWS
from sammed_fast.experiment.fitting import fit
from sammed_fast.experiment.run_folder import RunFolder
from sammed_fast.method.prompts import jitter_boxes
from sammed_fast.cli.evaluate import main as evaluate_main
from sammed_fast.models.sam_registry import compact_config, sam_from_config
from sammed_fast.cli.train import main as train_main
from sammed_fast.experiment.jobs import train

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny_config(cache_dir: Path, out: Path, **changes) -> TrainConfig:
    # theta1 0.5: a 2-epoch segmenter stays near 0.5 everywhere, and the boxes stage must still
    # find components to filter (at the default 0.75 every box would be empty).
    base = dict(cache_dir=cache_dir, synthetic_cases=3, targets="BC", tile_size=32, theta1=0.5,
                segmenter_epochs=2, decoder_epochs=2, compact_pretrain_steps=2, empty_box="full",
                figure_slices=2, out=out, progress=False, device="cpu", threads=1)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def full_run(cache_dir, tmp_path_factory) -> tuple[Path, dict]:
    threads = torch.get_num_threads()
    path = train(tiny_config(cache_dir, tmp_path_factory.mktemp("runs") / "full"))
    assert torch.get_num_threads() == threads, "a run must restore torch's thread count"
    return path, json.loads((path / "results.json").read_text())


def read_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())["stages"]


# --------------------------------------------------------------------------- end to end
def test_every_result_file_is_written_and_well_formed(full_run):
    path, results = full_run
    for name in ("config.json", "state.json", "train.log", "results.json", "results.md", "cases.csv",
                 "figure.png", "checkpoints/segmenter_best.pt", "checkpoints/segmenter_latest.pt",
                 "checkpoints/decoder_best.pt", "checkpoints/decoder_latest.pt", "sam_base.pth"):
        assert (path / name).is_file() and (path / name).stat().st_size > 0, name
    assert list((path / "tensorboard").glob("events.out.tfevents.*"))
    assert (path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(read_state(path)) == list(STAGES)
    assert not list(path.rglob("*.tmp")), "a temporary file was left behind"

    assert results["source"] == "A" and results["targets"] == ["B", "C"]
    assert list(results["rows"]) == list(ROWS)
    for entry in results["rows"].values():
        for metric in ("dice3d", "dice2d"):
            assert set(entry[metric]) == {"A", "B", "C", "target_mean"}
            assert all(0.0 <= v <= 1.0 for v in entry[metric].values())
            assert entry[metric]["target_mean"] == pytest.approx((entry[metric]["B"] + entry[metric]["C"]) / 2)
        assert entry["cases"] == {"A": 1, "B": 3, "C": 3}
    assert list(results["theta2_sweep"]) == ["0.5", "0.75", "0.9"]
    assert results["theta2_sweep"]["0.5"]["dice3d"] == results["rows"]["sam_filtered"]["dice3d"]
    assert set(results["selection"]) == {"segmenter", "decoder"}

    markdown = (path / "results.md").read_text()
    for label in ROWS.values():
        assert label in markdown
    assert "| method | A (source test) | B | C | target avg |" in markdown

    # results.json must be the per-domain mean of cases.csv (an independent aggregation).
    with open(path / "cases.csv", newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert len(cases) == len(ROWS) * 7 and "structure" not in cases[0]  # one structure: no such column
    for row in ROWS:
        for domain in ("A", "B", "C"):
            values = [float(c["dice3d"]) for c in cases if c["row"] == row and c["domain"] == domain]
            assert np.mean(values) == pytest.approx(results["rows"][row]["dice3d"][domain], abs=1e-6)


def test_config_json_round_trips(full_run):
    path, _ = full_run
    stored = TrainConfig.read(path / "config.json")
    expected = tiny_config(stored.cache_dir, path).resolved()
    assert stored == expected
    assert stored.segmenter_epochs == 2 and stored.targets == ("B", "C")


def test_boxes_match_independent_oracles(full_run):
    from sammed_fast.experiment.run_data import data_root, load_run_data

    path, _ = full_run
    config = TrainConfig.read(path / "config.json")
    boxes = torch.load(path / "boxes" / "B.pt", weights_only=True)
    probs = torch.load(path / "predictions" / "B.pt", weights_only=True)["probs"].float()
    # Filtered boxes by scipy: at tile 32 the filter works on the full-resolution map
    # (downscale 32 // 128 -> 1); largest 4-connected component, ties to the lowest raster label.
    assert config.downscale == 1 and config.filter_cells == 128
    assert not boxes["filtered_empty"].all(), "no filtered box: the filter is not exercised"
    for i, prob in enumerate(probs.numpy()):
        labelled, count = ndimage.label(prob > config.theta1)
        if count == 0:
            assert bool(boxes["filtered_empty"][i])
            continue
        largest = 1 + int(np.argmax(np.bincount(labelled.ravel())[1:]))
        ys, xs = np.nonzero(labelled == largest)
        assert boxes["filtered"][i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    # Ground-truth boxes of the tile-size labels, by numpy.
    data = load_run_data(config, data_root(config, progress=False), progress=False)
    labels = data.splits["B"].slices.labels[:, 0].numpy() > 0
    assert labels.any(axis=(1, 2)).sum() > 0
    for i, label in enumerate(labels):
        if not label.any():
            assert bool(boxes["gt_empty"][i]) and boxes["gt"][i].tolist() == [-1, -1, -1, -1]
            continue
        ys, xs = np.nonzero(label)
        assert boxes["gt"][i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_evaluate_cli_reproduces_the_run(full_run, capsys):
    path, results = full_run
    assert evaluate_main(["--run", str(path), "--device", "cpu", "--no-progress"]) == 0
    again = json.loads((path / "results.json").read_text())
    assert again["rows"] == results["rows"]
    assert again["theta2_sweep"] == results["theta2_sweep"]
    assert "SAM + filtered boxes (the method)" in capsys.readouterr().out


def test_compile_flag_runs_the_sam_under_torch_compile(full_run, cache_dir, tmp_path, monkeypatch):
    """--compile gives the uncompiled run's numbers (aot_eager instead of inductor: the same graph
    capture without a minute of C++ code generation per shape on this CPU)."""
    from sammed_fast.models import TiledSam

    _, reference = full_run
    calls = []
    original = TiledSam.compile_parts

    def compile_parts_for_test(self, *, backend="inductor"):
        calls.append(backend)
        return original(self, backend="aot_eager")

    monkeypatch.setattr(TiledSam, "compile_parts", compile_parts_for_test)
    assert train_main_config(["--compile"]).compile and not train_main_config([]).compile
    out = train(tiny_config(cache_dir, tmp_path / "compiled", compile=True))
    assert calls == ["inductor"]
    results = json.loads((out / "results.json").read_text())
    for row, entry in results["rows"].items():
        for metric in ("dice3d", "dice2d"):
            for domain, value in entry[metric].items():
                assert value == pytest.approx(reference["rows"][row][metric][domain], abs=1e-4), (row, domain)


def test_decoder_prompts_choose_the_boxes_the_decoder_learns_from(full_run, cache_dir, tmp_path,
                                                                  monkeypatch):
    """--decoder-prompts gt: the decoder trains and is selected with ground-truth boxes (the paper's
    SAM+GT row of Table 3); the default run used the filtered boxes."""
    from sammed_fast.method.prompts import BoxPrompter

    path, reference = full_run
    assert reference["decoder_prompts"] == "filtered"
    kinds = []
    original = BoxPrompter.prompts

    def recording_prompts(self, boxes, kind="filtered"):
        kinds.append(kind)
        return original(self, boxes, kind)

    monkeypatch.setattr(BoxPrompter, "prompts", recording_prompts)
    out = train(tiny_config(cache_dir, tmp_path / "gt", decoder_prompts="gt"))
    assert kinds[:2] == ["gt", "gt"], "training and selection must both use the chosen boxes"
    results = json.loads((out / "results.json").read_text())
    assert results["decoder_prompts"] == "gt"
    assert "fine-tuned with gt boxes" in (out / "results.md").read_text()
    tuned = [torch.load(p / "checkpoints" / "decoder_best.pt", weights_only=True)["model"]
             for p in (path, out)]
    assert any(not torch.equal(tuned[0][k], tuned[1][k]) for k in tuned[0]), "same decoder either way"


def train_main_config(argv: list[str]) -> TrainConfig:
    from sammed_fast.cli.train import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(argv))


# --------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_without_redoing_finished_stages(full_run, cache_dir, tmp_path):
    _, reference = full_run
    out = tmp_path / "resumed"
    train(tiny_config(cache_dir, out, stop_after="boxes"))
    state = read_state(out)
    assert list(state) == ["segmenter", "predict", "boxes"]
    assert not (out / "results.json").exists()
    watched = [out / "checkpoints" / "segmenter_best.pt", out / "predictions" / "B.pt", out / "boxes" / "B.pt"]
    mtimes = [p.stat().st_mtime_ns for p in watched]

    train(tiny_config(cache_dir, out, resume=True))
    resumed = read_state(out)
    assert list(resumed) == list(STAGES)
    for stage in ("segmenter", "predict", "boxes"):
        assert resumed[stage]["finished"] == state[stage]["finished"], stage
    assert [p.stat().st_mtime_ns for p in watched] == mtimes
    # Same seed, same machine: the interrupted-and-resumed run gives the uninterrupted run's numbers.
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == reference["rows"]

    # A deleted output of a later stage: only that stage runs again.
    (out / "results.json").unlink()
    train(tiny_config(cache_dir, out, resume=True))
    again = read_state(out)
    for stage in ("segmenter", "predict", "boxes", "decoder"):
        assert again[stage]["finished"] == resumed[stage]["finished"], stage
    assert again["evaluate"]["finished"] != resumed["evaluate"]["finished"]
    assert json.loads((out / "results.json").read_text())["rows"] == reference["rows"]


def test_resume_refuses_a_run_made_with_other_settings(full_run, cache_dir):
    path, _ = full_run
    with pytest.raises(ConfigError, match="other settings.*decoder_epochs"):
        train(tiny_config(cache_dir, path, resume=True, decoder_epochs=3))


def test_fit_continues_an_interrupted_stage_from_its_latest_epoch(tmp_path):
    """Interrupt after epoch 1 of 3, resume: same weights and history as an uninterrupted fit."""

    def run_fit(out: Path, *, resume: bool, interrupt_at: int | None):
        out.mkdir(exist_ok=True)
        run = RunFolder(path=out, config=TrainConfig(out=out, progress=False, resume=resume))
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        x = torch.randn(16, 3)

        def train_epoch(epoch):
            if epoch == interrupt_at:
                raise KeyboardInterrupt
            generator = torch.Generator().manual_seed(epoch)
            loss = ((model(x[torch.randperm(16, generator=generator)[:8]]) - 1) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        @torch.no_grad()
        def validate():
            return -float(((model(x) - 1) ** 2).mean())

        result = fit(run=run, name="segmenter", module=model, optimizer=optimizer, epochs=3,
                     train_epoch=train_epoch, validate=validate, resume=resume, progress=False)
        run.close()
        return model, result

    straight, straight_result = run_fit(tmp_path / "a", resume=False, interrupt_at=None)
    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path / "b", resume=False, interrupt_at=1)
    resumed, resumed_result = run_fit(tmp_path / "b", resume=True, interrupt_at=None)
    assert torch.equal(straight.weight, resumed.weight)
    numbers = lambda result: [(h["epoch"], h["loss"], h["score"]) for h in result.history]  # noqa: E731
    assert numbers(straight_result) == numbers(resumed_result)
    assert straight_result.best_epoch == resumed_result.best_epoch


def test_all_sources_writes_six_runs_and_the_table_1_layout(tmp_path):
    config = tiny_config(tmp_path / "cache", tmp_path / "all", targets=None, all_sources=True,
                         segmenter_epochs=1, decoder_epochs=1, compact_pretrain_steps=0)
    out = train(config)
    assert out == tmp_path / "all"
    per_source = {}
    for source in "ABCDEF":
        results = json.loads((out / f"source_{source}" / "results.json").read_text())
        assert results["source"] == source and len(results["targets"]) == 5
        per_source[source] = results
    summary = json.loads((out / "results.json").read_text())
    assert summary["sources"] == list("ABCDEF")
    for row, entry in summary["rows"].items():
        values = [per_source[s]["rows"][row]["dice3d"]["target_mean"] for s in "ABCDEF"]
        assert [entry["dice3d"][s] for s in "ABCDEF"] == values
        assert entry["dice3d"]["avg"] == pytest.approx(np.mean(values))
    assert "| method | A | B | C | D | E | F | avg |" in (out / "results.md").read_text()


# --------------------------------------------------------------------------- small parts
def test_mask_boxes_equal_torchvision():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 13, 17, generator=generator) > 0.93
    masks[3] = False
    boxes, empty = mask_boxes(masks)
    assert empty.tolist() == [not m.any() for m in masks]
    assert torch.equal(boxes[~empty], masks_to_boxes(masks[~empty]))
    assert boxes[3].tolist() == [-1, -1, -1, -1]


def test_empty_box_policies():
    boxes = {"filtered": torch.tensor([[1.0, 2, 3, 4], [-1, -1, -1, -1]]),
             "filtered_empty": torch.tensor([False, True]),
             "gt": torch.tensor([[-1.0, -1, -1, -1], [0, 0, 1, 1]]), "gt_empty": torch.tensor([True, False]),
             "whole": torch.tensor([[0.0, 0, 31, 31]] * 2), "whole_empty": torch.tensor([False, False])}
    chosen, keep = prompts_for(boxes, "filtered", "skip")
    assert keep.tolist() == [True, False]
    chosen, keep = prompts_for(boxes, "filtered", "full")
    assert keep.tolist() == [True, True] and chosen[1].tolist() == [0, 0, 31, 31]
    _, keep = prompts_for(boxes, "gt", "full")  # no ground truth, no box, whatever the policy
    assert keep.tolist() == [False, True]


def test_jitter_only_moves_box_sides_outward_within_the_tile():
    boxes = torch.tensor([[10.0, 12, 20, 22], [0, 0, 31, 31]]).repeat(50, 1)
    moved = jitter_boxes(boxes, 5, 32, torch.Generator().manual_seed(0))
    grow = (moved - boxes) * torch.tensor([-1.0, -1, 1, 1])
    assert (grow >= 0).all() and (grow <= 5).all() and grow.sum() > 0
    assert moved.min() >= 0 and moved.max() <= 31
    assert torch.equal(jitter_boxes(boxes, 0, 32, torch.Generator()), boxes)


# --------------------------------------------------------------------------- bad input
def cli_error(capsys, args: list[str]) -> str:
    """stderr of a train command that must exit 2: a ConfigError (returned) or a usage error (raised)."""
    try:
        code = train_main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    return capsys.readouterr().err


@pytest.fixture
def safe_args(tmp_path) -> list[str]:
    """Arguments that keep any run tiny, should a check wrongly let it start."""
    return ["--cache-dir", str(tmp_path / "cache"), "--synthetic-cases", "3", "--targets", "BC",
            "--segmenter-epochs", "1", "--decoder-epochs", "1", "--stop-after", "segmenter",
            "--tile-size", "32", "--out", str(tmp_path / "run"), "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/prostate"], "folder does not exist"),
    (["--source", "Z"], "unknown domain letter"),
    (["--targets", "AB"], "A is the source domain"),
    (["--targets", "BX"], "unknown domain letter"),
    (["--tile-size", "20"], "does not fit --sam compact"),
    (["--theta1", "1.5"], "theta1 must lie strictly between 0 and 1"),
    (["--segmenter-epochs", "0"], "--segmenter-epochs must be a positive integer"),
    (["--decoder-prompts", "box"], "--decoder-prompts: invalid choice"),
])
def test_bad_arguments_get_one_clear_message(capsys, safe_args, args, message):
    err = cli_error(capsys, safe_args + args)
    assert message in err and "Traceback" not in err
    assert not (Path(safe_args[safe_args.index("--out") + 1])).exists()


def test_missing_domain_folder_is_named(capsys, safe_args, tmp_path):
    (tmp_path / "release" / "ISBI").mkdir(parents=True)
    err = cli_error(capsys, safe_args + ["--data", str(tmp_path / "release")])
    assert "ISBI" in err and "empty" in err
    (tmp_path / "release" / "ISBI" / "Case00.nii.gz").write_bytes(b"")
    err = cli_error(capsys, safe_args + ["--data", str(tmp_path / "release")])
    assert "Case00" in err and "no label file" in err


def test_sam_checkpoint_and_tile_size_checks(capsys, safe_args, tmp_path):
    err = cli_error(capsys, safe_args + ["--sam", "vit_b", "--tile-size", "256"])
    assert "does not fit --sam vit_b" in err and "512" in err
    err = cli_error(capsys, safe_args + ["--sam", "vit_b", "--tile-size", "512"])
    assert "needs its weights" in err
    compact = tmp_path / "compact.pth"
    torch.save(sam_from_config(compact_config(64)).state_dict(), compact)
    err = cli_error(capsys, safe_args + ["--sam", "vit_b", "--tile-size", "512", "--sam-checkpoint", str(compact)])
    assert "looks like compact (canvas 64)" in err
    err = cli_error(capsys, safe_args + ["--tile-size", "64", "--sam-checkpoint", str(compact)])
    assert "looks like compact (canvas 64)" in err and "compact (canvas 128)" in err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    err = cli_error(capsys, safe_args + ["--sam-checkpoint", str(garbage)])
    assert "cannot be read" in err
    err = cli_error(capsys, safe_args + ["--sam-checkpoint", str(tmp_path / "missing.pth")])
    assert "file not found" in err


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a GPU")
def test_cuda_on_a_cpu_machine(capsys, safe_args):
    err = cli_error(capsys, safe_args + ["--device", "cuda"])
    assert "no CUDA GPU is available" in err


def test_out_folder_that_is_not_a_run_is_left_alone(capsys, safe_args, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    err = cli_error(capsys, safe_args)
    assert "is not a sammed_fast run folder" in err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_evaluate_needs_a_finished_run(capsys, tmp_path):
    assert evaluate_main(["--run", str(tmp_path / "nothing")]) == 2
    assert "nothing: run folder does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate_main(["--run", str(tmp_path / "empty")]) == 2
    assert "empty: not a sammed_fast run folder" in capsys.readouterr().err


def test_cli_bad_input_prints_no_traceback():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "sammed_fast.train", "--source", "Q"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2
    assert "unknown domain letter" in proc.stderr and "Traceback" not in proc.stderr


def test_config_checks_are_keyword_only_and_typed():
    with pytest.raises(TypeError):
        TrainConfig("A")  # noqa: keyword-only
    with pytest.raises(ConfigError, match="cannot be combined"):
        TrainConfig(all_sources=True, targets="BC")
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(precision="fp16").resolved()
    config = TrainConfig(targets="c,d").resolved()
    assert config.targets == ("C", "D") and config.tile_size == 64
    assert dataclasses.replace(config, sam="vit_b", tile_size=None).resolved().tile_size == 512


@pytest.mark.parametrize("field, value, flag", [("theta2", math.nan, "--theta2"), ("theta1", math.nan, "--theta1"),
                                                ("theta2_sweep", (0.5, math.nan), "--theta2-sweep")])
def test_nan_thresholds_are_refused_naming_the_option(field, value, flag):
    with pytest.raises(ConfigError, match=f"{flag} must lie strictly between 0 and 1, got nan"):
        TrainConfig(**{field: value})


def test_the_mosaic_dice_of_a_run_equals_numpy_on_its_stored_predictions(full_run):
    """results.json's dice_mosaic of the segmenter row, recomputed from predictions/<split>.pt and
    the tile-size labels by numpy, mosaic = 4 consecutive slices of the split."""
    from sammed_fast.experiment.run_data import data_root, load_run_data

    path, results = full_run
    config = TrainConfig.read(path / "config.json")
    data = load_run_data(config, data_root(config, progress=False), progress=False)
    for split, domain in (("test", "A"), ("B", "B"), ("C", "C")):
        probs = torch.load(path / "predictions" / f"{split}.pt", weights_only=True)["probs"].float().numpy()
        labels = data.splits[split].slices.labels[:, 0].numpy() > 0
        scores = []
        for start in range(0, len(probs), 4):
            p, t = probs[start:start + 4] > 0.5, labels[start:start + 4]
            if p.sum() + t.sum():
                scores.append(2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
        expected = float(np.mean(scores)) if scores else None
        got = results["rows"]["segmenter"]["dice_mosaic"].get(domain)
        assert got == pytest.approx(expected), split
