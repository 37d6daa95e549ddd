"""Compact-SAM pretraining: shipped weights, seeded box noise, resumable runs, held-out evaluation."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from sammed_fast.experiment import pretraining as pretrain
from sammed_fast.experiment.pretraining import PretrainConfig
from sammed_fast.data import procedural
from sammed_fast.models import TiledSam, build_sam, describe_state_dict
from sammed_fast.data.procedural import NO_BOX_NOISE, BoxNoise, generate, generate_polygons_and_blobs, noisy_boxes
from sammed_fast.models.sam_registry import compact_config, sam_from_config
from torchvision.ops import masks_to_boxes

SHIPPED_TILE = 64
TINY = PretrainConfig(tile_size=16, steps=6, canvases_per_step=1, warmup_steps=2, heldout_slices=4,
                      checkpoint_every=2)


# --- shipped weights -------------------------------------------------------------------------


def test_shipped_weights_load_and_match_their_sidecar(tmp_path, monkeypatch):
    path = pretrain.shipped_checkpoint_path(SHIPPED_TILE)
    meta = json.loads(pretrain.sidecar_path(path).read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    assert path.stat().st_size <= 16 * 2**20
    assert meta["format"] == pretrain.FORMAT and meta["tile_size"] == SHIPPED_TILE
    assert meta["sam_config"] == json.loads(json.dumps(compact_config(2 * SHIPPED_TILE).to_json()))
    assert meta["pretrain_config"] == PretrainConfig().to_json(), "the defaults must rebuild the shipped file"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert describe_state_dict(state) == f"compact (canvas {2 * SHIPPED_TILE})"
    sam = build_sam("compact", checkpoint=path, canvas_size=2 * SHIPPED_TILE)
    assert next(sam.parameters()).dtype == torch.float32
    for name, value in sam.state_dict().items():
        assert torch.equal(value, state[name].to(value.dtype)), name

    # The default run takes the shipped file and pretrains nothing.
    def no_pretraining(**kwargs):
        raise AssertionError("pretrained although the package ships weights for this tile size")

    monkeypatch.setattr(pretrain, "pretrain_compact_sam", no_pretraining)
    assert pretrain.ensure_compact_sam(tile_size=SHIPPED_TILE, cache_dir=tmp_path, progress=False) == path
    assert not list(tmp_path.iterdir())


def test_shipped_weights_still_score_what_their_sidecar_says(one_thread):
    """Recomputes the sidecar's quick check (16 held-out images per family) with the shipped weights."""
    path = pretrain.shipped_checkpoint_path(SHIPPED_TILE)
    meta = json.loads(pretrain.sidecar_path(path).read_text())
    model = TiledSam(sam=build_sam("compact", checkpoint=path, canvas_size=2 * SHIPPED_TILE), tile_size=SHIPPED_TILE)
    recorded = meta["quick_check"]
    assert recorded["slices"] == pretrain.QUICK_CHECK_SLICES
    again = pretrain.quick_check(model, seed=meta["seed"])
    assert again["seed"] == recorded["seed"]
    for family, table in again["heldout"].items():
        for boxes, dice in table["model"].items():
            assert dice == pytest.approx(recorded["heldout"][family]["model"][boxes], abs=0.01), (family, boxes)
        for boxes, baselines in table["baselines"].items():
            assert baselines == pytest.approx(recorded["heldout"][family]["baselines"][boxes]), (family, boxes)
    # Loose or shifted boxes: far better than what the box alone is worth.
    for family, table in meta["heldout"].items():
        for boxes in ("loosened", "shifted"):
            assert table["model"][boxes] > table["baselines"][boxes]["ellipse_in_box"] + 0.02, (family, boxes)


