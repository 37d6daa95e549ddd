"""Reader, slice dataset, reassembly and synthetic writer, on tiny sets written to tmp_path."""
import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.transform import resize as sk_resize

from sammed_fast.data import (
    DOMAINS, SliceDataset, Volume, VolumeAssembler, find_cases, load_domain, save_like,
    split_source, to_nifti_order,
)
from sammed_fast.cli.synthetic import main as synthetic_main
from sammed_fast.data import synthetic
from sammed_fast.data.filters import gaussian_blur
from sammed_fast.data.synthetic import (
    ACQUISITIONS, REAL_CASE_COUNTS, ensure_synthetic, render_case, synthetic_set_is_written,
    write_synthetic,
)


# ---------------------------------------------------------------------------------------------
# helpers: hand-written NIfTI files in the release layout

def write_nifti(path, array_nifti_order, zooms=(0.5, 0.5, 3.0)):
    # LPS, the canonical orientation: the reader keeps the array as stored (reorientation has
    # tests of its own in test_robustness.py).
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array_nifti_order), affine), str(path))


def make_case(folder, case, shape=(8, 6, 3), *, label_name="segmentation", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.uniform(0, 100, shape).astype(np.float32)
    label = (rng.random(shape) < 0.3).astype(np.uint8) * 2  # release labels use {0,1,2}
    write_nifti(folder / f"{case}.nii.gz", image)
    write_nifti(folder / f"{case}_{label_name}.nii.gz", label)
    return image, label


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Synthetic set: two cases of A and of B (the `_Segmentation` spelling)."""
    root = tmp_path_factory.mktemp("synth") / "set"
    return write_synthetic(root, seed=3, cases_per_domain=2, domains=["A", "B"], previews=False,
                           progress=False)


# ---------------------------------------------------------------------------------------------
# reader

def test_reader_against_nibabel(synth):
    vols = load_domain(synth, "a")
    assert [v.case_id for v in vols] == ["Case00", "Case01"]
    for v in vols:
        raw = nib.load(str(v.image_path))
        data = raw.get_fdata().astype(np.float64)
        clipped = np.minimum(data, np.percentile(data, 99.5))
        expected = ((clipped - clipped.mean()) / clipped.std()).transpose(2, 1, 0)
        np.testing.assert_allclose(v.image, expected, atol=1e-5)
        lab = nib.load(str(v.label_path)).get_fdata().transpose(2, 1, 0) > 0
        np.testing.assert_array_equal(v.label, lab)
        assert v.image.dtype == np.float32 and v.label.dtype == np.uint8
        assert v.spacing == pytest.approx(raw.header.get_zooms())
        np.testing.assert_allclose(v.affine, raw.affine)
        assert v.domain == "A"
    vb = load_domain(synth, "B")
    assert vb[0].label_path.name == "Case00_Segmentation.nii.gz"


def test_synthetic_spacing_and_content(synth):
    acq = ACQUISITIONS["A"]
    n, _, thk = acq.grid(False)
    for v in load_domain(synth, "A"):
        assert v.image.shape[1:] == (n, n)
        assert v.spacing[0] == pytest.approx(v.spacing[1])
        assert acq.fov_mm[0] <= n * v.spacing[0] <= acq.fov_mm[1] + 1e-3
        assert v.spacing[2] == pytest.approx(thk, rel=1e-5)
        per_slice = v.label.reshape(v.num_slices, -1).sum(1)
        assert per_slice[0] == 0 and per_slice[-1] == 0  # slices below and above the gland
        assert (per_slice > 0).sum() >= 3


def test_label_values_and_4d_singleton(tmp_path):
    folder = tmp_path / "ISBI"
    image, label = make_case(folder, "Case00")
    write_nifti(folder / "Case01.nii.gz", image[..., None])  # (X, Y, Z, 1) is accepted
    write_nifti(folder / "Case01_segmentation.nii.gz", label[..., None])
    vols = load_domain(tmp_path, "A")
    assert set(np.unique(vols[0].label)) <= {0, 1}
    np.testing.assert_array_equal(vols[0].label, to_nifti_order(label > 0))
    np.testing.assert_array_equal(vols[1].image, vols[0].image)


@pytest.mark.parametrize("problem, exc, needle", [
    ("missing_folder", FileNotFoundError, "ISBI"),
    ("empty_domain", ValueError, "ISBI"),
    ("no_label", FileNotFoundError, "Case01.nii.gz"),
    ("orphan_label", FileNotFoundError, "Case05_segmentation.nii.gz"),
    ("shape_mismatch", ValueError, "Case01_segmentation.nii.gz"),
    ("four_d", ValueError, "Case01.nii.gz"),
    ("corrupt", ValueError, "Case01.nii.gz"),
    ("truncated", ValueError, "Case01.nii.gz"),
    ("two_spellings", ValueError, "Case01_"),
    ("constant", ValueError, "Case01.nii.gz"),
    ("nan", ValueError, "Case01.nii.gz"),
])
def test_bad_input_names_the_file(tmp_path, problem, exc, needle):
    folder = tmp_path / "ISBI"
    if problem != "missing_folder":
        make_case(folder, "Case00")
    if problem == "empty_domain":
        for f in folder.iterdir():
            f.unlink()
        (folder / "notes.txt").write_text("x")
    elif problem == "no_label":
        write_nifti(folder / "Case01.nii.gz", np.ones((8, 6, 3)))
    elif problem == "orphan_label":
        write_nifti(folder / "Case05_segmentation.nii.gz", np.ones((8, 6, 3)))
    elif problem != "missing_folder":
        make_case(folder, "Case01")
        img, seg = folder / "Case01.nii.gz", folder / "Case01_segmentation.nii.gz"
        if problem == "shape_mismatch":
            write_nifti(seg, np.zeros((8, 6, 4)))
        elif problem == "four_d":
            write_nifti(img, np.ones((8, 6, 3, 2)))
        elif problem == "corrupt":
            img.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
        elif problem == "truncated":
            img.write_bytes(img.read_bytes()[:200])
        elif problem == "two_spellings":
            make_case(folder, "Case01", label_name="Segmentation")
        elif problem == "constant":
            write_nifti(img, np.full((8, 6, 3), 7.0))
        elif problem == "nan":
            data = np.ones((8, 6, 3))
            data[0, 0, 0] = np.nan
            write_nifti(img, data)
    with pytest.raises(exc, match=needle.replace(".", r"\.")):
        load_domain(tmp_path, "A")


def test_unknown_domain_letter(tmp_path):
    with pytest.raises(ValueError, match="domain must be one of"):
        find_cases(tmp_path, "G")


def test_cases_are_in_natural_order(tmp_path):
    folder = tmp_path / DOMAINS["A"].folder
    for case in ("Case10", "Case2", "Case1"):
        make_case(folder, case)
    assert [c.case_id for c in find_cases(tmp_path, "A")] == ["Case1", "Case2", "Case10"]
    volumes = [Volume("A", cid, np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.uint8),
                      (1.0, 1.0, 1.0), np.eye(4), None) for cid in ("Case10", "Case9", "Case2", "Case1")]
    split = split_source(volumes)
    assert [v.case_id for k in ("train", "val", "test") for v in split[k]] == ["Case1", "Case2", "Case9", "Case10"]


def fake_volumes(n, domain="A", shape=(3, 4, 4)):
    ids = [f"Case{i:02d}" for i in range(n)]
    np.random.default_rng(0).shuffle(ids)
    return [Volume(domain, cid, np.zeros(shape, np.float32), np.zeros(shape, np.uint8),
                   (1.0, 1.0, 1.0), np.eye(4), None) for cid in ids]


@pytest.mark.parametrize("n, sizes", [(30, (21, 3, 6)), (13, (9, 1, 3)), (12, (9, 1, 2)),
                                      (8, (5, 1, 2)), (3, (1, 1, 1))])
def test_split_source(n, sizes):
    split = split_source(fake_volumes(n))
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    order = [v.case_id for k in ("train", "val", "test") for v in split[k]]
    assert order == [f"Case{i:02d}" for i in range(n)]


def test_split_source_errors():
    with pytest.raises(ValueError, match="too few"):
        split_source(fake_volumes(2))
    with pytest.raises(ValueError, match="several domains"):
        split_source(fake_volumes(3) + fake_volumes(3, domain="B"))


DOCS_DATA = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def test_domains_are_the_release_layout_the_docs_publish():
    rows = re.findall(r"^\| ([A-F]) \| (\w+) \| `([^`]+)` \| `([^`]+)` \|$", DOCS_DATA.read_text(), re.M)
    assert [letter for letter, *_ in rows] == list(DOMAINS)
    for letter, site, folder, label in rows:
        assert DOMAINS[letter] == (site, folder), letter
        assert label.replace("NN", "00") == ("Case00_Segmentation.nii.gz" if letter == "B"
                                             else "Case00_segmentation.nii.gz")  # what write_synthetic writes


# ---------------------------------------------------------------------------------------------
# slices and reassembly

@pytest.mark.parametrize("tile", [64, 128])
def test_slice_dataset(synth, tile):
    vols = load_domain(synth, "A")[:2]
    ds = SliceDataset(vols, tile_size=tile)
    assert len(ds) == sum(v.num_slices for v in vols)
    item = ds[3]
    assert item["image"].shape == (1, tile, tile) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, tile, tile) and item["label"].dtype == torch.float32
    assert (item["domain"], item["case_id"], item["slice_index"]) == ("A", "Case00", 3)
    for i in range(len(ds)):
        d, c, s = ds.keys[i]
        vol = next(v for v in vols if v.case_id == c)
        h, w = vol.label.shape[1:]
        # nearest (pixel-centre) oracle: source index floor((i + 0.5) * H / t)
        rows = np.floor((np.arange(tile) + 0.5) * h / tile).astype(int)
        cols = np.floor((np.arange(tile) + 0.5) * w / tile).astype(int)
        np.testing.assert_array_equal(ds[i]["label"][0].numpy(), vol.label[s][np.ix_(rows, cols)])
        if tile > h:  # upsampling: plain bilinear, skimage is an independent implementation
            expected = sk_resize(vol.image[s], (tile, tile), order=1, mode="edge",
                                 anti_aliasing=False)
            np.testing.assert_allclose(ds[i]["image"][0].numpy(), expected, atol=1e-4)
    fg = SliceDataset(vols, tile_size=tile, only_foreground=True)
    assert len(fg) == sum(int(v.label.reshape(v.num_slices, -1).any(1).sum()) for v in vols)
    assert all(v.label[s].any() for _, c, s in fg.keys for v in vols if v.case_id == c)


def test_slice_dataset_bad_tile(synth):
    vols = load_domain(synth, "A")[:1]
    for bad in (0, 64.0, "64", True):
        with pytest.raises(ValueError, match="tile_size"):
            SliceDataset(vols, tile_size=bad)


def test_assembler_rebuilds_volumes(synth):
    vols = load_domain(synth, "A")[:2]
    n = vols[0].image.shape[1]
    ds = SliceDataset(vols, tile_size=n)  # same size: reassembly must be exact
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    asm = VolumeAssembler(vols)
    for chunk in order.split(5):
        items = [ds[int(i)] for i in chunk]
        asm.add(torch.stack([it["label"] for it in items]), [it["domain"] for it in items],
                [it["case_id"] for it in items], torch.tensor([it["slice_index"] for it in items]))
    for vol, pred in asm.items(mode="nearest"):
        np.testing.assert_array_equal(pred.numpy(), vol.label.astype(np.float32))
    # through a smaller tile and back: the volume is close to the truth
    ds64 = SliceDataset(vols, tile_size=64)
    asm = VolumeAssembler(vols)
    asm.add(ds64.labels.float(), *zip(*ds64.keys))
    for vol, pred in asm.items(mode="bilinear"):
        inter = ((pred > 0.5).numpy() & (vol.label > 0)).sum()
        assert 2 * inter / ((pred > 0.5).sum().item() + vol.label.sum()) > 0.85


def test_assembler_errors(synth):
    vols = load_domain(synth, "A")[:1]
    ds = SliceDataset(vols, tile_size=32, only_foreground=True)
    asm = VolumeAssembler(vols)
    asm.add(ds.labels.float(), *zip(*ds.keys))
    with pytest.raises(ValueError, match="have no prediction"):
        asm.volume(("A", "Case00"))
    with pytest.raises(ValueError, match="added twice"):
        asm.add(ds.labels[:1].float(), ["A"], ["Case00"], [ds.keys[0][2]])
    filled = VolumeAssembler(vols, fill_missing=0.0)
    filled.add(ds.labels.float(), *zip(*ds.keys))
    assert filled.volume(("A", "Case00"), mode="nearest").shape == vols[0].image.shape
    with pytest.raises(KeyError, match="Case99"):
        asm.add(ds.labels[:1].float(), ["A"], ["Case99"], [0])


def test_save_like_roundtrip(synth, tmp_path):
    vol = load_domain(synth, "A")[0]
    out = save_like(vol, vol.label, tmp_path / "pred.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, vol.affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), vol.label)


# ---------------------------------------------------------------------------------------------
# synthetic writer

@pytest.mark.parametrize("padding", ["reflect", "replicate"])
def test_gaussian_blur_per_image_sigma_matches_one_sigma(padding):
    images = torch.rand(5, 1, 20, 24, generator=torch.Generator().manual_seed(0))
    for sigma in (0.5, 1.1):
        one = gaussian_blur(images, sigma, padding=padding)
        each = gaussian_blur(images, torch.full((5,), sigma), padding=padding)
        assert torch.allclose(one, each, atol=1e-6)
        assert torch.allclose(one.mean(), images.mean(), atol=0.02)  # a normalised kernel
        assert one.std() < images.std()
    assert gaussian_blur(images, 0.0) is images
    delta = torch.zeros(2, 1, 9, 9)
    delta[:, :, 4, 4] = 1
    blurred = gaussian_blur(delta, torch.tensor([0.0, 1.0]), radius=3)
    assert torch.allclose(blurred[0], delta[0]) and blurred[1].sum().item() == pytest.approx(1.0)


def test_render_is_deterministic_and_seeded():
    a1, l1, sp1, _ = render_case("F", 0, seed=1)
    a2, l2, sp2, _ = render_case("F", 0, seed=1)
    b, _, _, _ = render_case("F", 0, seed=2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(l1, l2)
    assert sp1 == sp2 and (a1.shape != b.shape or not np.array_equal(a1, b))
    assert a1.dtype == np.int16 and l1.any()


def test_full_uses_real_case_counts():
    published = re.search(r"real case\s+counts \(([\d, ]+);", DOCS_DATA.read_text()).group(1)
    assert list(REAL_CASE_COUNTS.values()) == [int(n) for n in published.split(",")]
    assert list(REAL_CASE_COUNTS) == list(DOMAINS)
    assert synthetic._case_counts(True, None, list(DOMAINS)) == REAL_CASE_COUNTS
    assert synthetic._case_counts(False, None, list(DOMAINS)) == REAL_CASE_COUNTS
    assert synthetic._case_counts(False, 3, ["B", "F"]) == {"B": 3, "F": 3}


def test_default_set_has_real_counts_and_records_its_parameters(tmp_path, monkeypatch):
    """The no-argument set (what the main job writes to its cache) has the release's case count
    per site, and its manifest records the counts and every site's acquisition parameters; a set
    written with other acquisition parameters is not taken for it. Rendering is stubbed (the
    writer's bookkeeping is under test, not the phantom), so this runs in seconds."""
    rendered = []

    def tiny(letter, i, *, seed=0, full=False):
        rendered.append((letter, i, seed, full))
        label = np.zeros((2, 4, 4), np.uint8)
        label[:, 1:3, 1:3] = 1
        image = (100 + i + 50 * label).astype(np.int16)
        return image, label, (1.0, 1.0, 3.0), 0.0

    monkeypatch.setattr(synthetic, "render_case", tiny)
    out = ensure_synthetic(tmp_path / "default", previews=False, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"] == REAL_CASE_COUNTS
    assert manifest["params"]["cases"] == REAL_CASE_COUNTS
    assert manifest["params"]["cases_per_domain"] is None and manifest["params"]["full"] is False
    assert manifest["params"]["version"] == synthetic.GENERATOR_VERSION
    for letter, (_, folder) in DOMAINS.items():
        images = sorted(p.name for p in (out / folder).iterdir() if "egmentation" not in p.name)
        assert images == [f"Case{i:02d}.nii.gz" for i in range(REAL_CASE_COUNTS[letter])]
        assert len(load_domain(out, letter)) == REAL_CASE_COUNTS[letter]
        recorded = manifest["params"]["acquisitions"][letter]
        acq = ACQUISITIONS[letter]
        for field in ("fov_mm", "matrix", "slices", "noise", "coil", "bias", "gamma", "zone", "fat",
                      "blur_px", "scanner_max"):
            value = getattr(acq, field)
            assert recorded[field] == (list(value) if isinstance(value, tuple) else value), field
    assert sorted(rendered) == sorted((d, i, 0, False) for d, n in REAL_CASE_COUNTS.items()
                                      for i in range(n))
    assert synthetic_set_is_written(out)
    # another acquisition table (a calibration change) no longer matches the cached set
    changed = dict(ACQUISITIONS)
    changed["F"] = synthetic.Acquisition(**{**synthetic.asdict(ACQUISITIONS["F"]),
                                            "fat": ACQUISITIONS["F"].fat + 0.1})
    monkeypatch.setattr(synthetic, "ACQUISITIONS", changed)
    assert not synthetic_set_is_written(out)


def test_write_layout_manifest_and_rerun(tmp_path, capsys):
    out = tmp_path / "syn"
    synthetic_main(["--out", str(out), "--cases", "1", "--seed", "5"])
    assert "written" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    for letter, (_, folder) in DOMAINS.items():
        seg = "_Segmentation" if letter == "B" else "_segmentation"
        assert f"{folder}/Case00.nii.gz" in manifest["files"]
        assert f"{folder}/Case00{seg}.nii.gz" in manifest["files"]
    assert (out / "previews" / "domains.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temp folder left behind
    stamp = (out / "manifest.json").stat().st_mtime_ns
    synthetic_main(["--out", str(out), "--cases", "1", "--seed", "5"])
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other parameters"):
        ensure_synthetic(out, cases_per_domain=1, seed=6)
    victim = out / "HK" / "Case00.nii.gz"
    payload = bytearray(victim.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    victim.write_bytes(bytes(payload))
    assert not synthetic_set_is_written(out, cases_per_domain=1, seed=5)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def flaky(letter, i, **kw):
        calls.append(letter)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(letter, i, **kw)

    real = synthetic.render_case
    monkeypatch.setattr(synthetic, "render_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "syn", cases_per_domain=1, domains=["F", "B"],
                         progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="no manifest"):
        ensure_synthetic(tmp_path / "junk", cases_per_domain=1, domains=["F"])


def test_main_job_uses_the_default_set(tmp_path, monkeypatch):
    """With no --data and no --synthetic-cases the job asks for the default set (real case counts,
    all six domains) in its cache; --synthetic-cases N asks for N cases of the run's domains."""
    from sammed_fast.experiment import run_data
    from sammed_fast.experiment.config import TrainConfig

    calls = []
    monkeypatch.setattr(run_data, "ensure_synthetic",
                        lambda folder, **kw: calls.append((folder, kw)) or folder)
    run_data.data_root(TrainConfig(cache_dir=tmp_path), progress=False)
    folder, kw = calls[-1]
    assert folder == tmp_path / "synthetic" and kw == {"progress": False}
    assert synthetic._case_counts(False, kw.get("cases_per_domain"), list(DOMAINS)) \
        == REAL_CASE_COUNTS
    run_data.data_root(TrainConfig(cache_dir=tmp_path, synthetic_cases=3, targets="B"),
                       progress=False)
    assert calls[-1][1]["cases_per_domain"] == 3 and calls[-1][1]["domains"] == ["A", "B"]


def test_outdated_cached_set_is_replaced(tmp_path, monkeypatch):
    """A set from an older GENERATOR_VERSION (a cache from before a calibration change) is rewritten
    in place; one with a foreign file in it, or one from this version with other parameters, is
    left alone and refused."""
    out = write_synthetic(tmp_path / "syn", cases_per_domain=1, domains=["F"], previews=False,
                          progress=False)
    spare = write_synthetic(tmp_path / "spare", cases_per_domain=1, domains=["F"],
                            previews=False, progress=False)
    (spare / "notes.txt").write_text("mine")
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert not synthetic_set_is_written(out, cases_per_domain=1, domains=["F"])
    assert ensure_synthetic(out, cases_per_domain=1, domains=["F"], previews=False,
                            progress=False) == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["version"] == synthetic.GENERATOR_VERSION
    assert synthetic_set_is_written(out, cases_per_domain=1, domains=["F"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spare", "syn"]  # nothing left aside
    with pytest.raises(FileExistsError):
        ensure_synthetic(spare, cases_per_domain=1, domains=["F"], progress=False)
    assert (spare / "notes.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="other parameters"):
        ensure_synthetic(out, cases_per_domain=1, domains=["F"], seed=9, progress=False)


def test_docs_parameter_table_matches_acquisitions():
    """docs/data.md publishes the per-site parameters; it must be the table ACQUISITIONS prints."""
    assert synthetic.acquisition_table() in DOCS_DATA.read_text()
