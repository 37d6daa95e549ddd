"""Runs on a dataset description (``--data`` a manifest or an nnU-Net folder): domain names for
--source/--targets, --labels, validation in preflight before any training, and a tiny run end to
end whose tables use the domain names and record the data form and label table. Several
structures: one segmenter channel, label channel and box row per structure, per-structure Dice
(equal to MONAI's DiceMetric) and its average."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sammed_fast.cli.evaluate import main as evaluate_main
from sammed_fast.cli.train import build_parser, config_from_args, main as train_main
from sammed_fast.data.labels import LabelTable
from sammed_fast.data.manifest import describe_dataset
from sammed_fast.data.slices import SliceDataset
from sammed_fast.data.synthetic_manifest import write_synthetic_multilabel
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.jobs import train
from sammed_fast.experiment.pipeline import preflight
from sammed_fast.experiment.run_data import Split
from sammed_fast.experiment.scoring import score_split
from sammed_fast.method.prompts import BoxPrompter
from sammed_fast.models import build_segmenter


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_synthetic_multilabel(tmp_path_factory.mktemp("multilabel"), cases_per_domain=4, seed=0)


def tiny(manifest: Path, out: Path, **changes) -> TrainConfig:
    base = dict(data=manifest, source="siteA", targets="siteB siteC", tile_size=32, theta1=0.5,
                segmenter_epochs=2, decoder_epochs=2, compact_pretrain_steps=0, empty_box="full",
                figure_slices=1, out=out, progress=False, device="cpu", threads=1)
    base.update(changes)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- the config
def test_domains_are_the_description_names(manifest, tmp_path):
    config = tiny(manifest, tmp_path / "run", targets=None).resolved()
    assert config.data_form == "json" and config.domains == ("siteA", "siteB", "siteC")
    assert config.targets == ("siteB", "siteC") and config.label_table.spec() == "inner=1,outer=2"
    stored = config.to_json()
    assert stored["data_form"] == "json" and stored["label_table"] == {"inner": 1, "outer": 2}
    assert "labels" not in stored  # given only when --labels is
    assert TrainConfig.from_json(stored) == config
    args = build_parser().parse_args(["--data", str(manifest), "--source", "siteA",
                                      "--targets", "siteC", "siteB"])
    assert config_from_args(args).targets == ("siteC", "siteB")
    assert tiny(manifest, tmp_path, targets="siteC,siteB").targets == ("siteC", "siteB")


@pytest.mark.parametrize("changes, message", [
    (dict(source="siteX"), "--source: unknown domain(s) ['siteX']"),
    (dict(source=None), "--source: give the source domain, one of siteA, siteB, siteC"),
    (dict(source="A"), "--source: unknown domain(s) ['A']"),
    (dict(targets="siteA"), "--targets: siteA is the source domain"),
    (dict(targets="siteB siteB"), "--targets: domains repeat"),
    (dict(labels="inner"), "--labels: 'inner' is not name=value"),
])
def test_bad_domain_names_and_labels_are_refused(manifest, tmp_path, changes, message):
    with pytest.raises(ConfigError) as error:
        tiny(manifest, tmp_path / "run", **changes)
    assert message in str(error.value)


def test_labels_apply_to_descriptions_and_the_release_not_the_built_in_set(tmp_path):
    with pytest.raises(ConfigError, match="--labels: the built-in synthetic set has one structure"):
        TrainConfig(labels="prostate=*")
    release = tmp_path / "release"
    release.mkdir()
    assert TrainConfig(data=release).label_table.spec() == "prostate=*"
    assert TrainConfig(data=release, labels="cg=1,pz=2").label_table.names == ("cg", "pz")
    with pytest.raises(ConfigError, match="--labels"):
        TrainConfig(data=release, labels="cg")
    preset = TrainConfig(data=release)
    assert preset.data_form == "six-site" and preset.label_table.spec() == "prostate=*"
    assert "labels" not in preset.to_json() and "data_form" not in preset.to_json()
    assert TrainConfig().data_form == "synthetic" and TrainConfig().source == "A"


def test_labels_override_the_description_table(manifest, tmp_path):
    config = tiny(manifest, tmp_path / "run", labels="zones=1+2")
    assert config.label_table.names == ("zones",) and config.to_json()["labels"] == "zones=1+2"
    assert not any("union" in note for note in config.notes())


def test_a_domain_named_like_a_split_is_refused(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"labels": "a=1", "cases": [
        {"case_id": "c1", "image": "c1.nii.gz", "label": "c1_seg.nii.gz", "domain": "siteA"},
        {"case_id": "c2", "image": "c2.nii.gz", "label": "c2_seg.nii.gz", "domain": "test"}]}))
    with pytest.raises(ConfigError, match="domain 'test' cannot name a run's split"):
        TrainConfig(data=manifest, source="siteA")


def test_preflight_reports_every_manifest_problem_before_training(manifest, tmp_path, capsys):
    broken = tmp_path / "broken"
    path = write_synthetic_multilabel(broken, cases_per_domain=4, seed=0)
    document = json.loads(path.read_text())
    missing = broken / document["cases"][5]["label"]
    missing.unlink()
    unreadable = broken / document["cases"][9]["image"]
    unreadable.write_bytes(b"not a nifti file")
    with pytest.raises(ConfigError) as error:
        preflight(tiny(path, tmp_path / "run"))
    assert str(missing) in str(error.value) and str(unreadable) in str(error.value)
    code = train_main(["--data", str(path), "--source", "siteA", "--tile-size", "32",
                       "--out", str(tmp_path / "run"), "--no-progress", "--compact-pretrain-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def described_run(manifest, tmp_path_factory) -> Path:
    return train(tiny(manifest, tmp_path_factory.mktemp("runs") / "run"))


def test_a_run_on_a_description_uses_its_domain_names(manifest, described_run, capsys):
    path = described_run
    results = json.loads((path / "results.json").read_text())
    assert results["source"] == "siteA" and results["columns"] == ["siteA", "siteB", "siteC"]
    assert results["data"] == str(manifest) and results["data_form"] == "json"
    assert results["labels"] == "inner=1,outer=2"
    for entry in results["rows"].values():
        assert set(entry["dice3d"]) == {"siteA", "siteB", "siteC", "target_mean"}
    markdown = (path / "results.md").read_text()
    assert "| siteA (source test) | siteB | siteC | target avg |" in markdown
    assert "structures inner=1,outer=2" in markdown
    stored = json.loads((path / "config.json").read_text())
    assert stored["data_form"] == "json" and stored["source"] == "siteA"
    assert {p.name for p in (path / "predictions").iterdir()} == {
        "train.pt", "val.pt", "test.pt", "siteB.pt", "siteC.pt"}
    before = (path / "results.json").read_bytes()
    assert evaluate_main(["--run", str(path), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert (path / "results.json").read_bytes() == before


# --------------------------------------------------------------------------- several structures
def test_segmenter_dataset_and_boxes_have_one_channel_or_row_per_structure(manifest):
    volumes = describe_dataset(manifest).read("siteA")
    slices = SliceDataset(volumes, tile_size=32)
    assert slices.structures == 2 and slices.labels.shape[1:] == (2, 32, 32)
    at_size = SliceDataset(volumes, tile_size=64)  # siteA is 64 x 64: no resizing
    first = volumes[0]
    assert torch.equal(at_size.labels[:first.num_slices],
                       torch.from_numpy(first.masks()).transpose(0, 1).to(torch.uint8))
    model = build_segmenter("resnet18_lite", structures=2)
    assert model(slices.images[:3]).shape == (3, 2, 32, 32)
    prompter = BoxPrompter(theta1=0.5, downscale=1, empty_box="skip")
    labels = slices.labels.float()
    boxes = prompter.boxes(labels, slices.labels)
    assert boxes["filtered"].shape == (2 * len(slices), 4)
    for c in range(2):  # row i*C+c: slice i, structure c
        alone = prompter.boxes(labels[:, c], slices.labels[:, c:c + 1])
        for kind in ("filtered", "gt", "filtered_empty", "gt_empty"):
            assert torch.equal(boxes[kind][c::2], alone[kind]), kind


def test_per_structure_dice_equals_monai(manifest):
    """The evaluation's per-structure Dice per volume equals MONAI's DiceMetric (per class, with
    the background channel counted as a class) on the same masks."""
    from monai.metrics import DiceMetric

    volumes = describe_dataset(manifest).read("siteA")
    split = Split(name="test", domain="siteA", volumes=volumes,
                  slices=SliceDataset(volumes, tile_size=64))  # the volumes' own size
    generator = torch.Generator().manual_seed(0)
    truth = split.slices.labels.bool()
    flips = (torch.rand(truth.shape, generator=generator) < 0.1) & truth  # misses inside each structure
    predicted = (truth ^ flips).float()
    (scores,) = score_split(split, predicted, thresholds=[0.5], mode="nearest").values()
    metric = DiceMetric(include_background=True, reduction="none")
    row = 0
    for volume, score in zip(volumes, scores):
        rows = slice(row, row + volume.num_slices)
        row += volume.num_slices
        pred = predicted[rows].transpose(0, 1)[None]  # (1, C, S, H, W)
        label = torch.from_numpy(volume.masks()).float()[None]
        expected = metric(y_pred=pred, y=label)[0]
        ours = torch.tensor([s.dice3d for s in score.structures], dtype=expected.dtype)
        assert torch.allclose(ours, expected, atol=1e-6), (volume.case_id, ours, expected)
        assert score.dice3d == sum(s.dice3d for s in score.structures) / 2


def test_a_multi_structure_run_reports_each_structure(described_run):
    path = described_run
    results = json.loads((path / "results.json").read_text())
    for entry in results["rows"].values():
        structures = entry["structures"]
        assert list(structures) == ["inner", "outer"]
        for domain in ("siteA", "siteB", "siteC", "target_mean"):
            mean = (structures["inner"]["dice3d"][domain] + structures["outer"]["dice3d"][domain]) / 2
            assert entry["dice3d"][domain] == pytest.approx(mean, abs=1e-12)
    assert "of each structure" in (path / "results.md").read_text()
    with open(path / "cases.csv", newline="") as handle:  # an independent aggregation of the lines
        lines = list(csv.DictReader(handle))
    for row, entry in results["rows"].items():
        for structure, expected in [("mean", entry["dice3d"]),
                                    *((name, s["dice3d"]) for name, s in entry["structures"].items())]:
            for domain in ("siteA", "siteB", "siteC"):
                values = [float(c["dice3d"]) for c in lines
                          if (c["row"], c["structure"], c["domain"]) == (row, structure, domain)]
                assert values and np.mean(values) == pytest.approx(expected[domain], abs=1e-6)
    assert len(lines) == 3 * len([c for c in lines if c["structure"] == "mean"])
    stored = torch.load(path / "predictions" / "siteB.pt")
    assert stored["probs"].shape[1] == 2 and len(torch.load(path / "boxes" / "siteB.pt")["filtered"]) \
        == 2 * len(stored["keys"])


def test_predict_writes_label_maps_for_a_description(manifest, described_run, tmp_path, capsys):
    """predict --input takes the description (every case's image) and writes one label map per
    input with the table's values, outer (2) painted over inner (1)."""
    import nibabel as nib

    from sammed_fast.cli.predict import main as predict_main

    out = tmp_path / "masks"
    assert predict_main(["--run", str(described_run), "--input", str(manifest), "--output", str(out),
                         "--device", "cpu", "--no-progress"]) == 0
    written = capsys.readouterr().out.split()
    cases = describe_dataset(manifest).cases
    assert len(written) == len(cases)
    for case, path in zip(cases, written):
        label_map = np.asarray(nib.load(path).dataobj)
        assert label_map.shape == nib.load(case.image).shape
        assert set(np.unique(label_map)) <= {0, 1, 2}
    table = LabelTable.parse("inner=1,outer=2")
    masks = np.array([[[True, False], [True, True]], [[False, False], [True, False]]])
    assert table.paint(masks).tolist() == [[1, 0], [2, 1]]


# --------------------------------------------------------------------------- 2D images
def test_rgb_images_stay_rgb_into_the_segmenter_and_sam(tmp_path):
    from sammed_fast.data.synthetic_manifest import write_synthetic_2d
    from sammed_fast.models.tiled_sam import scale_to_uint8_range
    from sammed_fast.ops import merge_tiles

    description = describe_dataset(write_synthetic_2d(tmp_path / "fundus", cases_per_domain=2))
    volumes = description.read("cam1")
    slices = SliceDataset(volumes, tile_size=32)
    assert volumes[0].is_rgb and slices.images.shape == (2, 3, 32, 32) and slices.structures == 2
    assert build_segmenter("resnet18_lite", structures=2, in_channels=3)(slices.images).shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="slices"):
        build_segmenter("resnet18_lite")(slices.images)
    scaled = scale_to_uint8_range(slices.images)  # one min-max over the three channels
    assert scaled.amin() == 0 and scaled.flatten(1).amax(1).eq(255).all()
    canvas = merge_tiles(scaled, 2)
    assert canvas.shape == (1, 3, 64, 64) and not torch.equal(canvas[0, 0], canvas[0, 1])
    grey = SliceDataset([dataclasses.replace(v, image=v.image.mean(-1)) for v in volumes], tile_size=32)
    assert grey.images.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="mix grey and RGB"):
        SliceDataset([volumes[0], dataclasses.replace(volumes[1], image=volumes[1].image.mean(-1))],
                     tile_size=32)