def test_damaged_shipped_weights_are_refused(tmp_path, monkeypatch):
    shipped = pretrain.shipped_checkpoint_path(SHIPPED_TILE)
    monkeypatch.setattr(pretrain, "WEIGHTS_DIR", tmp_path)
    copy = pretrain.shipped_checkpoint_path(SHIPPED_TILE)
    shutil.copy(shipped, copy)
    shutil.copy(pretrain.sidecar_path(shipped), pretrain.sidecar_path(copy))
    assert pretrain.ensure_compact_sam(tile_size=SHIPPED_TILE, progress=False) == copy
    payload = bytearray(copy.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    copy.write_bytes(bytes(payload))
    with pytest.raises(RuntimeError, match="sha256"):
        pretrain.ensure_compact_sam(tile_size=SHIPPED_TILE, progress=False)


def test_package_data_lists_the_weights():
    """``pip install .`` (not editable) must carry the weights and their sidecars."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["sammed_fast"]
    assert {"weights/*.pth", "weights/*.json"} <= set(package_data)


# --- box noise of the pretraining data --------------------------------------------------------


def test_box_noise_is_seeded():
    a, b = (generate(16, 32, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    other = generate(16, 32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.images, b.images)
    assert not torch.equal(a.boxes, other.boxes)
    tight = torch.tensor([[10.0, 12.0, 29.0, 31.0]]).repeat(8, 1)
    noised = [noisy_boxes(tight, 64, BoxNoise(), torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert torch.equal(noised[0], noised[1]) and not torch.equal(noised[0], noised[2])
    exact = generate(16, 32, generator=torch.Generator().manual_seed(3), box_noise=NO_BOX_NOISE)
    assert torch.equal(exact.boxes, exact.tight_boxes)


def test_box_noise_shifts_loosens_and_truncates_about_ten_percent():
    n, side = 4000, 20.0
    tight = torch.tensor([[30.0, 30.0, 30.0 + side - 1, 30.0 + side - 1]]).repeat(n, 1)
    boxes = noisy_boxes(tight, 128, BoxNoise(), torch.Generator().manual_seed(0))
    outward = (boxes - tight) * torch.tensor([-1.0, -1.0, 1.0, 1.0]) / side  # per side, fraction of the side
    exact = (outward == 0).all(1)
    loose = (outward >= 0.2 - 1e-6).all(1)
    truncated = (outward <= 0).all(1) & (outward < -0.1 + 1e-6).any(1) & ~exact
    assert 0.25 < exact.float().mean() < 0.35 and 0.06 < loose.float().mean() < 0.15
    assert truncated.float().mean() > 0.05
    jittered = outward[~(exact | loose | truncated)]
    assert 0.05 < jittered.std() < 0.15  # about 10% of the side per side
    centre_shift = ((boxes[:, :2] + boxes[:, 2:]) - (tight[:, :2] + tight[:, 2:])) / 2 / side
    assert centre_shift[~(exact | loose | truncated)].abs().mean() > 0.03  # shifts, not only size changes
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()


def test_several_targets_per_image_are_distinct_visible_objects_of_that_image():
    """targets=T: rows i*T..i*T+T-1 belong to image i; the visible parts of two different objects
    never overlap, so two targets of one image are either disjoint (distinct objects) or equal
    (a repeat, only when the image has fewer qualifying objects than T)."""
    n, T = 24, 3
    data = generate(n, 64, generator=torch.Generator().manual_seed(8), targets=T)
    assert data.images.shape == (n, 1, 64, 64) and data.masks.shape == (n * T, 1, 64, 64)
    assert data.boxes.shape == data.tight_boxes.shape == (n * T, 4)
    assert torch.equal(data.tight_boxes, masks_to_boxes(data.masks[:, 0]))
    assert (data.masks.flatten(1).sum(1) > 0).all()
    masks = data.masks.view(n, T, -1).bool()
    distinct = 0
    for image in masks:
        for a in range(T):
            for b in range(a + 1, T):
                same, overlap = torch.equal(image[a], image[b]), (image[a] & image[b]).any()
                assert same or not overlap
        distinct += len({tuple(m.nonzero().flatten().tolist()) for m in image})
    assert distinct > 2 * n  # mostly distinct objects (the images hold 1-6)
    # Seeded.
    again = generate(n, 64, generator=torch.Generator().manual_seed(8), targets=T)
    assert all(torch.equal(x, y) for x, y in zip(data, again))
    with pytest.raises(ValueError, match="targets"):
        generate(2, 64, generator=torch.Generator(), targets=0)


def test_pretraining_prompts_each_image_with_its_own_targets(tmp_path, monkeypatch, one_thread):
    seen = []
    decode = TiledSam.decode

    def spy(self, embeddings, boxes, tile_index=None):
        if self.training:
            seen.append((embeddings.shape[0], boxes.shape[0], tile_index))
        return decode(self, embeddings, boxes, tile_index)

    monkeypatch.setattr(TiledSam, "decode", spy)
    images = TINY.canvases_per_step * 4
    for targets in (2, 1):
        seen.clear()
        config = dataclasses.replace(TINY, steps=2, targets_per_image=targets, heldout_slices=2)
        pretrain.pretrain_compact_sam(config=config, out=tmp_path / "p.pth", progress=False)
        assert len(seen) == 2
        for canvases, boxes, tile_index in seen:
            assert (canvases, boxes) == (config.canvases_per_step, targets * images)
            if targets == 1:
                assert tile_index is None  # decode's default: box k prompts slice k
            else:
                assert tile_index.tolist() == [i for i in range(images) for _ in range(targets)]


# --- resumable pretraining ---------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _counting_generate(monkeypatch, *, stop_after: int | None = None) -> list:
    """Replaces the training data call of pretrain; raises _Interrupt on call stop_after + 1."""
    calls = []

    def wrapped(*args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise _Interrupt
        calls.append(kwargs.get("box_noise"))
        return generate(*args, **kwargs)

    monkeypatch.setattr(pretrain, "generate", wrapped)
    return calls


def test_resume_after_an_interruption_continues_from_the_saved_step(tmp_path, monkeypatch, one_thread):
    straight = tmp_path / "straight.pth"
    calls = _counting_generate(monkeypatch)
    pretrain.pretrain_compact_sam(config=TINY, out=straight, progress=False)
    assert len(calls) == TINY.steps and set(calls) == {TINY.box_noise}
    assert not pretrain.resume_path(straight).exists(), "a finished run removes its resume checkpoint"

    resumed = tmp_path / "resumed.pth"
    _counting_generate(monkeypatch, stop_after=5)  # killed during step 5 (0-based), saved at step 4
    with pytest.raises(_Interrupt):
        pretrain.pretrain_compact_sam(config=TINY, out=resumed, progress=False)
    assert not resumed.exists()
    saved = torch.load(pretrain.resume_path(resumed), weights_only=True)
    assert saved["step"] == 4 and len(saved["losses"]) == 4

    with pytest.raises(ValueError, match="another recipe"):
        pretrain.pretrain_compact_sam(config=dataclasses.replace(TINY, lr=0.1), out=resumed, progress=False,
                                      resume=True)
    older = tmp_path / "older.pth"  # a resume checkpoint of another architecture, same recipe
    torch.save({**saved, "sam_config": {**saved["sam_config"], "embed_dim": 128}}, pretrain.resume_path(older))
    with pytest.raises(ValueError, match="another compact-SAM architecture"):
        pretrain.pretrain_compact_sam(config=TINY, out=older, progress=False, resume=True)
    calls = _counting_generate(monkeypatch)
    pretrain.pretrain_compact_sam(config=TINY, out=resumed, progress=False, resume=True)
    assert len(calls) == TINY.steps - 4
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    meta_a, meta_b = (json.loads(pretrain.sidecar_path(p).read_text()) for p in (straight, resumed))
    assert meta_a["final_loss"] == meta_b["final_loss"] and meta_a["sha256"] == meta_b["sha256"]
    assert meta_b["steps"] == TINY.steps and meta_b["dtype"] == "float16"


def test_without_resume_a_run_starts_over(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "again.pth"
    _counting_generate(monkeypatch, stop_after=3)
    with pytest.raises(_Interrupt):
        pretrain.pretrain_compact_sam(config=TINY, out=out, progress=False)
    calls = _counting_generate(monkeypatch)
    pretrain.pretrain_compact_sam(config=TINY, out=out, progress=False)
    assert len(calls) == TINY.steps


def test_a_damaged_resume_checkpoint_or_init_file_is_named(tmp_path):
    out = tmp_path / "p.pth"
    pretrain.resume_path(out).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="resume checkpoint .*p.resume.pt"):
        pretrain.pretrain_compact_sam(config=TINY, out=out, progress=False, resume=True)
    finished = tmp_path / "finished.pth"
    shutil.copy(pretrain.resume_path(out), finished)  # garbage that its sidecar vouches for
    sidecar = {"format": pretrain.FORMAT, "tile_size": TINY.tile_size,
               "sam_config": json.loads(json.dumps(compact_config(2 * TINY.tile_size).to_json())),
               "sha256": hashlib.sha256(finished.read_bytes()).hexdigest()}
    pretrain.sidecar_path(finished).write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="--init .*finished.pth: cannot read"):
        pretrain.pretrain_compact_sam(config=TINY, out=out, progress=False, init=finished)


def test_progress_is_one_line_per_five_percent_without_a_terminal(tmp_path, capsys, one_thread):
    config = dataclasses.replace(TINY, steps=40, checkpoint_every=100)
    pretrain.pretrain_compact_sam(config=config, out=tmp_path / "p.pth", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "step" in line]
    assert len(lines) == 20 and lines[-1].startswith("pretraining compact SAM: step 40/40 (100%)")


# --- held-out evaluation ------------------------------------------------------------------------


def test_heldout_family_differs_from_the_training_family(monkeypatch):
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    train, held = generate(16, 64, generator=g()), generate_polygons_and_blobs(16, 64, generator=g())
    assert not torch.equal(train.masks, held.masks) and not torch.equal(train.images, held.images)
    assert (held.masks.flatten(1).sum(1) > 0).all() and torch.equal(held.boxes, held.tight_boxes)
    # The held-out family is drawn by its own code: none of the training family's shapes, parts,
    # textures or box noise.
    for name in ("_shapes", "_composite_objects", "_texture", "noisy_boxes"):
        monkeypatch.setattr(procedural, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} used"))
    again = generate_polygons_and_blobs(16, 64, generator=g())
    assert all(torch.equal(a, b) for a, b in zip(again, held))
    with pytest.raises(pytest.fail.Exception):
        generate(2, 64, generator=g())


def test_evaluation_uses_exact_given_boxes(monkeypatch, one_thread):
    tile = 16
    torch.manual_seed(0)
    model = TiledSam(sam=sam_from_config(compact_config(2 * tile)), tile_size=tile)
    seen = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda embeddings, boxes: seen.append(boxes.clone()) or decode(embeddings, boxes))
    first = pretrain.evaluate_heldout(model, slices=6, seed=5)
    boxes_first = [b.clone() for b in seen]
    seen.clear()
    assert pretrain.evaluate_heldout(model, slices=6, seed=5) == first
    assert all(torch.equal(a, b) for a, b in zip(boxes_first, seen)) and len(seen) == 6  # 2 families x 3 sets

    data = generate(6, tile, generator=torch.Generator().manual_seed(5), box_noise=NO_BOX_NOISE)
    assert torch.equal(boxes_first[0], data.tight_boxes)  # the training family, ground-truth boxes
    box_sets = pretrain.evaluation_boxes(data.tight_boxes, tile)
    assert [torch.equal(b, box_sets[name]) for b, name in zip(boxes_first, ("gt", "loosened", "shifted"))] == [True] * 3
    tight = torch.tensor([[4.0, 4.0, 13.0, 8.0]])  # 10 x 5 px
    sets = pretrain.evaluation_boxes(tight.repeat(4, 1), 32)
    assert sets["loosened"][0].tolist() == [3.0, 3.5, 14.0, 8.5]
    assert sets["shifted"].tolist() == [[5.0, 4.5, 14.0, 8.5], [3.0, 4.5, 12.0, 8.5],
                                        [5.0, 3.5, 14.0, 7.5], [3.0, 3.5, 12.0, 7.5]]


def test_a_warm_start_begins_at_the_init_weights_and_records_them(tmp_path, monkeypatch, one_thread):
    """--init: training starts from the given finished weights (with no step, the output equals
    them), the sidecar records the init file and its recipe, and a recipe naming other weights or a
    file its sidecar does not vouch for is refused."""
    first = tmp_path / "first.pth"
    pretrain.pretrain_compact_sam(config=TINY, out=first, progress=False)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    warm = dataclasses.replace(TINY, steps=0, seed=1, init_sha256=digest)
    second = tmp_path / "second.pth"
    pretrain.pretrain_compact_sam(config=warm, out=second, progress=False, init=first)
    start, again = (torch.load(p, weights_only=True) for p in (first, second))
    assert all(torch.equal(start[k], again[k]) for k in start)
    meta = json.loads(pretrain.sidecar_path(second).read_text())
    assert meta["init"]["sha256"] == digest and meta["init"]["pretrain_config"] == TINY.to_json()
    assert meta["pretrain_config"]["init_sha256"] == digest
    assert "init_sha256" not in TINY.to_json()  # from-scratch recipes read as before warm starts
    with pytest.raises(ValueError, match="differs from the recipe"):
        pretrain.pretrain_compact_sam(config=dataclasses.replace(warm, init_sha256="0" * 64), out=second,
                                      progress=False, init=first)
    first.write_bytes(first.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="not a finished compact SAM"):
        pretrain.pretrain_compact_sam(config=warm, out=second, progress=False, init=first)
