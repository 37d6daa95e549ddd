"""What hostile testing found (issue 14), one test per case: foreign folders, the run-folder lock,
runs without any box, non-finite training, orientation, bad files named, empty source labels and
file permissions. The op-level cases live in tests/test_ops_robustness.py; predict's in
tests/test_predict.py."""
from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sammed_fast.atomic import save_torch_atomic, write_text_atomic
from sammed_fast.data.prostate import CaseFiles, read_case, save_like
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.fitting import TrainingDiverged, fit
from sammed_fast.experiment.run_folder import LOCK, MARKER, RunFolder, RunLock
from sammed_fast.cli.evaluate import main as evaluate_main
from sammed_fast.cli.train import main as train_main
from sammed_fast.experiment.jobs import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny(cache_dir: Path, out: Path, **changes) -> TrainConfig:
    base = dict(cache_dir=cache_dir, synthetic_cases=3, targets="B", tile_size=32, segmenter_epochs=1,
                decoder_epochs=1, compact_pretrain_steps=0, figure_slices=1, out=out, progress=False,
                device="cpu", threads=1)
    base.update(changes)
    return TrainConfig(**base)


def cli_error(capsys, main, args: list[str]) -> str:
    """stderr of a command that must exit 2: a ConfigError (returned) or an argparse usage error (raised)."""
    try:
        code = main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- 1: foreign folders
def test_a_foreign_folder_with_a_config_json_is_left_untouched(cache_dir, tmp_path, capsys):
    """The issue's reproduction: another tool's folder that happens to hold config.json."""
    folder = tmp_path / "v"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "cache").mkdir()
    (folder / "config.json").write_text('{"name":"app"}')
    (folder / "checkpoints" / "model_v1.pt").write_text("x")
    (folder / "results.json").write_text("x")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    err = cli_error(capsys, train_main, ["--out", str(folder), "--cache-dir", str(cache_dir),
                                         "--synthetic-cases", "3", "--targets", "B", "--tile-size", "32",
                                         "--stop-after", "segmenter", "--no-progress"])
    assert "not a sammed_fast run folder" in err and str(folder) in err
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in folder.iterdir()) == ["cache", "checkpoints",
                                                                            "config.json", "results.json"]


def test_starting_over_removes_only_what_a_run_writes(cache_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny(cache_dir, out, stop_after="segmenter"))
    assert json.loads((out / MARKER).read_text())["tool"] == "sammed_fast"
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "segmenter_latest.pt").write_bytes(b"stale")
    train(tiny(cache_dir, out, stop_after="segmenter"))
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "segmenter_latest.pt").read_bytes() != b"stale"


