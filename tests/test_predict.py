"""``python -m sammed_fast.predict`` on a tiny finished run: masks on disk, agreement with the run's
own evaluation, bad inputs reported without stopping the others, and missing runs named.

One tiny run (3 synthetic cases per domain, source A, target B, tile 32, a 2-step compact-SAM
pretraining; the segmenter gets a few fast epochs so that some slices get real filtered boxes) is
shared by the module.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sammed_fast.data.prostate import DOMAINS
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.run_folder import MARKER
from sammed_fast.cli.predict import main
from sammed_fast.experiment.prediction import PredictionFailed, list_inputs, predict
from sammed_fast.experiment.jobs import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    config = TrainConfig(cache_dir=root / "cache", synthetic_cases=3, targets="B", tile_size=32,
                         segmenter_epochs=15, segmenter_lr=3e-3, theta1=0.4, decoder_epochs=2, compact_pretrain_steps=2,
                         empty_box="full", figure_slices=1, out=root / "run", progress=False,
                         device="cpu", threads=1)
    return train(config)


def domain_folder(run: Path, letter: str) -> Path:
    config = TrainConfig.read(run / "config.json")
    folders = list(Path(config.cache_dir).glob(f"synthetic_*/{DOMAINS[letter].folder}"))
    assert len(folders) == 1, folders
    return folders[0]


def read_mask(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def test_inputs_come_in_natural_name_order_without_labels_and_masks(tmp_path):
    for name in ("Case10.nii.gz", "Case2.nii", "Case1.nii.gz", "Case1_segmentation.nii.gz", "Case2_mask.nii.gz",
                 "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_inputs(tmp_path)] == ["Case1.nii.gz", "Case2.nii", "Case10.nii.gz"]


@pytest.mark.parametrize("foreground, panels", [((1, 2, 3, 4), 3), ((), 1)])
def test_overlay_png_has_a_panel_per_largest_mask_slice(tmp_path, foreground, panels):
    import matplotlib.image

    from sammed_fast.data.prostate import Volume
    from sammed_fast.experiment.prediction import _write_overlay

    image = np.random.default_rng(0).standard_normal((6, 20, 30)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    for s in foreground:
        mask[s, 5:5 + s, 5:10] = 1
    volume = Volume("B", "Case03", image, mask, (1.0, 1.0, 1.0), np.eye(4), None)
    _write_overlay(tmp_path / "o.png", volume, mask)
    data = (tmp_path / "o.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data  # no matplotlib version in the bytes
    height, width, _ = matplotlib.image.imread(tmp_path / "o.png").shape
    assert (width, height) == (300 * panels, 320)  # 3 x 3.2 inches per panel at 100 dpi


def test_masks_of_a_target_domain_score_what_the_run_evaluated(tiny_run, tmp_path):
    folder = domain_folder(tiny_run, "B")
    inputs = list_inputs(folder)
    assert len(inputs) == 3 and all("segmentation" not in p.name.lower() for p in inputs)
    written = predict(run=tiny_run, inputs=folder, output=tmp_path / "out", device="cpu", progress=False)
    assert [p.name for p in written] == [p.name.replace(".nii.gz", "_mask.nii.gz") for p in inputs]

    with open(tiny_run / "cases.csv", newline="") as handle:
        evaluated = {c["case_id"]: float(c["dice3d"]) for c in csv.DictReader(handle)
                     if c["row"] == "sam_filtered" and c["domain"] == "B"}
    assert len(evaluated) == len(inputs)
    for source, mask_path in zip(inputs, written):
        mask, img = read_mask(mask_path)
        reference = nib.load(str(source))
        assert mask.shape == reference.shape
        assert np.allclose(img.affine, reference.affine)
        assert img.get_data_dtype() == np.uint8 and set(np.unique(mask)) <= {0, 1}
        case_id = source.name.split(".")[0]
        label_path, = [p for p in source.parent.iterdir()
                       if p.name.lower().startswith(f"{case_id.lower()}_segmentation.nii")]
        label = np.asarray(nib.load(str(label_path)).dataobj) > 0
        assert dice(mask, label) == pytest.approx(evaluated[case_id], abs=1e-3), case_id
    assert not list((tmp_path / "out").glob("*.tmp"))

    # Canvases and batches only regroup whole 4-slice canvases: the batch size changes nothing.
    again = predict(run=tiny_run, inputs=folder, output=tmp_path / "again", device="cpu", batch=8,
                    progress=False)
    for first, second in zip(written, again):
        assert np.array_equal(read_mask(first)[0], read_mask(second)[0])


def evaluation_probs(run: Path, letter: str) -> dict[str, torch.Tensor]:
    """The oracle: the method's SAM probabilities of every volume of target split ``letter`` at its
    own resolution, from what the run stored (segmenter predictions, filtered boxes, the split's
    embedding cache), through the evaluation's code path."""
    from sammed_fast.experiment.boxes_stage import load_boxes
    from sammed_fast.experiment.run_data import data_root, load_run_data
    from sammed_fast.experiment.run_folder import RunFolder, load_torch
    from sammed_fast.experiment.sam_model import build_run_sam
    from sammed_fast.experiment.sam_stage import load_decoder
    from sammed_fast.experiment.scoring import assemble
    from sammed_fast.method.predictor import Predictor

    config = TrainConfig.read(run / "config.json")
    split = load_run_data(config, data_root(config, progress=False), progress=False).splits[letter]
    folder = RunFolder(path=run, config=config)
    model = build_run_sam(run / "sam_base.pth", config, torch.device("cpu"))
    load_decoder(folder, model)
    boxes = load_boxes(folder, split)
    predictor = Predictor(segmenter=None, prompter=config.prompter(), sam=model)
    prompt, keep = predictor.prompter.prompts(boxes, "filtered")
    real = ~boxes["filtered_empty"] & (boxes["filtered"] != boxes["whole"]).any(1)
    assert real.any(), "no slice has a filtered box: the box filter is not exercised"
    embeddings = load_torch(run / "cache" / f"embeddings_{letter}.pt")["embeddings"]
    probs = predictor.decode(embeddings, prompt, keep)
    assembler = assemble(split, probs)
    return {v.case_id: assembler.volume(v.key) for v in split.volumes}


