"""Bring-your-own-data layer: label tables, dataset descriptions (CSV / JSON manifest, nnU-Net
folder), their validation, reading described cases, and the synthetic sets in manifest form."""
import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from sammed_fast.data import SliceDataset, Volume
from sammed_fast.data.images2d import read_image_2d, read_label_2d
from sammed_fast.data.labelled import LabelledVolume, read_described_case
from sammed_fast.data.labels import PROSTATE_LABELS, LabelTable, Structure
from sammed_fast.data.manifest import DescribedCase, describe_dataset
from sammed_fast.data.synthetic_manifest import (
    render_fundus_case, render_multilabel_case, write_synthetic_2d, write_synthetic_multilabel,
)
from sammed_fast.errors import ConfigError

SHAPE = (6, 5, 3)  # NIfTI (i, j, k) order
LABELS = {"background": 0, "cg": 1, "pz": 2}
DOMAIN_OF = {"case1": "north", "case2": "north", "case3": "south", "case4": "south"}


# ---------------------------------------------------------------------------------------------
# helpers: one small NIfTI dataset in the nnU-Net layout, with CSV and JSON manifests beside it

def lps_affine(shift=0.0):
    """LPS voxel axes (the canonical orientation), 0.5 x 0.5 x 3 mm, origin moved by `shift` mm."""
    affine = np.diag([-0.5, -0.5, 3.0, 1.0])
    affine[0, 3] = shift
    return affine


def write_nifti(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), lps_affine() if affine is None else affine), str(path))


def label_array(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, SHAPE).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    """tmp_path/data: imagesTr, labelsTr, dataset.json, domains.csv, manifest.csv (+ its labels
    sidecar) and manifest.json (with declared domains), all describing the same four cases."""
    root = tmp_path / "data"
    for k, case_id in enumerate(DOMAIN_OF):
        image = np.random.default_rng(k).uniform(0, 100, SHAPE).astype(np.float32)
        write_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label_array(k))
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T2"}, "labels": LABELS, "numTraining": 4,
         "file_ending": ".nii.gz"}))
    records = [{"case_id": c, "image": f"imagesTr/{c}_0000.nii.gz", "label": f"labelsTr/{c}.nii.gz",
                "domain": d} for c, d in DOMAIN_OF.items()]
    write_csv(root / "domains.csv", [("case_id", "domain"), *DOMAIN_OF.items()])
    write_csv(root / "manifest.csv",
              [("case_id", "image", "label", "domain"), *(tuple(r.values()) for r in records)])
    (root / "manifest.labels.json").write_text(json.dumps({"cg": 1, "pz": 2}))
    (root / "manifest.json").write_text(json.dumps(
        {"labels": "cg=1,pz=2", "domains": ["north", "south"], "cases": records}))
    return root


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def edit_manifest(root, edit):
    document = json.loads((root / "manifest.json").read_text())
    edit(document["cases"])
    (root / "manifest.json").write_text(json.dumps(document))


# ---------------------------------------------------------------------------------------------
# the three forms describe the same dataset

def test_three_forms_describe_the_same_dataset(dataset):
    forms = {"csv": describe_dataset(dataset / "manifest.csv"),
             "json": describe_dataset(dataset / "manifest.json"),
             "nnunet": describe_dataset(dataset),
             "nnunet via dataset.json": describe_dataset(dataset / "dataset.json")}
    expected_cases = tuple(DescribedCase(
        case_id=c, image=dataset / "imagesTr" / f"{c}_0000.nii.gz",
        label=dataset / "labelsTr" / f"{c}.nii.gz", domain=d) for c, d in DOMAIN_OF.items())
    for name, description in forms.items():
        assert description.cases == expected_cases, name
        assert description.domains == ("north", "south"), name
        assert description.labels == LabelTable.parse("cg=1,pz=2"), name
        assert not description.is_2d
        assert description.problems() == [], name
    assert forms["nnunet"].form == "nnunet" and forms["csv"].form == "csv"


def test_labels_argument_overrides_and_domain_mapping(dataset):
    (dataset / "domains.csv").unlink()
    description = describe_dataset(dataset, domains=DOMAIN_OF, labels="prostate=*")
    assert description.labels == PROSTATE_LABELS
    assert [c.domain for c in description.cases] == list(DOMAIN_OF.values())
    vol = description.read("south")[0]
    assert vol.case_id == "case3" and vol.structures == ("prostate",)
    np.testing.assert_array_equal(vol.label, (vol.label_map > 0).astype(np.uint8))