def test_all_sources_refuses_a_foreign_parent_folder(tmp_path, capsys):
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "results.md").write_text("somebody's table")
    err = cli_error(capsys, train_main, ["--all-sources", "--out", str(tmp_path / "table"),
                                         "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert "not a sammed_fast run folder" in err
    assert (tmp_path / "table" / "results.md").read_text() == "somebody's table"


def test_evaluate_and_predict_refuse_an_unmarked_folder(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps(TrainConfig().to_json()))
    err = cli_error(capsys, evaluate_main, ["--run", str(tmp_path / "r")])
    assert "not a sammed_fast run folder" in err


# --------------------------------------------------------------------------- 4: the lock
def test_a_locked_run_folder_is_refused_and_untouched(cache_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny(cache_dir, out, stop_after="segmenter"))
    holder = RunLock.acquire(out)
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    try:
        with pytest.raises(ConfigError, match=f"in use by another process \\(pid {os.getpid()}\\)"):
            train(tiny(cache_dir, out, stop_after="segmenter"))
        with pytest.raises(ConfigError, match="in use"):
            train(tiny(cache_dir, out, resume=True))
    finally:
        holder.release()
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before
    train(tiny(cache_dir, out, resume=True))  # free again: the run finishes
    assert (out / "results.json").is_file()


def test_the_lock_dies_with_its_process(tmp_path):
    folder = tmp_path / "f"
    code = ("import sys, time; from pathlib import Path; from sammed_fast.experiment.run_folder import RunLock;"
            "lock = RunLock.acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            RunLock.acquire(folder)
    finally:
        proc.kill()
        proc.wait()
    RunLock.acquire(folder).release()  # SIGKILL left no stale lock
    assert (folder / LOCK).is_file()


def test_two_runs_started_together_one_is_refused(cache_dir, tmp_path):
    """Two real processes on one --out: the second is refused at once and touches nothing; killing
    the first mid-run leaves a folder that --resume accepts (config.json and state.json intact)."""
    train(tiny(cache_dir, tmp_path / "warm", stop_after="segmenter"))  # the synthetic set exists
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "sammed_fast.train", "--out", str(out), "--cache-dir", str(cache_dir),
            "--synthetic-cases", "3", "--targets", "B", "--tile-size", "32", "--segmenter-epochs", "100000",
            "--stop-after", "segmenter", "--compact-pretrain-steps", "0", "--no-progress", "--threads", "1"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "state.json").is_file() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.05)
        config_before = (out / "config.json").read_text()
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run must still be running"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "in use by another process" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert (out / "config.json").read_text() == config_before
    stored = TrainConfig.read(out / "config.json")
    assert stored.segmenter_epochs == 100000 and json.loads((out / "state.json").read_text())["stages"] == {}


# --------------------------------------------------------------------------- 3: no box at all
def test_a_run_where_no_training_slice_gets_a_box_finishes(cache_dir, tmp_path):
    """theta1 far above anything a 1-epoch segmenter predicts: every filtered box is empty, the
    decoder has no slice to train on, and the run must still finish (it crashed in unmerge_tiles'
    backward on an empty batch)."""
    out = train(tiny(cache_dir, tmp_path / "run", theta1=0.999999, empty_box="skip", decoder_epochs=2))
    log = (out / "train.log").read_text()
    assert "no source training slice has a filtered box" in log
    results = json.loads((out / "results.json").read_text())
    assert results["rows"]["sam_filtered"]["dice3d"]["B"] == 0.0


# --------------------------------------------------------------------------- 5: non-finite training
@pytest.mark.parametrize("flag", ["--decoder-lr", "--segmenter-lr"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1e-3"])
def test_learning_rates_must_be_finite_and_positive(capsys, tmp_path, flag, value):
    err = cli_error(capsys, train_main, [f"{flag}={value}", "--out", str(tmp_path / "run")])
    assert f"{flag} must be a finite positive number" in err
    assert not (tmp_path / "run").exists()


def test_a_nan_loss_stops_the_stage_naming_it_and_keeps_the_last_good_weights(tmp_path):
    out = tmp_path / "fit"
    out.mkdir()
    run = RunFolder(path=out, config=TrainConfig(out=out, progress=False))
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = iter([1.0, math.nan])
    with pytest.raises(TrainingDiverged, match=r"stage decoder, epoch 2/3: the training loss is nan"):
        fit(run=run, name="decoder", module=model, optimizer=optimizer, epochs=3,
            train_epoch=lambda epoch: next(losses), validate=lambda: 0.5, resume=False, progress=False)
    assert torch.load(run.checkpoint_path("decoder", "latest"), weights_only=True)["epoch"] == 0
    with pytest.raises(TrainingDiverged, match=r"stage segmenter, epoch 1/1: the source validation score is inf"):
        fit(run=run, name="segmenter", module=model, optimizer=optimizer, epochs=1,
            train_epoch=lambda epoch: 1.0, validate=lambda: math.inf, resume=False, progress=False)


def test_a_diverging_segmenter_stops_with_a_message(cache_dir, tmp_path, capsys):
    """A finite but absurd learning rate: weights overflow, the loss turns NaN, the stage stops."""
    err = cli_error(capsys, train_main, [
        "--out", str(tmp_path / "run"), "--cache-dir", str(cache_dir), "--synthetic-cases", "3",
        "--targets", "B", "--tile-size", "32", "--segmenter-epochs", "2", "--segmenter-lr", "1e30",
        "--stop-after", "segmenter", "--no-progress", "--threads", "1"])
    assert "stage segmenter, epoch" in err and "diverged" in err and "--segmenter-lr" in err


# --------------------------------------------------------------------------- 6: orientation
def write_case(folder: Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> CaseFiles:
    folder.mkdir(parents=True, exist_ok=True)
    files = CaseFiles(case, folder / f"{case}.nii.gz", folder / f"{case}_segmentation.nii.gz")
    nib.save(nib.Nifti1Image(image, affine), str(files.image))
    nib.save(nib.Nifti1Image(label, affine), str(files.label))
    return files


def lps_affine(zooms=(0.6, 0.5, 3.0)) -> np.ndarray:
    return np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])


def test_a_volume_stored_slice_axis_first_is_read_as_axial(tmp_path):
    """The same volume stored as L,P,S and as S,L,P (axes permuted, affine to match) and as R,A,S
    (in-plane flipped): the reader gives the same axial slices, spacing and label for all three."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, (10, 8, 4)).astype(np.float32)  # (i, j, k) = (L, P, S)
    label = (rng.random((10, 8, 4)) < 0.3).astype(np.uint8)
    affine = lps_affine()
    lps = read_case(write_case(tmp_path / "lps", "Case00", image, label, affine), "A")

    to_slp = (2, 0, 1)  # stored axis 0 = S, 1 = L, 2 = P
    slp_affine = affine[:, [2, 0, 1, 3]]
    slp_files = write_case(tmp_path / "slp", "Case00", image.transpose(to_slp), label.transpose(to_slp), slp_affine)
    assert nib.aff2axcodes(slp_affine) == ("S", "L", "P")
    slp = read_case(slp_files, "A")

    ras_affine = np.diag([0.6, 0.5, 3.0, 1.0])
    ras = read_case(write_case(tmp_path / "ras", "Case00", image[::-1, ::-1].copy(),
                               label[::-1, ::-1].copy(), ras_affine), "A")
    for other in (slp, ras):
        assert other.image.shape == lps.image.shape == (4, 8, 10)  # 4 axial slices
        np.testing.assert_array_equal(other.image, lps.image)
        np.testing.assert_array_equal(other.label, lps.label)
        assert other.spacing == pytest.approx(lps.spacing) and lps.spacing == pytest.approx((0.6, 0.5, 3.0))

    # A prediction goes back in the input's own orientation and affine.
    written = save_like(slp, slp.label, tmp_path / "pred.nii.gz")
    back = nib.load(str(written))
    np.testing.assert_allclose(back.affine, slp_affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), label.transpose(to_slp))


# --------------------------------------------------------------------------- 8: tracebacks -> messages
@pytest.mark.parametrize("dtype", [np.complex64, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])])
def test_complex_and_rgb_volumes_are_named(tmp_path, dtype):
    data = np.zeros((4, 4, 2), dtype=dtype)
    files = write_case(tmp_path / "c", "Case00", data, np.zeros((4, 4, 2), np.uint8), lps_affine())
    with pytest.raises(ValueError, match=r"Case00.nii.gz: the image has data type .*real-valued"):
        read_case(files, "A")


def test_seed_beyond_32_bits_is_refused(capsys, tmp_path):
    for seed in (str(2**32), str(2**64 + 1)):
        err = cli_error(capsys, train_main, ["--seed", seed, "--out", str(tmp_path / "run")])
        assert "--seed(s) must be integers from 0 to 4294967295" in err


@pytest.fixture(scope="module")
def finished_run(cache_dir, tmp_path_factory) -> Path:
    return train(tiny(cache_dir, tmp_path_factory.mktemp("runs") / "done", empty_box="full"))


def test_a_swapped_decoder_checkpoint_is_named(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    shutil.copy(run / "checkpoints" / "segmenter_best.pt", run / "checkpoints" / "decoder_best.pt")
    err = cli_error(capsys, evaluate_main, ["--run", str(run), "--device", "cpu", "--no-progress"])
    assert "decoder_best.pt: does not hold the weights of this run's decoder" in err


def test_a_truncated_sam_base_is_not_blamed_on_the_user(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    (run / "sam_base.pth").write_bytes((run / "sam_base.pth").read_bytes()[:1000])
    err = cli_error(capsys, evaluate_main, ["--run", str(run), "--device", "cpu", "--no-progress"])
    assert "--sam-checkpoint" not in err and "sam_base.pth" in err and "--resume" in err


# --------------------------------------------------------------------------- 9: empty source labels
def test_a_source_without_any_foreground_is_refused_before_training(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for folder, empty in (("ISBI", True), ("ISBI_1.5", False)):
        for case in range(4):
            label = np.zeros((16, 16, 3), np.uint8) if empty else (rng.random((16, 16, 3)) < 0.2).astype(np.uint8)
            write_case(tmp_path / "release" / folder, f"Case{case:02d}",
                       rng.uniform(0, 100, (16, 16, 3)).astype(np.float32), label, lps_affine())
    out = tmp_path / "run"
    err = cli_error(capsys, train_main, ["--data", str(tmp_path / "release"), "--targets", "B",
                                         "--tile-size", "32", "--out", str(out), "--no-progress",
                                         "--segmenter-epochs", "1", "--stop-after", "segmenter"])
    assert "every label of its training split is empty" in err and "Case00_segmentation.nii.gz" in err
    assert not (out / "checkpoints").exists()


# --------------------------------------------------------------------------- 10: permissions
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        text = write_text_atomic(tmp_path / "results.json", "{}")
        weights = save_torch_atomic(tmp_path / "w.pt", {"x": torch.zeros(1)})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    for path in (text, weights, tmp_path / "plain"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# --------------------------------------------------------------------------- box noise (issue 10)
def test_box_noise_is_seeded_bounded_and_valid():
    from sammed_fast.method.prompts import noise_boxes

    boxes = torch.tensor([[10.0, 12, 29, 21], [0, 0, 63, 63], [5, 5, 5, 5]]).repeat(200, 1)
    draw = lambda seed: noise_boxes(boxes, 0.1, 64, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    noisy = draw(3)
    extent = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    assert ((noisy - boxes).abs() <= 0.1 * extent + 0.5).all()
    assert (noisy[:, :2] <= noisy[:, 2:]).all() and noisy.min() >= 0 and noisy.max() <= 63
    assert (noisy != boxes).any(1).float().mean() > 0.5, "most boxes must move"
    assert (noisy[:, 2] - noisy[:, 0] < boxes[:, 2] - boxes[:, 0]).any(), "some boxes must shrink"
    assert (noisy[:, 2] - noisy[:, 0] > boxes[:, 2] - boxes[:, 0]).any(), "some boxes must grow"
    assert torch.equal(noise_boxes(boxes, 0.0, 64, torch.Generator()), boxes)


def test_box_noise_is_used_in_training_and_never_at_evaluation(cache_dir, tmp_path, monkeypatch):
    from sammed_fast.experiment import sam_stage
    from sammed_fast.experiment.jobs import evaluate

    calls = []
    original = sam_stage.noise_boxes
    monkeypatch.setattr(sam_stage, "noise_boxes", lambda *a: calls.append(a[1]) or original(*a))
    out = train(tiny(cache_dir, tmp_path / "run", box_noise=0.2, theta1=0.5, empty_box="full"))
    assert calls and set(calls) == {0.2}
    results = json.loads((out / "results.json").read_text())
    assert results["training_box_noise"] == 0.2

    def refuse(*args):
        raise AssertionError("box noise at evaluation")

    monkeypatch.setattr(sam_stage, "noise_boxes", refuse)
    assert evaluate(out, device="cpu", progress=False)["rows"] == results["rows"]


# --------------------------------------------------------------------------- cross-fitting (issue 10)
def test_crossfit_folds_partition_the_training_volumes():
    from sammed_fast.experiment.segmenter_stage import crossfit_folds

    volumes = [f"v{i}" for i in range(7)]
    folds = crossfit_folds(volumes, 3)
    assert folds == [["v0", "v3", "v6"], ["v1", "v4"], ["v2", "v5"]]
    with pytest.raises(ConfigError, match="only 2 volume"):
        crossfit_folds(volumes[:2], 3)


def test_crossfit_boxes_come_from_segmenters_that_never_saw_their_fold(cache_dir, tmp_path, monkeypatch):
    """Records which volumes each segmenter trains on and which volumes each fold model predicts:
    no fold is ever predicted by a model that trained on it; the decoder trains on those boxes."""
    from sammed_fast.experiment import segmenter_stage

    trained_on: dict[str, set] = {}
    original_fit = segmenter_stage._fit_segmenter

    def recording_fit(run, *, name, train, **kwargs):
        trained_on[name] = {key[1] for key in train.keys}
        return original_fit(run, name=name, train=train, **kwargs)

    predicted: dict[int, set] = {}
    original_probs = segmenter_stage.segmenter_probs

    def recording_probs(model, split, device, **kwargs):
        if split.name.startswith("train_fold"):
            predicted[int(split.name.removeprefix("train_fold"))] = {v.case_id for v in split.volumes}
        return original_probs(model, split, device, **kwargs)

    monkeypatch.setattr(segmenter_stage, "_fit_segmenter", recording_fit)
    monkeypatch.setattr(segmenter_stage, "segmenter_probs", recording_probs)
    out = train(tiny(cache_dir, tmp_path / "run", synthetic_cases=8, decoder_prompts="crossfit",
                     crossfit_folds=2, theta1=0.5, empty_box="full"))
    train_cases = trained_on["segmenter"]
    assert len(train_cases) >= 4 and set(predicted) == {0, 1}
    assert set().union(*predicted.values()) == train_cases  # every training volume gets crossfit boxes
    for k, cases in predicted.items():
        assert cases and not cases & trained_on[f"segmenter_fold{k}"], f"fold {k} saw its own volumes"
        assert trained_on[f"segmenter_fold{k}"] == train_cases - cases
    boxes = torch.load(out / "boxes" / "train.pt", weights_only=True)
    val = torch.load(out / "boxes" / "val.pt", weights_only=True)
    assert torch.equal(val["crossfit"], val["filtered"])  # other splits: the run's own filtered boxes
    assert not torch.equal(boxes["crossfit"], boxes["filtered"])
    results = json.loads((out / "results.json").read_text())
    assert "crossfit" in results["boxes"]["train"] and "crossfit" not in results["boxes"]["val"]
    assert results["decoder_prompts"] == "crossfit"


# --------------------------------------------------------------------------- a redirected log
def test_a_redirected_run_logs_lines_not_progress_bars(cache_dir, tmp_path):
    """stderr to a file: no carriage-return progress bars, one line per epoch instead."""
    train(tiny(cache_dir, tmp_path / "warm", stop_after="segmenter"))  # the synthetic set exists
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", "sammed_fast.train", "--out", str(tmp_path / "run"),
                        "--cache-dir", str(cache_dir), "--synthetic-cases", "3", "--targets", "B",
                        "--tile-size", "32", "--segmenter-epochs", "3", "--stop-after", "segmenter",
                        "--compact-pretrain-steps", "0", "--threads", "1"],
                       stdout=handle, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text()
    assert "\r" not in text
    assert [line for line in text.splitlines() if line.startswith("segmenter epoch")] == [
        line for line in text.splitlines() if "segmenter epoch" in line] and text.count("segmenter epoch") == 3


def test_real_data_with_the_cpu_segmenter_says_so(tmp_path):
    config = TrainConfig(data=tmp_path, device="cpu").resolved()
    assert config.segmenter == "resnet18_lite"
    [note] = config.notes()
    assert "resnet18_lite, not the paper's deeplabv3_resnet50" in note
    assert TrainConfig(data=tmp_path, device="cpu", segmenter="deeplabv3_resnet50").resolved().notes() == []
    assert TrainConfig(device="cpu").resolved().notes() == []  # the synthetic set: no paper to match

    from sammed_fast.experiment.report import results_markdown

    results = {"source": "A", "targets": ["B"], "columns": ["A", "B"], "sam": "compact", "tile_size": 64,
               "segmenter": "resnet18_lite", "theta1": 0.75, "downscale": 1, "theta2": 0.5, "empty_box": "skip",
               "seed": 0, "notes": [note], "rows": {}, "theta2_sweep": {}, "sam_scaling": "medsam"}
    assert f"**Note:** {note}." in results_markdown(results)
    assert "SAM: compact with medsam input scaling" in results_markdown(results)


# --------------------------------------------------------------------------- MedSAM scaling (issue 12)
def test_medsam_scaling_is_each_slice_min_max_scaled_to_0_1():
    """By hand: MedSAM's input is the slice min-max scaled to 0..1 in every channel; SAM's is the
    0..255 slice minus SAM's mean over SAM's std."""
    from sammed_fast.models import TiledSam
    from sammed_fast.models.sam_registry import compact_config, sam_from_config

    sam = sam_from_config(compact_config(64))
    rng = np.random.default_rng(0)
    slices = torch.from_numpy(rng.normal(size=(5, 1, 32, 32)).astype(np.float32))
    medsam = TiledSam(sam=sam, tile_size=32, input_scaling="medsam").canvases(slices)
    plain = TiledSam(sam=sam, tile_size=32).canvases(slices)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    for k in range(5):
        x = slices[k, 0].double().numpy()
        unit = (x - x.min()) / (x.max() - x.min())
        canvas, row, col = k // 4, (k % 4) // 2, k % 2
        tile = (slice(row * 32, row * 32 + 32), slice(col * 32, col * 32 + 32))
        for c in range(3):
            np.testing.assert_allclose(medsam[canvas, c][tile].numpy(), unit, atol=1e-6)
            np.testing.assert_allclose(plain[canvas, c][tile].numpy(), (unit * 255 - mean[c]) / std[c], atol=1e-4)
    with pytest.raises(ValueError, match="input_scaling"):
        TiledSam(sam=sam, tile_size=32, input_scaling="imagenet")


def test_a_medsam_checkpoint_needs_an_explicit_scaling(tmp_path, capsys):
    path = tmp_path / "medsam_vit_b.pth"
    with pytest.raises(ConfigError, match="looks like a MedSAM checkpoint.*--sam-scaling medsam"):
        TrainConfig(sam="vit_b", sam_checkpoint=path)
    assert TrainConfig(sam="vit_b", sam_checkpoint=path, sam_scaling="medsam").resolved().sam_scaling == "medsam"
    assert TrainConfig().resolved().sam_scaling == "sam"
    err = cli_error(capsys, train_main, ["--sam-scaling", "imagenet", "--out", str(tmp_path / "run")])
    assert "--sam-scaling: invalid choice" in err