def test_masks_equal_the_evaluation_masks_voxel_by_voxel(tiny_run, tmp_path):
    """At a theta2 that leaves about a tenth of the voxels in the mask (so the comparison is not
    trivially between empty masks), predict's masks are the evaluation's."""
    oracle = evaluation_probs(tiny_run, "B")
    theta2 = float(torch.quantile(torch.cat([p.flatten() for p in oracle.values()]), 0.9))
    assert 0.0 < theta2 < 1.0
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tensorboard"))
    config = (run / "config.json").read_text()
    stored = TrainConfig.read(run / "config.json")
    TrainConfig.from_json({**stored.to_json(), "theta2": theta2, "out": str(run)}).write(run / "config.json")
    assert config != (run / "config.json").read_text()

    written = predict(run=run, inputs=domain_folder(run, "B"), output=tmp_path / "out", device="cpu",
                      progress=False)
    for path in written:
        case_id = path.name.removesuffix("_mask.nii.gz")
        expected = (oracle[case_id] > theta2).numpy().transpose(2, 1, 0)  # (S,H,W) -> NIfTI order
        mask = read_mask(path)[0].astype(bool)
        assert expected.sum() > 0 and mask.shape == expected.shape
        assert (mask != expected).mean() <= 1e-3, case_id


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_a_corrupt_input_is_reported_and_the_others_written(tiny_run, tmp_path, capsys):
    source = nib.load(str(domain_folder(tiny_run, "A") / "Case00.nii.gz"))
    data = np.asarray(source.dataobj, dtype=np.float32)
    inputs = tmp_path / "in"
    inputs.mkdir()
    affine = np.diag([0.7, 0.6, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    write_volume(inputs / "scan1.nii.gz", data[:-7, :, :5], affine)  # non-square in-plane
    write_volume(inputs / "scan2.nii", data[:, :-3, 2:], np.eye(4))
    (inputs / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    write_volume(inputs / "scan1_segmentation.nii.gz", np.zeros((3, 3, 3), np.uint8), np.eye(4))

    code = main(["--run", str(tiny_run), "--input", str(inputs), "--output", str(tmp_path / "out"),
                 "--overlays", "--device", "cpu", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "scan1_segmentation" not in err
    for name in ("scan1", "scan2"):
        mask, img = read_mask(tmp_path / "out" / f"{name}_mask.nii.gz")
        reference = nib.load(str(next(inputs.glob(f"{name}.nii*"))))
        assert mask.shape == reference.shape and np.allclose(img.affine, reference.affine)
        assert set(np.unique(mask)) <= {0, 1}
        assert (tmp_path / "out" / f"{name}_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scan1_mask.nii.gz", "scan1_overlay.png", "scan2_mask.nii.gz", "scan2_overlay.png"]

    with pytest.raises(PredictionFailed) as info:
        predict(run=tiny_run, inputs=[inputs / "broken.nii.gz", inputs / "scan2.nii"],
                output=tmp_path / "api", device="cpu", progress=False)
    assert list(info.value.failed) == [inputs / "broken.nii.gz"]
    assert info.value.written == [tmp_path / "api" / "scan2_mask.nii.gz"]


def test_a_single_input_may_name_its_output_file(tiny_run, tmp_path):
    source = domain_folder(tiny_run, "B") / "Case01.nii.gz"
    target = tmp_path / "deep" / "result.nii"
    assert predict(run=tiny_run, inputs=source, output=target, device="cpu", progress=False) == [target]
    mask, img = read_mask(target)
    assert mask.shape == nib.load(str(source)).shape and img.get_data_dtype() == np.uint8


def test_missing_or_incomplete_runs_are_named(tiny_run, tmp_path, capsys):
    source = domain_folder(tiny_run, "B") / "Case01.nii.gz"
    with pytest.raises(ConfigError, match="does not exist"):
        predict(run=tmp_path / "nowhere", inputs=source, output=tmp_path / "out", progress=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_run / "config.json", partial / "config.json")
    with pytest.raises(ConfigError, match="not a sammed_fast run folder"):  # no marker yet
        predict(run=partial, inputs=source, output=tmp_path / "out", progress=False)
    shutil.copy(tiny_run / MARKER, partial / MARKER)
    shutil.copytree(tiny_run / "checkpoints", partial / "checkpoints")
    (partial / "checkpoints" / "decoder_best.pt").unlink()
    with pytest.raises(ConfigError, match="decoder_best.pt") as info:
        predict(run=partial, inputs=source, output=tmp_path / "out", progress=False)
    assert "segmenter_best.pt" not in str(info.value)
    assert main(["--run", str(tmp_path / "nowhere"), "--input", str(source), "--output",
                 str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--batch"):
        predict(run=tiny_run, inputs=source, output=tmp_path / "out", batch=6, progress=False)


# --------------------------------------------------------------------------- a user's files are safe
def test_the_output_may_never_be_an_input(tiny_run, tmp_path, capsys):
    """predict --input X.nii.gz --output X.nii.gz used to replace the scan with its mask."""
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(domain_folder(tiny_run, "B") / "Case01.nii.gz", scan)
    original = scan.read_bytes()
    assert main(["--run", str(tiny_run), "--input", str(scan), "--output", str(scan), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--output {scan} is the input {scan}" in err
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    with pytest.raises(ValueError, match="would replace the scan"):
        predict(run=tiny_run, inputs=scan, output=link, progress=False)
    assert scan.read_bytes() == original


def test_existing_files_that_are_not_our_masks_are_left_alone(tiny_run, tmp_path):
    """Output folder = input folder: a user's own file named like the mask is refused by name; a
    mask this command wrote is replaced on the next prediction."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(domain_folder(tiny_run, "B") / "Case01.nii.gz", folder / "scan.nii.gz")
    mine = folder / "scan_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), str(mine))
    before = mine.read_bytes()
    with pytest.raises(ValueError, match="scan_mask.nii.gz .* is not a mask written by sammed_fast"):
        predict(run=tiny_run, inputs=folder, output=folder, progress=False)
    assert mine.read_bytes() == before
    mine.unlink()
    written = predict(run=tiny_run, inputs=folder, output=folder, device="cpu", progress=False)
    assert written == [mine]
    assert predict(run=tiny_run, inputs=folder, output=folder, device="cpu", progress=False) == [mine]
    assert bytes(nib.load(str(mine)).header["descrip"]).startswith(b"sammed_fast mask")


def test_a_volume_stored_slice_axis_first_gets_the_same_mask(tiny_run, tmp_path):
    """The same scan stored as L,P,S and as S,L,P (affine permuted to match): the masks are the same
    voxels, each written in its own input's orientation."""
    source = nib.load(str(domain_folder(tiny_run, "B") / "Case01.nii.gz"))
    data = np.asarray(source.dataobj, dtype=np.float32)
    affine = np.diag([-0.6, -0.6, 3.0, 1.0])
    folder = tmp_path / "in"
    folder.mkdir()
    write_volume(folder / "lps.nii.gz", data, affine)
    write_volume(folder / "slp.nii.gz", data.transpose(2, 0, 1).copy(), affine[:, [2, 0, 1, 3]])
    # One call each: slices of consecutive inputs would otherwise share SAM canvases.
    [lps] = predict(run=tiny_run, inputs=folder / "lps.nii.gz", output=tmp_path / "out", device="cpu",
                    progress=False)
    [slp] = predict(run=tiny_run, inputs=folder / "slp.nii.gz", output=tmp_path / "out", device="cpu",
                    progress=False)
    lps_mask, slp_mask = read_mask(lps)[0], read_mask(slp)[0]
    assert lps_mask.any(), "the scan must get some foreground for the comparison to mean anything"
    np.testing.assert_array_equal(slp_mask, lps_mask.transpose(2, 0, 1))
    np.testing.assert_allclose(read_mask(slp)[1].affine, affine[:, [2, 0, 1, 3]])