def test_read_keeps_label_map_and_matches_the_prostate_reader(dataset):
    vol = describe_dataset(dataset / "manifest.csv").read("north")[1]
    assert isinstance(vol, LabelledVolume) and isinstance(vol, Volume)
    assert (vol.domain, vol.case_id) == ("north", "case2")
    expected = label_array(1).transpose(2, 1, 0)
    np.testing.assert_array_equal(vol.label_map, expected)
    assert vol.label_map.dtype == np.int32 and vol.image.shape == expected.shape
    np.testing.assert_array_equal(vol.masks(), np.stack([expected == 1, expected == 2]))
    np.testing.assert_array_equal(vol.label, (expected > 0).astype(np.uint8))
    assert vol.spacing == (0.5, 0.5, 3.0)
    assert abs(vol.image.mean()) < 1e-5 and abs(vol.image.std() - 1) < 1e-4


# ---------------------------------------------------------------------------------------------
# every problem is reported, naming the file

def _delete(path):
    path.unlink()


PROBLEMS = {
    "missing image": (lambda r: _delete(r / "imagesTr/case2_0000.nii.gz"),
                      "imagesTr/case2_0000.nii.gz", "image file not found"),
    "missing label": (lambda r: _delete(r / "labelsTr/case3.nii.gz"),
                      "labelsTr/case3.nii.gz", "label file not found"),
    "empty domain": (lambda r: edit_manifest(r, lambda cases: cases[0].update(domain=" ")),
                     "manifest.json", "'case1' (cases[0]) has no domain"),
    "unknown domain": (lambda r: edit_manifest(r, lambda cases: cases[2].update(domain="west")),
                       "manifest.json", "domain 'west', not one of the declared north, south"),
    "duplicate case id": (lambda r: edit_manifest(r, lambda cases: cases[3].update(case_id="case1")),
                          "manifest.json", "case id 'case1' is declared 2 times"),
    "label value outside the table": (
        lambda r: write_nifti(r / "labelsTr/case4.nii.gz", np.full(SHAPE, 7, np.uint8)),
        "labelsTr/case4.nii.gz", "label values 7 are not in the label table"),
    "fractional label": (
        lambda r: write_nifti(r / "labelsTr/case4.nii.gz", np.full(SHAPE, 0.5, np.float32)),
        "labelsTr/case4.nii.gz", "whole numbers"),
    "shape mismatch": (
        lambda r: write_nifti(r / "labelsTr/case1.nii.gz", np.zeros((6, 5, 4), np.uint8)),
        "labelsTr/case1.nii.gz", "label shape (4, 5, 6) does not match the image"),
    "affine mismatch": (
        lambda r: write_nifti(r / "labelsTr/case1.nii.gz", label_array(0), lps_affine(0.01)),
        "labelsTr/case1.nii.gz", "affine differs from the image case1_0000.nii.gz's by up to 0.01"),
    "unreadable image": (
        lambda r: (r / "imagesTr/case3_0000.nii.gz").write_bytes(b"not a nifti file"),
        "imagesTr/case3_0000.nii.gz", "cannot read the image as NIfTI"),
    "unsupported ending": (
        lambda r: edit_manifest(r, lambda cases: cases[0].update(image="imagesTr/case1.mha")),
        "imagesTr/case1.mha", "unsupported file ending '.mha'"),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_each_problem_names_its_file(dataset, name):
    break_dataset, file, fragment = PROBLEMS[name]
    if name == "unsupported ending":
        (dataset / "imagesTr/case1.mha").write_bytes(b"x")
    break_dataset(dataset)
    problems = describe_dataset(dataset / "manifest.json").problems()
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(dataset / file) + ":"), problems[0]
    assert fragment in problems[0]


def test_validate_lists_every_problem_at_once(dataset):
    for name in ("missing image", "unknown domain", "label value outside the table", "affine mismatch"):
        PROBLEMS[name][0](dataset)
    with pytest.raises(ConfigError) as error:
        describe_dataset(dataset / "manifest.json").validate()
    message = str(error.value)
    assert "4 problem(s)" in message
    for name in ("missing image", "unknown domain", "label value outside the table", "affine mismatch"):
        assert PROBLEMS[name][2] in message, name
    with pytest.raises(ConfigError, match="case1.nii.gz: affine differs"):
        describe_dataset(dataset / "manifest.json").read("north")  # reading refuses as well


