"""SAM side: variant registry, TiledSam's merged path against segment_anything, pretraining files."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from sammed_fast.cache import CACHE_ENV
from sammed_fast.experiment import pretraining as pretrain
from sammed_fast.models import TiledSam, build_sam, describe_state_dict, freeze_for_decoder_training
from sammed_fast.data.procedural import generate
from sammed_fast.method.prompts import ellipse_in_boxes
from sammed_fast.models import pixel_features
from sammed_fast.models.sam_registry import compact_config, sam_from_config

TILE = 32
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def sam64():
    """A compact SAM with strong pixel features (a fresh one's gain is small)."""
    torch.manual_seed(0)
    sam = build_sam("compact", canvas_size=2 * TILE)
    torch.nn.init.normal_(sam.pixel_encoder.gain, std=1.0)
    return sam


def slices(n: int, size: int = TILE, seed: int = 1) -> torch.Tensor:
    """Distinct z-scored slices: each a random field plus a bright square at its own place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    for k in range(n):
        x[k, 0, 2 + 3 * k : 10 + 3 * k, 4 + 2 * k : 14 + 2 * k] += 4
    return (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)


def boxes_for(n: int) -> torch.Tensor:
    return torch.tensor([[4.0 + 2 * k, 2.0 + 3 * k, 13.0 + 2 * k, 9.0 + 3 * k] for k in range(n)])


def sam_normalise(x255: torch.Tensor) -> torch.Tensor:
    """Oracle of the SAM input: 0..255 gray -> RGB normalised with SAM's mean/std."""
    return (x255.expand(-1, 3, -1, -1) - MEAN) / STD


def to_255(images: torch.Tensor) -> torch.Tensor:
    low = images.amin((1, 2, 3), keepdim=True)
    high = images.amax((1, 2, 3), keepdim=True)
    return (images - low) / (high - low) * 255


def sa_decode(sam, embedding: torch.Tensor, box: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
    """segment_anything's own prompt encoder + mask decoder, one image and one box: (1,1,4h,4w);
    pixels (1,C,4h,4w), when given, are added to the decoder's upscaled embedding before its last
    activation, by a hook on the last transposed convolution."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=box.view(1, 4), masks=None)
    hook = None
    if pixels is not None:
        hook = sam.mask_decoder.output_upscaling[-2].register_forward_hook(lambda m, args, out: out + pixels)
    try:
        low_res, _ = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    finally:
        if hook is not None:
            hook.remove()
    return low_res


def sa_encode(sam, canvases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's image side: ViT embeddings (N,E,h,w) and pixel features (N,C,4h,4w)."""
    return sam.image_encoder(canvases), sam.pixel_encoder(canvases)


@torch.no_grad()
def test_grid1_equals_segment_anything_prompt_encoder_and_decoder(sam64):
    model = TiledSam(sam=sam64, tile_size=2 * TILE, grid=1)
    images, boxes = slices(3, 2 * TILE), boxes_for(3) * 2
    ours = model(images, boxes)
    embeddings, pixels = sa_encode(sam64, sam_normalise(to_255(images)))
    expected = torch.cat([
        F.interpolate(sa_decode(sam64, embeddings[i : i + 1], boxes[i], pixels[i : i + 1]), size=(2 * TILE, 2 * TILE),
                      mode="bilinear", align_corners=False)
        for i in range(3)
    ])
    assert ours.shape == (3, 1, 2 * TILE, 2 * TILE)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # The comparison is sensitive: another box gives another answer.
    assert (model(images, boxes.flip(0)) - ours).abs().max() > 1e-2


@torch.no_grad()
def test_merged_tiles_decode_against_own_canvas_and_shifted_box(sam64):
    model = TiledSam(sam=sam64, tile_size=TILE, grid=2)
    n = 6  # two canvases, the second one half empty
    images, boxes = slices(n), boxes_for(n)
    ours = model(images, boxes)
    assert ours.shape == (n, 1, TILE, TILE)

    # Oracle: place the tiles by hand, encode, decode each box with segment_anything against its
    # own canvas, crop the tile's quadrant of the low-res mask and resize it.
    canvases = torch.zeros(2, 3, 2 * TILE, 2 * TILE)
    normalised = sam_normalise(to_255(images))
    for k in range(n):
        row, col = (k % 4) // 2, k % 2
        canvases[k // 4, :, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE] = normalised[k]
    embeddings, pixels = sa_encode(sam64, canvases)
    ours_embeddings, ours_pixels = pixel_features.unpack(model.encode(images), embeddings.shape[1])
    torch.testing.assert_close(ours_embeddings, embeddings, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_pixels, pixels, rtol=1e-4, atol=1e-4)
    assert pixels.abs().max() > 0.1  # the pixel features take part in the comparison

    def oracle(k: int, swap: bool = False) -> torch.Tensor:
        row, col = (k % 4) // 2, k % 2
        dx, dy = (row, col) if swap else (col, row)  # swap: the reference code's bug
        shift = torch.tensor([dx * TILE, dy * TILE, dx * TILE, dy * TILE], dtype=torch.float32)
        low_res = sa_decode(sam64, embeddings[k // 4 : k // 4 + 1], boxes[k] + shift, pixels[k // 4 : k // 4 + 1])
        q = low_res.shape[-1] // 2
        quadrant = low_res[..., row * q : (row + 1) * q, col * q : (col + 1) * q]
        return F.interpolate(quadrant, size=(TILE, TILE), mode="bilinear", align_corners=False)

    expected = torch.cat([oracle(k) for k in range(n)])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    with_pixels = sa_decode(sam64, embeddings[:1], boxes[0], pixels[:1])
    assert (sa_decode(sam64, embeddings[:1], boxes[0]) - with_pixels).abs().max() > 1e-2, \
        "the pixel features must change the masks for this comparison to test them"
    for k in (1, 2, 5):  # off-diagonal tiles: swapped offsets would put the box on another tile
        assert (oracle(k, swap=True) - ours[k : k + 1]).abs().max() > 1e-2


@torch.no_grad()
def test_decode_by_tile_index_matches_full_decode(sam64):
    model = TiledSam(sam=sam64, tile_size=TILE, grid=2)
    images, boxes = slices(7), boxes_for(7)
    embeddings = model.encode(images)
    full = model.decode(embeddings, boxes)
    index = torch.tensor([5, 1, 1, 6, 2, 0])
    subset = model.decode(embeddings.half(), boxes[index], tile_index=index)
    torch.testing.assert_close(subset, full[index], rtol=2e-2, atol=2e-2)  # half-precision cache
    torch.testing.assert_close(model.decode(embeddings, boxes[index], tile_index=index), full[index])
    with pytest.raises(ValueError, match="tile_index"):
        model.decode(embeddings, boxes[:2], tile_index=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="boxes"):
        model.decode(embeddings[:1], boxes)


@torch.no_grad()
def test_decode_reads_only_the_canvases_of_its_boxes(sam64):
    """A decoder batch of a few boxes against a huge cache (ten million canvases, a stride-0 view
    of one, terabytes if materialised) converts and unpacks only the canvases its boxes use."""
    model = TiledSam(sam=sam64, tile_size=TILE, grid=2)
    one = model.encode(slices(4))[:1].half()
    canvases = 10_000_000
    huge = one.expand(canvases, *one.shape[1:])
    boxes = boxes_for(2)
    far = model.decode(huge, boxes, tile_index=torch.tensor([1, 4 * (canvases - 1) + 2]))
    near = model.decode(one, boxes, tile_index=torch.tensor([1, 2]))
    assert torch.equal(far, near)


@torch.no_grad()
def test_one_decoder_pass_per_box_no_quadratic_blowup(sam64):
    model = TiledSam(sam=sam64, tile_size=TILE, grid=2)
    seen = []
    hook = sam64.mask_decoder.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        out = model(slices(8), boxes_for(8))
        model.decode(model.encode(slices(8)), boxes_for(3), tile_index=torch.tensor([7, 0, 3]))
    finally:
        hook.remove()
    assert out.shape == (8, 1, TILE, TILE)
    assert seen == [8, 3]


def test_gradients_reach_only_the_mask_decoder():
    torch.manual_seed(0)
    sam64 = build_sam("compact", canvas_size=2 * TILE)
    model = TiledSam(sam=sam64, tile_size=TILE, grid=2)
    trainable = freeze_for_decoder_training(model)
    assert {id(p) for p in trainable} == {id(p) for p in sam64.mask_decoder.parameters()}
    sam64.zero_grad(set_to_none=True)
    images, boxes = slices(5), boxes_for(5)
    embeddings = model.encode(images)
    assert not embeddings.requires_grad
    logits = model.decode(embeddings, boxes[[4, 1]], tile_index=torch.tensor([4, 1]))
    logits.square().mean().backward()
    frozen = [*sam64.image_encoder.parameters(), *sam64.pixel_encoder.parameters(),
              *sam64.prompt_encoder.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    decoder = sam64.mask_decoder
    for used in (decoder.mask_tokens.weight, decoder.output_hypernetworks_mlps[0].layers[0].weight,
                 decoder.output_upscaling[0].weight, decoder.transformer.layers[0].mlp.lin1.weight):
        assert used.grad is not None and used.grad.abs().sum() > 0


@torch.no_grad()
def test_resize_mode_is_one_slice_per_canvas_resized(sam64):
    model = TiledSam(sam=sam64, tile_size=TILE, grid=1, mode="resize")
    images, boxes = slices(2), boxes_for(2)
    ours = model(images, boxes)
    big = F.interpolate(to_255(images), size=(2 * TILE, 2 * TILE), mode="bilinear", align_corners=False)
    embeddings, pixels = sa_encode(sam64, sam_normalise(big))
    expected = torch.cat([
        F.interpolate(sa_decode(sam64, embeddings[i : i + 1], boxes[i] * 2, pixels[i : i + 1]), size=(TILE, TILE),
                      mode="bilinear", align_corners=False)
        for i in range(2)
    ])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_tiled_sam_argument_errors(sam64):
    with pytest.raises(ValueError, match="does not fit the SAM input"):
        TiledSam(sam=sam64, tile_size=48, grid=2)
    with pytest.raises(ValueError, match="grid must be 1"):
        TiledSam(sam=sam64, tile_size=TILE, grid=2, mode="resize")
    with pytest.raises(TypeError, match="Sam"):
        TiledSam(sam=torch.nn.Linear(2, 2), tile_size=TILE)
    with pytest.raises(ValueError, match="encoder_precision"):
        TiledSam(sam=sam64, tile_size=TILE, encoder_precision="fp16")
    model = TiledSam(sam=sam64, tile_size=TILE)
    with pytest.raises(ValueError, match="images"):
        model.encode(torch.zeros(2, 1, TILE + 1, TILE))
    empty = model.encode(torch.zeros(0, 1, TILE, TILE))
    assert model.decode(empty, torch.zeros(0, 4)).shape == (0, 1, TILE, TILE)


def test_encoder_precision_changes_nothing_on_the_cpu(sam64):
    images = torch.randn(5, 1, TILE, TILE)
    bf16 = TiledSam(sam=sam64, tile_size=TILE, encoder_precision="bf16").encode(images)
    fp32 = TiledSam(sam=sam64, tile_size=TILE, encoder_precision="fp32").encode(images)
    assert bf16.dtype == fp32.dtype == torch.float32 and torch.equal(bf16, fp32)


def test_registry_errors(tmp_path, sam64):
    with pytest.raises(ValueError, match="unknown SAM variant 'vit_x'"):
        build_sam("vit_x")
    with pytest.raises(ValueError, match="canvas_size"):
        build_sam("compact")
    with pytest.raises(ValueError, match="1024"):
        build_sam("vit_b", canvas_size=128)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_sam("vit_b", checkpoint=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        build_sam("vit_b", checkpoint=garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="not a plain state dict"):
        build_sam("vit_b", checkpoint=listed)

    compact = tmp_path / "compact64.pth"
    torch.save(sam64.state_dict(), compact)
    with pytest.raises(ValueError, match=r"compact64.pth looks like compact \(canvas 64\).*vit_b"):
        build_sam("vit_b", checkpoint=compact)
    with pytest.raises(ValueError, match=r"looks like compact \(canvas 64\).*compact \(canvas 128\)"):
        build_sam("compact", checkpoint=compact, canvas_size=128)
    reloaded = build_sam("compact", checkpoint=compact, canvas_size=64)
    for (name, a), b in zip(sam64.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name

    # A vit_l-shaped checkpoint (only the keys that identify it) asked for as vit_b.
    fake = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
            "image_encoder.pos_embed": torch.zeros(1, 64, 1, 1)}
    fake.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)})
    assert describe_state_dict(fake) == "vit_l"
    vit_l = tmp_path / "vit_l.pth"
    torch.save(fake, vit_l)
    with pytest.raises(ValueError, match="looks like vit_l, but SAM variant vit_b"):
        build_sam("vit_b", checkpoint=vit_l)


def test_pixel_features_pack_and_without_gain_leave_sam_unchanged():
    x, pixels = torch.randn(2, 64, 8, 8), torch.randn(2, 8, 32, 32)
    packed = pixel_features.pack(x, pixels)
    assert packed.shape == (2, 64 + 8 * 16, 8, 8)
    back, back_pixels = pixel_features.unpack(packed, 64)
    assert torch.equal(back, x) and torch.equal(back_pixels, pixels)
    assert pixel_features.unpack(x, 64) == (x, None)
    # With the pixel features' gain at zero, masks equal those of the same SAM without pixel
    # features, i.e. segment_anything's own decoding.
    torch.manual_seed(0)
    fresh = build_sam("compact", canvas_size=2 * TILE)
    torch.nn.init.zeros_(fresh.pixel_encoder.gain)
    plain = sam_from_config(dataclasses.replace(compact_config(2 * TILE), pixel_features=False))
    plain.load_state_dict({k: v for k, v in fresh.state_dict().items() if not k.startswith("pixel_encoder.")})
    images, boxes = slices(5), boxes_for(5)
    with torch.no_grad():
        ours = TiledSam(sam=fresh, tile_size=TILE)(images, boxes)
        reference = TiledSam(sam=plain, tile_size=TILE)(images, boxes)
    assert TiledSam(sam=plain, tile_size=TILE).embedding_channels == 64
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # A checkpoint of the older compact SAM (no pixel encoder) is named as such.
    assert describe_state_dict(plain.state_dict()).startswith(
        f"a compact SAM of another sammed_fast version (canvas {2 * TILE}, without pixel features")


def test_procedural_data_is_seeded_and_boxes_cover_their_targets():
    a = generate(16, 32, generator=torch.Generator().manual_seed(3))
    b = generate(16, 32, generator=torch.Generator().manual_seed(3))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a.images.shape == a.masks.shape == (16, 1, 32, 32)
    assert (a.masks.flatten(1).sum(1) > 0).all()
    assert torch.allclose(a.images.mean((1, 2, 3)), torch.zeros(16), atol=1e-4)
    assert ((a.boxes >= 0) & (a.boxes <= 31)).all()
    assert (a.boxes[:, :2] <= a.boxes[:, 2:]).all()
    centre = (a.tight_boxes[:, :2] + a.tight_boxes[:, 2:]) / 2
    assert ((a.boxes[:, :2] <= centre) & (centre <= a.boxes[:, 2:])).all()
    ys, xs = torch.nonzero(a.masks[0, 0], as_tuple=True)
    assert a.tight_boxes[0].tolist() == [xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()]


def test_inscribed_ellipse_baseline():
    mask = ellipse_in_boxes(torch.tensor([[2.0, 4.0, 12.0, 8.0]]), 16)[0, 0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 12, 4, 8)
    assert mask[6, 7] == 1 and mask[4, 2] == 0


def test_pretrain_writes_loadable_checkpoint_and_cache_is_reused(tmp_path, monkeypatch, one_thread):
    real = pretrain.pretrain_compact_sam
    calls = []

    def tiny(*, config, out, progress):
        calls.append(out)
        small = dataclasses.replace(config, steps=2, canvases_per_step=1, heldout_slices=4, warmup_steps=1)
        return real(config=small, out=out, progress=False)

    monkeypatch.setattr(pretrain, "pretrain_compact_sam", tiny)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    path = pretrain.ensure_compact_sam(tile_size=16, progress=False)
    assert path == tmp_path / "cache" / "compact_sam_tile16.pth" and calls == [path]
    meta = json.loads(pretrain.sidecar_path(path).read_text())
    assert meta["tile_size"] == 16 and meta["steps"] == 2 and 0 <= meta["heldout_dice"] <= 1
    sam = build_sam("compact", checkpoint=path, canvas_size=32)
    assert sam.image_encoder.img_size == 32
    assert pretrain.ensure_compact_sam(tile_size=16, progress=False) == path and len(calls) == 1
    path.write_bytes(path.read_bytes()[:-1])  # a damaged file is not trusted
    pretrain.ensure_compact_sam(tile_size=16, progress=False)
    assert len(calls) == 2
    again = json.loads(pretrain.sidecar_path(path).read_text())
    assert again["sha256"] == meta["sha256"]  # same seed, same weights
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="canvas_size"):
        pretrain.ensure_compact_sam(tile_size=12, progress=False)


def test_compiled_parts_give_the_same_masks_and_gradients():
    """--compile: encoder and per-box decoding under torch.compile (aot_eager here: the graph
    capture and autograd are what is tested; inductor's codegen is torch's business)."""
    torch.manual_seed(0)
    plain = TiledSam(sam=build_sam("compact", canvas_size=2 * TILE), tile_size=TILE)
    compiled = TiledSam(sam=build_sam("compact", canvas_size=2 * TILE), tile_size=TILE)
    compiled.load_state_dict(plain.state_dict())
    keys = list(compiled.state_dict())
    for model in (plain, compiled):
        freeze_for_decoder_training(model)
    assert compiled.compile_parts(backend="aot_eager") is compiled and compiled.is_compiled
    assert not plain.is_compiled
    assert list(compiled.state_dict()) == keys, "compiling must not rename checkpoint keys"
    images, boxes = slices(6), boxes_for(6)
    for count in (6, 5):  # a second, smaller batch: the last batch of an epoch
        logits = [model(images[:count], boxes[:count]) for model in (plain, compiled)]
        torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    for model, out in zip((plain, compiled), logits):
        model.sam.zero_grad(set_to_none=True)
        out.square().mean().backward()
    for (name, a), b in zip(plain.sam.mask_decoder.named_parameters(),
                            compiled.sam.mask_decoder.parameters()):
        # A part the loss does not use (the IoU head) gets None plainly, zeros when compiled.
        zeros = torch.zeros_like(a)
        torch.testing.assert_close(zeros if b.grad is None else b.grad,
                                   zeros if a.grad is None else a.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in compiled.sam.image_encoder.parameters())


def test_compact_architecture_tiles_are_independent_in_the_encoder():
    """The compact SAM's windows are exactly one tile and no block is global: changing one tile
    of a canvas leaves the other tiles' embeddings alone (4 px patches up to 32x32 tokens), except
    the token next to the seam, which the encoder neck's 3x3 convolution reaches across."""
    assert [compact_config(c).embedding_size for c in (32, 64, 128, 256)] == [8, 16, 32, 32]
    assert [compact_config(c).patch_size for c in (32, 64, 128, 256)] == [4, 4, 4, 8]
    for bad in (24, 40, 144):
        with pytest.raises(ValueError, match="canvas_size"):
            compact_config(bad)
    torch.manual_seed(0)
    model = TiledSam(sam=build_sam("compact", canvas_size=2 * TILE), tile_size=TILE)
    images = slices(4)
    changed = images.clone()
    changed[3] = torch.randn(1, TILE, TILE)
    a, b = model.encode(images)[0], model.encode(changed)[0]
    half = a.shape[-1] // 2
    top, left = a[:, : half - 1], a[:, half + 1 :, : half - 1]
    torch.testing.assert_close(top, b[:, : half - 1], rtol=0, atol=0)
    torch.testing.assert_close(left, b[:, half + 1 :, : half - 1], rtol=0, atol=0)
    assert not torch.equal(a[:, half - 1], b[:, half - 1])  # the seam row sees the changed tile
    state = {k: v.half() for k, v in model.sam.state_dict().items()}
    assert describe_state_dict(state) == f"compact (canvas {2 * TILE})"