def test_rgb_slices_at_their_own_size_train_as_plain_contiguous_tensors(tmp_path, one_thread):
    """At a tile equal to the image size no resize copies the slices: they must still not be the
    channels-last view of the (H,W,3) file (torch 2.14's CPU backward crashed on it), and a training
    step over them runs."""
    from sammed_fast.data.synthetic_manifest import write_synthetic_2d
    from sammed_fast.method.losses import dice_bce_loss

    description = describe_dataset(write_synthetic_2d(tmp_path / "fundus", cases_per_domain=2))
    slices = SliceDataset(description.read("cam1"), tile_size=64)  # cam1 images are 64 x 64
    assert slices.images.shape == (2, 3, 64, 64) and slices.images.is_contiguous()
    model = build_segmenter("resnet18_lite", structures=2, in_channels=3)
    dice_bce_loss(model(slices.images), slices.labels.float()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_run_on_rgb_images_scores_each_image(tmp_path, capsys):
    from sammed_fast.data.synthetic_manifest import write_synthetic_2d

    manifest = write_synthetic_2d(tmp_path / "fundus", cases_per_domain=4)
    config = tiny(manifest, tmp_path / "run", source="cam1", targets="cam2 cam3")
    assert config.image_channels == 3 and config.label_table.names == ("disc", "cup")
    path = train(config)
    results = json.loads((path / "results.json").read_text())
    assert results["columns"] == ["cam1", "cam2", "cam3"] and results["data_form"] == "csv"
    method = results["rows"]["sam_filtered"]
    assert method["cases"] == {"cam1": 1, "cam2": 4, "cam3": 4}  # one image per case, Dice per image
    assert list(method["structures"]) == ["disc", "cup"]
    stem = torch.load(path / "checkpoints" / "segmenter_best.pt")["model"]["stem.0.weight"]
    assert stem.shape[1] == 3
    before = (path / "results.json").read_bytes()
    assert evaluate_main(["--run", str(path), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert (path / "results.json").read_bytes() == before
    # predict: one PNG label map per image (disc = 1, cup = 2 painted over it); a rerun replaces
    # its own masks
    from PIL import Image

    from sammed_fast.cli.predict import main as predict_main

    for _ in range(2):
        assert predict_main(["--run", str(path), "--input", str(manifest), "--output", str(tmp_path / "masks"),
                             "--device", "cpu", "--no-progress"]) == 0
        written = capsys.readouterr().out.split()
    cases = describe_dataset(manifest).cases
    assert [Path(w).name for w in written] == [f"{c.case_id}_mask.png" for c in cases]
    for case, mask_path in zip(cases, written):
        label_map = np.asarray(Image.open(mask_path))
        assert label_map.shape == np.asarray(Image.open(case.image)).shape[:2]
        assert set(np.unique(label_map)) <= {0, 1, 2}


# --------------------------------------------------------------------------- boxes from a file
@pytest.mark.parametrize("size", [20, 32, 56, 64, 72, 100])
def test_file_boxes_map_to_the_tile_as_the_runs_boxes(size):
    """A pixel box maps to the box of the same rectangle resized as the run resizes labels."""
    from sammed_fast.data.slices import resize_labels
    from sammed_fast.experiment.box_file import pixel_box_to_tile
    from sammed_fast.method.prompts import mask_boxes

    generator = torch.Generator().manual_seed(size)
    height, width, tile = size, size + 8, 32
    for _ in range(50):
        x0, x1 = sorted(torch.randint(0, width, (2,), generator=generator).tolist())
        y0, y1 = sorted(torch.randint(0, height, (2,), generator=generator).tolist())
        rect = torch.zeros(1, 1, height, width, dtype=torch.uint8)
        rect[..., y0:y1 + 1, x0:x1 + 1] = 1
        resized = resize_labels(rect, (tile, tile))[:, 0] > 0
        if not resized.any():  # a box between two samples: the file box still gets a pixel
            continue
        expected = mask_boxes(resized)[0][0].tolist()
        assert list(pixel_box_to_tile((x0, y0, x1, y1), height, width, tile)) == expected


def test_predict_takes_boxes_from_a_file(manifest, described_run, tmp_path, capsys):
    import nibabel as nib

    from sammed_fast.cli.predict import main as predict_main
    from sammed_fast.data.prostate import file_orientation, read_nifti, to_canonical, to_nifti_order
    from sammed_fast.data.slices import resize_images
    from sammed_fast.experiment.box_file import read_box_file, tile_prompts
    from sammed_fast.experiment.prediction import _read_volume, load_run_predictor

    cases = describe_dataset(manifest).cases_of("siteB")
    images = [case.image for case in cases]
    box_file = tmp_path / "boxes.csv"
    box_file.write_text("image,slice,structure,x0,y0,x1,y1\n"
                        f"{images[0]},3,outer,10,12,40,44\n"
                        f"{images[0].name},4,inner,20,20,30,30\n"
                        f"{images[0]},4,outer,5,5,50,50\n")
    folder = tmp_path / "inputs"
    folder.mkdir()
    for image in images[:2]:
        (folder / image.name).symlink_to(image)
    out = tmp_path / "masks"
    assert predict_main(["--run", str(described_run), "--input", str(folder), "--output", str(out),
                         "--boxes", str(box_file), "--batch", "4", "--device", "cpu", "--no-progress"]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 2

    def as_read(path) -> np.ndarray:  # the label map in the frame the run reads volumes in
        data, img = read_nifti(Path(path), "mask")
        return np.asarray(to_nifti_order(to_canonical(data, file_orientation(img, Path(path)))))

    assert not as_read(written[1]).any()  # no box, no mask
    predictor = load_run_predictor(described_run, "cpu")
    volume = _read_volume(folder / images[0].name)
    t = predictor.sam.tile_size
    tiles = resize_images(torch.from_numpy(volume.image).unsqueeze(1), (t, t))
    entries = read_box_file(box_file, [folder / images[0].name, folder / images[1].name], ("inner", "outer"))
    boxes, keep = tile_prompts(entries[folder / images[0].name], slices=len(tiles),
                               height=volume.image.shape[1], width=volume.image.shape[2], structures=2, tile=t)
    assert keep.nonzero().flatten().tolist() == [3 * 2 + 1, 4 * 2 + 0, 4 * 2 + 1]
    probs = predictor.decode(predictor.embed(tiles), boxes, keep, structures=2)
    masks = (resize_images(probs, volume.image.shape[1:]) > predictor.theta2).transpose(0, 1).numpy()
    expected = LabelTable.parse("inner=1,outer=2").paint(masks)
    assert np.array_equal(as_read(written[0]), expected)
    assert set(np.flatnonzero(expected.reshape(len(expected), -1).any(1))) <= {3, 4}
    assert nib.load(written[0]).shape == nib.load(images[0]).shape


def test_bad_box_files_are_named(described_run, manifest, tmp_path, capsys):
    from sammed_fast.cli.predict import main as predict_main

    image = describe_dataset(manifest).cases_of("siteB")[0].image
    for text, message in [
        ("image,slice,x0,y0,x1,y1\n", "missing column(s) structure"),
        (f"image,slice,structure,x0,y0,x1,y1\n{image},0,nerve,1,1,2,2\n", "line 2: unknown structure 'nerve'"),
        ("image,slice,structure,x0,y0,x1,y1\nother.nii.gz,0,inner,1,1,2,2\n", "is none of the inputs"),
        (f"image,slice,structure,x0,y0,x1,y1\n{image},0,inner,1,1,2.5,2\n", "x1 '2.5' is not a whole pixel"),
        (f"image,slice,structure,x0,y0,x1,y1\n{image},99,inner,1,1,2,2\n", "slice 99 is outside"),
        (f"image,slice,structure,x0,y0,x1,y1\n{image},0,inner,1,1,200,2\n", "leaves the"),
    ]:
        box_file = tmp_path / "boxes.csv"
        box_file.write_text(text)
        code = predict_main(["--run", str(described_run), "--input", str(image), "--output",
                             str(tmp_path / "out"), "--boxes", str(box_file), "--device", "cpu", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(box_file) in err, (message, err)


def test_an_nnunet_folder_is_a_description_too(manifest, tmp_path):
    """--data an nnU-Net raw folder: its domains.csv names the domains, dataset.json the table."""
    folder = tmp_path / "Dataset001_Zones"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rows = ["case_id,domain"]
    for case in describe_dataset(manifest).cases:
        (folder / "imagesTr" / f"{case.case_id}_0000.nii.gz").symlink_to(case.image)
        (folder / "labelsTr" / f"{case.case_id}.nii.gz").symlink_to(case.label)
        rows.append(f"{case.case_id},{case.domain}")
    (folder / "domains.csv").write_text("\n".join(rows) + "\n")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "inner": 1, "outer": 2},
        "numTraining": len(rows) - 1, "file_ending": ".nii.gz"}))
    config = preflight(tiny(folder, tmp_path / "run"))
    assert config.data_form == "nnunet" and config.targets == ("siteB", "siteC")
    assert config.label_table.spec() == "inner=1,outer=2"


def zoned_release(root: Path) -> Path:
    """A tiny six-site release (domains A and B) whose labels mark two zones: value 2 in the left
    half of each prostate, 1 in the rest (as sites that label central gland and peripheral zone)."""
    import nibabel as nib
    from sammed_fast.data.synthetic import write_synthetic

    write_synthetic(root, seed=3, cases_per_domain=4, domains=["A", "B"], previews=False)
    for path in sorted(root.rglob("*_[Ss]egmentation.nii.gz")):
        image = nib.load(str(path))
        label = np.asarray(image.dataobj).astype(np.uint8)
        zone = np.zeros_like(label, dtype=bool)
        zone[: label.shape[0] // 2] = True
        label[(label > 0) & zone] = 2
        nib.save(nib.Nifti1Image(label, image.affine, image.header), str(path))
    return root


def test_the_six_site_release_keeps_label_values_apart_with_labels(tmp_path):
    """--labels on the six-site release: one structure per table entry (segmenter channels,
    per-structure Dice in results), the run records the table; a value the table lacks is refused
    naming the file; the built-in synthetic set refuses --labels."""
    release = zoned_release(tmp_path / "release")
    config = TrainConfig(data=release, source="A", targets="B", labels="cg=1,pz=2", tile_size=32,
                         segmenter_epochs=1, decoder_epochs=1, compact_pretrain_steps=0, figure_slices=1,
                         out=tmp_path / "run", progress=False, device="cpu", threads=1)
    assert config.label_table.names == ("cg", "pz") and config.dataset is None
    out = train(config)
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == "cg=1,pz=2" and results["data_form"] == "six-site"
    assert set(results["rows"]["sam_filtered"]["structures"]) == {"cg", "pz"}
    with pytest.raises(ConfigError, match=r"(?i)segmentation.nii.gz: label values 2 are not in the label table"):
        train(dataclasses.replace(config, labels="cg=1", out=tmp_path / "run_cg"))
    with pytest.raises(ConfigError, match="--labels: the built-in synthetic set"):
        TrainConfig(labels="cg=1,pz=2")