def test_problems_without_reading_files(dataset):
    PROBLEMS["missing label"][0](dataset)
    PROBLEMS["label value outside the table"][0](dataset)
    assert describe_dataset(dataset).problems(read_files=False) == [
        f"{dataset / 'labelsTr/case3.nii.gz'}: label file not found"]


def test_affine_within_tolerance_passes(dataset):
    write_nifti(dataset / "labelsTr/case1.nii.gz", label_array(0), lps_affine(5e-5))
    assert describe_dataset(dataset).problems() == []


def test_nnunet_folder_problems(dataset):
    shutil.copy(dataset / "imagesTr/case1_0000.nii.gz", dataset / "imagesTr/case1_0001.nii.gz")
    shutil.copy(dataset / "labelsTr/case1.nii.gz", dataset / "labelsTr/case5.nii.gz")
    write_csv(dataset / "domains.csv", [("case_id", "domain"), *DOMAIN_OF.items(), ("case9", "x")])
    problems = describe_dataset(dataset, domain_names=["north", "south", "east"]).problems()
    assert problems == [
        f"{dataset / 'imagesTr/case1_0001.nii.gz'}: channel 0001; only single-channel images "
        "(_0000) are supported",
        f"domains.csv: case 'case9' has no files in {dataset}",
        f"{dataset}: case 'case5' (not in domains.csv) has no domain",
        f"{dataset}: declared domain 'east' has no case",
        f"{dataset / 'imagesTr/case5_0000.nii.gz'}: image file not found",
    ]


@pytest.mark.parametrize("setup, target, match", [
    (lambda r: (r / "manifest.csv").write_text("case,image\n"), "manifest.csv",
     "missing case_id, label, domain"),
    (lambda r: (r / "manifest.json").write_text("{\"cases\": [}"), "manifest.json",
     "not valid JSON"),
    (lambda r: (r / "manifest.labels.json").unlink(), "manifest.csv", "no label table"),
    (lambda r: (r / "domains.csv").unlink(), ".", "needs a case -> domain table"),
    (lambda r: edit_manifest(r, lambda cases: cases[1].update(label="")), "manifest.json",
     r"cases\[1\]: label is empty"),
    (lambda r: None, "manifest.txt", "must be a .csv or .json"),
    (lambda r: None, "missing.csv", "no such manifest"),
])
def test_unreadable_descriptions_raise_config_error(dataset, setup, target, match):
    setup(dataset)
    if target == "manifest.txt":
        (dataset / target).write_text("")
    with pytest.raises(ConfigError, match=match):
        describe_dataset(dataset / target)


def test_domains_argument_is_for_nnunet_only(dataset):
    with pytest.raises(ConfigError, match="domains= is for nnU-Net folders"):
        describe_dataset(dataset / "manifest.csv", domains=DOMAIN_OF)


# ---------------------------------------------------------------------------------------------
# label tables

@pytest.mark.parametrize("spec", ["cg=1,pz=2", " cg = 1 , pz=2 ", {"cg": [1], "pz": 2},
                                  {"background": 0, "cg": 1, "pz": "2"}])
def test_label_table_forms(spec):
    table = LabelTable.parse(spec)
    assert table.structures == (Structure("cg", (1,)), Structure("pz", (2,)))
    assert LabelTable.parse(table.spec()) == table == LabelTable.parse(table.as_mapping())


def test_label_table_regions_and_presets():
    table = LabelTable.parse("gland=2+1,pz=2")
    assert table.structures == (Structure("gland", (1, 2)), Structure("pz", (2,)))
    assert table.spec() == "gland=1+2,pz=2" and table.as_mapping() == {"gland": [1, 2], "pz": 2}
    assert LabelTable.parse("prostate=*") == PROSTATE_LABELS == LabelTable.parse({"prostate": "*"})


def test_label_table_from_nnunet():
    v2 = LabelTable.from_nnunet({"background": 0, "whole": [1, 2, 3], "core": (2, 3), "ignore": 4})
    assert v2.names == ("whole", "core") and v2.ignored == (4,)
    assert v2.structures[1].values == (2, 3)
    v1 = LabelTable.from_nnunet({"0": "background", "1": "PZ", "2": "TZ"})
    assert v1 == LabelTable.parse("PZ=1,TZ=2")


@pytest.mark.parametrize("spec, match", [
    ("", "empty entry"), ("cg", "'cg' is not name=value"), ("cg=", "not name=value"),
    ("cg=a", "label value 'a' is not an integer"), ("cg=0", "must be positive"),
    ("cg=-1", "must be positive"), ("cg=1,cg=2", r"\['cg'\] given twice"),
    ("cg=1,,pz=2", "empty entry"), ("=1", "structure name ''"), ("cg=1+1", "listed twice"),
    ("cg=1+", "empty value"), ({"cg": 1.5}, "1.5 is not an integer"),
    ({"cg": True}, "True is not an integer"), ({}, "no structures"), (3, "got int"),
])
def test_bad_label_tables(spec, match):
    with pytest.raises(ConfigError, match=match):
        LabelTable.parse(spec)


def test_masks_against_hand_made_arrays():
    label_map = np.array([[[0, 1, 2], [2, 0, 5]], [[0, 0, 0], [1, 1, 0]]])
    table = LabelTable.parse("cg=1,pz=2,gland=1+2")
    masks = table.masks(label_map)
    assert masks.shape == (3, 2, 2, 3) and masks.dtype == np.bool_
    np.testing.assert_array_equal(masks[0], label_map == 1)
    np.testing.assert_array_equal(masks[1], [[[0, 0, 1], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]]])
    assert not masks[1, 1].any()  # pz is absent from slice 1: an all-False mask there
    np.testing.assert_array_equal(masks[2], (label_map == 1) | (label_map == 2))
    np.testing.assert_array_equal(table.union(label_map), masks[2].astype(np.uint8))
    assert table.unknown_values(label_map) == [5]
    assert PROSTATE_LABELS.unknown_values(label_map) == []
    np.testing.assert_array_equal(PROSTATE_LABELS.masks(label_map)[0], label_map != 0)
    ignoring = LabelTable.from_nnunet({"background": 0, "cg": 1, "ignore": 5})
    assert ignoring.unknown_values(label_map) == [2]
    assert ignoring.union(label_map)[0, 1, 2] == 0  # the ignored value is not foreground


# ---------------------------------------------------------------------------------------------
# 2D readers

def test_2d_modes(tmp_path):
    grey = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([grey, grey // 2, grey // 3, np.full_like(grey, 200)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.array([[0, 300], [65535, 2]], np.uint16)).save(tmp_path / "deep.tif")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "grey.png"), grey)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "rgba.png"), rgba[..., :3])
    np.testing.assert_array_equal(read_label_2d(tmp_path / "palette.png"), [[0, 1], [2, 1]])
    np.testing.assert_array_equal(read_label_2d(tmp_path / "deep.tif"), [[0, 300], [65535, 2]])


@pytest.mark.parametrize("name, array, match", [
    ("label.jpg", np.zeros((4, 4), np.uint8), "must be lossless"),
    ("label.png", np.dstack([np.eye(4, dtype=np.uint8)] * 2 + [np.zeros((4, 4), np.uint8)]),
     "the label is a colour image"),
    ("label.png", None, "cannot read the label as an image"),
])
def test_bad_2d_labels(tmp_path, name, array, match):
    path = tmp_path / name
    if array is None:
        path.write_bytes(b"\x89PNG broken")
    else:
        Image.fromarray(array).save(path)
    with pytest.raises(ConfigError, match=match) as error:
        read_label_2d(path)
    assert str(error.value).startswith(str(path))


def test_grey_2d_case_and_mixed_kinds(tmp_path):
    Image.fromarray((np.arange(64).reshape(8, 8) * 3).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((np.eye(8) * 2).astype(np.uint8)).save(tmp_path / "a_label.png")
    write_nifti(tmp_path / "b.nii.gz", np.ones(SHAPE))
    write_nifti(tmp_path / "b_label.nii.gz", np.zeros(SHAPE, np.uint8))
    write_csv(tmp_path / "m.csv", [("case_id", "image", "label", "domain"),
                                   ("a", "a.png", "a_label.png", "x"), ("b", "b.png", "b_label.nii.gz", "x")])
    shutil.copy(tmp_path / "a.png", tmp_path / "b.png")
    description = describe_dataset(tmp_path / "m.csv", labels="line=2")
    vol = read_described_case(description.cases[0], description.labels)
    assert vol.image.shape == (1, 8, 8) and vol.image.dtype == np.float32 and not vol.is_rgb
    assert vol.label_map.shape == (1, 8, 8) and vol.label.sum() == 8
    assert description.problems() == [f"{tmp_path / 'b_label.nii.gz'}: a NIfTI label for the 2D "
                                      "image b.png; use the same kind for both"]


# ---------------------------------------------------------------------------------------------
# synthetic sets in manifest form

@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    return write_synthetic_multilabel(tmp_path_factory.mktemp("multilabel"), cases_per_domain=1, seed=5)


@pytest.fixture(scope="module")
def fundus(tmp_path_factory):
    return write_synthetic_2d(tmp_path_factory.mktemp("fundus"), cases_per_domain=2, seed=5)


def test_multilabel_round_trip(multilabel):
    description = describe_dataset(multilabel).validate()
    assert description.form == "json" and description.domains == ("siteA", "siteB", "siteC")
    assert description.labels.names == ("inner", "outer") and not description.is_2d
    for domain in description.domains:
        (vol,) = description.read(domain)
        image, label, spacing = render_multilabel_case(domain, 0, seed=5)
        np.testing.assert_array_equal(vol.label_map, label)  # also for siteB, stored as RAS
        assert set(np.unique(vol.label_map)) == {0, 1, 2}
        assert vol.image.shape == image.shape and vol.image.dtype == np.float32
        np.testing.assert_allclose(vol.spacing, spacing, rtol=1e-6)
        present = vol.masks().reshape(2, vol.num_slices, -1).any(axis=2)
        assert not present[:, [0, -1]].any() and present.any(axis=1).all()
    siteB = description.read("siteB")[0]
    assert siteB.orientation is not None  # reoriented on read, as the prostate reader does
    dataset = SliceDataset(description.read("siteA"), tile_size=32)  # the existing pipeline
    assert len(dataset) == 10 and set(dataset[5]["label"].unique().tolist()) <= {0.0, 1.0}


def test_2d_round_trip_keeps_rgb(fundus):
    description = describe_dataset(fundus).validate()
    assert description.form == "csv" and description.is_2d
    assert description.domains == ("cam1", "cam2", "cam3")
    assert description.labels == LabelTable.parse("disc=1+2,cup=2")
    for domain in description.domains:
        for index, vol in enumerate(description.read(domain)):
            image, label = render_fundus_case(domain, index, seed=5)
            assert vol.is_rgb and vol.image.shape == (1, *image.shape)
            np.testing.assert_array_equal(vol.label_map[0], label)
            assert set(np.unique(label)) == {0, 1, 2}
            np.testing.assert_array_equal(vol.masks()[0, 0], label > 0)  # the disc includes the cup
            np.testing.assert_array_equal(vol.masks()[1, 0], label == 2)
            channels = vol.image.reshape(-1, 3)
            np.testing.assert_allclose(channels.mean(axis=0), 0, atol=1e-5)
            np.testing.assert_allclose(channels.std(axis=0), 1, atol=1e-4)
    assert description.read("cam3")[0].image.shape == (1, 72, 72, 3)


def test_synthetic_sets_are_deterministic(tmp_path, fundus):
    again = write_synthetic_2d(tmp_path / "again", cases_per_domain=2, seed=5)
    files = sorted(p.relative_to(fundus.parent) for p in fundus.parent.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.parent) for p in again.parent.rglob("*") if p.is_file())
    assert all((fundus.parent / f).read_bytes() == (again.parent / f).read_bytes() for f in files)
    other = render_fundus_case("cam1", 0, seed=6)[0]
    assert not np.array_equal(other, render_fundus_case("cam1", 0, seed=5)[0])
    first = write_synthetic_multilabel(tmp_path / "a", cases_per_domain=1, seed=1, domains=["siteB"])
    second = write_synthetic_multilabel(tmp_path / "b", cases_per_domain=1, seed=1, domains=["siteB"])
    for name in ("images/siteB_000.nii.gz", "labels/siteB_000.nii.gz", "manifest.json"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes()
