"""TiledSam: SAM over 2x2 merged slices, each box decoded against its own canvas embedding.

Path (mode="merge"): z-scored slices (B,1,t,t) -> per-slice min-max to 0..255 ->
``ops.merge_tiles`` (one canvas per grid^2 slices) -> frozen image encoder -> canvas embeddings
(ceil(B/g^2),E,h,w), or (ceil(B/g^2),E+16C,h,w) for a SAM with pixel features such as the compact
one (``models.pixel_features`` packs them into the channels). Boxes (B,4) xyxy in the tile frame
-> ``ops.boxes_to_canvas`` -> prompt encoder -> mask decoder with per-box embeddings -> low-res
canvas logits (B,1,4h,4w) -> ``ops.unmerge_tiles`` -> (B,1,t,t) logits per slice.

mode="resize" is the MedSAM way, for comparison: every slice is resized to the whole canvas on its
own (one encoder pass per slice) and the boxes are scaled with it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, Sam
from torch import nn

from sammed_fast import ops
from sammed_fast.models import pixel_features
from sammed_fast.ops import SAM_PIXEL_MEAN, SAM_PIXEL_STD

MODES = ("merge", "resize")
PRECISIONS = ("bf16", "fp32")


def scale_to_uint8_range(images: torch.Tensor) -> torch.Tensor:
    """Per-slice min-max to SAM's 0..255 scale: (B,C,h,w) float -> float32; a constant slice -> 0."""
    flat = images.float().flatten(1)
    low = flat.amin(1).view(-1, 1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    return (images.float() - low) / span * 255.0


def decode_per_box(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    pixel_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """MaskDecoder's mask prediction with one image embedding PER BOX (single-mask output).

    segment_anything's ``predict_masks`` repeat_interleaves one embedding across all boxes; this
    reuses the decoder's own submodules instead, so B embeddings and B boxes give B masks.
    image_embeddings (B,E,h,w), image_pe (1,E,h,w), sparse (B,n,E), dense (B,E,h,w), optional
    pixel_features (B,E/8,4h,4w) added to the upscaled embedding (before its last activation) ->
    low-res logits (B,1,4h,4w).
    SAM's IoU prediction head is not run: nothing reads its scores.
    """
    B, E, h, w = image_embeddings.shape
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(B, -1, -1), sparse], dim=1)
    hs, src = decoder.transformer(image_embeddings + dense, image_pe.expand(B, -1, -1, -1), tokens)
    src = src.transpose(1, 2).reshape(B, E, h, w)
    if pixel_features is None:
        upscaled = decoder.output_upscaling(src)
    else:  # added before the last activation, so the sum stays in the range SAM's features have
        upscaled = decoder.output_upscaling[:-1](src)
        # In place: a transposed convolution's backward does not read its output, and on a CPU a
        # fresh (B,C,4h,4w) buffer costs several times the addition itself (page faults).
        upscaled = decoder.output_upscaling[-1](upscaled.add_(pixel_features))
    # Mask token 0 is the single-mask output (multimask_output=False in segment_anything).
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
    return torch.bmm(hyper.unsqueeze(1), upscaled.flatten(2)).view(B, 1, *upscaled.shape[-2:])


#: How a slice, min-max scaled to 0..255, is normalised for the image encoder, as (pixel_mean,
#: pixel_std) on that scale: "sam" subtracts SAM's per-channel mean and divides by its std (the
#: published SAM checkpoints); "medsam" gives the slice min-max scaled to 0..1 (MedSAM's
#: checkpoint was trained so, without SAM's mean and std).
INPUT_SCALINGS = {
    "sam": (SAM_PIXEL_MEAN, SAM_PIXEL_STD),
    "medsam": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}


class TiledSam(nn.Module):
    """A SAM that segments slices through grid x grid merged canvases (see module docs).

    sam: a segment_anything Sam. tile_size: slice side t in pixels. grid: slices per canvas side
    (mode "merge": grid * tile_size must equal the SAM input size). trainable_encoder: run the
    image encoder with gradients (pretraining only); otherwise it runs frozen under no_grad, in
    bf16 autocast on CUDA unless encoder_precision is "fp32" (the CPU always runs float32).
    input_scaling: "sam" or "medsam", see INPUT_SCALINGS (it must match the checkpoint).
    """

    def __init__(
        self,
        *,
        sam: Sam,
        tile_size: int,
        grid: int = 2,
        mode: str = "merge",
        trainable_encoder: bool = False,
        encoder_precision: str = "bf16",
        input_scaling: str = "sam",
    ) -> None:
        super().__init__()
        if not isinstance(sam, Sam):
            raise TypeError(f"sam must be a segment_anything Sam, got {type(sam).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if encoder_precision not in PRECISIONS:
            raise ValueError(f"encoder_precision must be one of {PRECISIONS}, got {encoder_precision!r}")
        if input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling must be one of {tuple(INPUT_SCALINGS)}, got {input_scaling!r}")
        for name, value in (("tile_size", tile_size), ("grid", grid)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        canvas = sam.image_encoder.img_size
        if mode == "resize" and grid != 1:
            raise ValueError(f"mode='resize' puts one slice on each canvas: grid must be 1, got {grid}")
        if mode == "merge" and grid * tile_size != canvas:
            raise ValueError(
                f"tile size {tile_size} does not fit the SAM input: grid {grid} x tile {tile_size} = "
                f"{grid * tile_size}, but this SAM takes {canvas}x{canvas} (use tile size "
                f"{canvas // grid}, or mode='resize')"
            )
        self.sam = sam
        self.tile_size = tile_size
        self.grid = grid
        self.mode = mode
        self.trainable_encoder = trainable_encoder
        self.encoder_precision = encoder_precision
        self.canvas_size = canvas
        self.input_scaling = input_scaling
        if input_scaling == "sam":  # the model's own constants (SAM's, for every registry variant)
            self.pixel_mean = tuple(float(v) for v in sam.pixel_mean.flatten())
            self.pixel_std = tuple(float(v) for v in sam.pixel_std.flatten())
        else:
            self.pixel_mean, self.pixel_std = INPUT_SCALINGS[input_scaling]
        self._decode_per_box = decode_per_box

    def compile_parts(self, *, backend: str = "inductor") -> "TiledSam":
        """Puts the image encoder and the per-box mask decoding under torch.compile; returns self.

        The encoder is compiled in place (``nn.Module.compile``), so state dict keys do not change
        and checkpoints stay interchangeable with uncompiled runs. The merge/unmerge ops and the
        box conversion stay outside the compiled regions (their argument checks read values).
        Shapes that vary (the last, smaller batch) are compiled once more, then dynamically.
        """
        self.sam.image_encoder.compile(backend=backend)
        self._decode_per_box = torch.compile(decode_per_box, backend=backend)
        return self

    @property
    def is_compiled(self) -> bool:
        return self._decode_per_box is not decode_per_box

    @property
    def tiles_per_canvas(self) -> int:
        return self.grid * self.grid

    def _check_slices(self, images: torch.Tensor) -> None:
        t = self.tile_size
        if (not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3)
                or images.shape[2:] != (t, t)):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be (B,1,{t},{t}) grey or (B,3,{t},{t}) RGB slices, got {shape}")

    @property
    def pixel_encoder(self) -> nn.Module | None:
        """The SAM's full-resolution feature encoder (``models.pixel_features``), or None."""
        return getattr(self.sam, pixel_features.PIXEL_ENCODER_KEY, None)

    @property
    def embedding_channels(self) -> int:
        """Channels of encode's output: E, plus 16 x the pixel feature channels when it has them."""
        encoder = self.pixel_encoder
        extra = 0 if encoder is None else encoder.channels * pixel_features.UPSCALE ** 2
        return self.sam.prompt_encoder.embed_dim + extra

    def canvases(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1,t,t) z-scored slices, or (B,3,t,t) RGB images (min-max scaled over all three
        channels, so colours keep their relations) -> SAM-normalised canvases (ceil(B/g^2),3,S,S)
        float32."""
        self._check_slices(images)
        x = scale_to_uint8_range(images)
        if self.mode == "resize" and x.shape[0]:
            size = (self.canvas_size, self.canvas_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return ops.merge_tiles(x, self.grid, self.pixel_mean, self.pixel_std, torch.float32)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1,t,t) z-scored slices -> canvas embeddings (ceil(B/g^2),embedding_channels,h,w)
        float32 (with pixel features packed after the E token channels)."""
        canvases = self.canvases(images)
        if canvases.shape[0] == 0:
            side = self.sam.prompt_encoder.image_embedding_size
            return canvases.new_zeros(0, self.embedding_channels, *side)
        if self.trainable_encoder:
            return self._run_encoders(canvases)
        cuda = canvases.device.type == "cuda"
        bf16 = cuda and self.encoder_precision == "bf16"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return self._run_encoders(canvases).float()

    def _run_encoders(self, canvases: torch.Tensor) -> torch.Tensor:
        embeddings = self.sam.image_encoder(canvases)
        if self.pixel_encoder is None:
            return embeddings
        return pixel_features.pack(embeddings, self.pixel_encoder(canvases).to(embeddings.dtype))

    def _to_canvas_frame(self, boxes: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        t = self.tile_size
        if self.mode == "resize":
            return boxes * (self.canvas_size / t)
        if positions is None:
            return ops.boxes_to_canvas(boxes, (t, t), self.grid)
        padded, slots = self._spread(boxes, positions)
        return ops.boxes_to_canvas(padded, (t, t), self.grid)[slots]

    def _from_canvas_frame(self, logits: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        out_size = (self.tile_size, self.tile_size)
        if positions is None:
            return ops.unmerge_tiles(logits, self.grid, out_size)
        padded, slots = self._spread(logits, positions)
        return ops.unmerge_tiles(padded, self.grid, out_size)[slots]

    def _spread(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Places row i at batch index g^2*i + positions[i] of a zero-padded batch, because the ops
        read a tile's position in its canvas off its batch index. Differentiable."""
        g2 = self.tiles_per_canvas
        slots = torch.arange(x.shape[0], device=x.device) * g2 + positions
        padded = x.new_zeros(x.shape[0] * g2, *x.shape[1:]).index_copy(0, slots, x)
        return padded, slots

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor,
        tile_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Box-prompted logits per slice, each box against its own canvas's embedding.

        embeddings: (N,embedding_channels,h,w) canvas embeddings from ``encode`` (any float
        dtype, e.g. a half-precision cache).
        boxes: (B,4) float xyxy in the tile frame (pixels of the t x t slice).
        tile_index: (B,) int64 global slice index k of each box (canvas k // g^2, position
        k % g^2); default arange(B), i.e. box k belongs to the k-th encoded slice.
        Returns logits (B,1,t,t) float32 (threshold at 0 for SAM's mask).
        """
        prompt_encoder = self.sam.prompt_encoder
        canvas_of_box, positions = self._locate(embeddings, boxes, tile_index)
        dtype = self.sam.mask_decoder.iou_token.weight.dtype
        used, spread = self._canvases_used(embeddings, canvas_of_box, in_order=tile_index is None)
        # Converted and unpacked once per canvas used, then spread over its boxes (up to g^2 each).
        tokens, pixels = pixel_features.unpack(used.to(device=boxes.device, dtype=dtype), prompt_encoder.embed_dim)
        per_box = spread(tokens)
        pixels = None if pixels is None else spread(pixels)
        canvas_boxes = self._to_canvas_frame(boxes.float(), positions)
        sparse, dense = prompt_encoder(points=None, boxes=canvas_boxes, masks=None)
        low_res = self._decode_per_box(self.sam.mask_decoder, per_box, prompt_encoder.get_dense_pe(), sparse,
                                       dense, pixels)
        return self._from_canvas_frame(low_res, positions)

    def _canvases_used(
        self, embeddings: torch.Tensor, canvas_of_box: torch.Tensor, *, in_order: bool
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The rows of ``embeddings`` (N,...) that the B boxes use, (K,...) with K <= min(N, B), and
        the function that turns per-canvas rows (K,...) into per-box rows (B,...). Only those
        rows are moved and converted: a decoder batch of a few boxes must not touch a whole cache."""
        if in_order:
            # Box k belongs to canvas k // g^2: a repeat, whose backward (a sum over the copies) is
            # deterministic, unlike an indexed gather's accumulating scatter on multi-threaded CPUs.
            B, g2 = canvas_of_box.shape[0], self.tiles_per_canvas
            return embeddings[: -(-B // g2)], lambda rows: rows.repeat_interleave(g2, 0)[:B]
        needed, row_of_box = torch.unique(canvas_of_box, return_inverse=True)
        return embeddings[needed.to(embeddings.device)], lambda rows: rows[row_of_box.to(rows.device)]

    def _locate(
        self, embeddings: torch.Tensor, boxes: torch.Tensor, tile_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checks decode's arguments; returns each box's canvas row and, for an explicit
        tile_index, its position in the canvas (None: position k % g^2 of box k)."""
        E = self.embedding_channels
        side = tuple(self.sam.prompt_encoder.image_embedding_size)
        if embeddings.ndim != 4 or (embeddings.shape[1], *embeddings.shape[2:]) != (E, *side):
            raise ValueError(
                f"embeddings must be (N,{E},{side[0]},{side[1]}), got {tuple(embeddings.shape)}"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"boxes must be float (B,4) xyxy, got {boxes.dtype} {tuple(boxes.shape)}")
        B, N = boxes.shape[0], embeddings.shape[0]
        capacity = N * self.tiles_per_canvas
        if tile_index is None:
            if B > capacity:
                raise ValueError(f"{B} boxes but embeddings of {N} canvases hold {capacity} slices")
            return torch.arange(B, device=boxes.device) // self.tiles_per_canvas, None
        if tile_index.shape != (B,) or tile_index.dtype != torch.int64:
            raise ValueError(
                f"tile_index must be int64 ({B},), got {tile_index.dtype} {tuple(tile_index.shape)}"
            )
        if B and (int(tile_index.min()) < 0 or int(tile_index.max()) >= capacity):
            raise ValueError(f"tile_index must lie in [0, {capacity}) for {N} canvases")
        tile_index = tile_index.to(boxes.device)
        positions = tile_index % self.tiles_per_canvas if self.grid > 1 else None
        return tile_index // self.tiles_per_canvas, positions

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B,1,t,t) z-scored slices and (B,4) tile-frame boxes -> logits (B,1,t,t)."""
        if boxes.shape[0] != images.shape[0]:
            raise ValueError(f"need one box per slice: {images.shape[0]} slices, {boxes.shape[0]} boxes")
        return self.decode(self.encode(images), boxes)


def freeze_for_decoder_training(model: TiledSam) -> list[nn.Parameter]:
    """Freezes the image encoder (with its pixel features, if any) and the prompt encoder; returns
    the mask decoder's parameters, the only trainable part when fine-tuning (pass them to the
    optimiser)."""
    sam = model.sam
    image_side = [sam.image_encoder] + ([model.pixel_encoder] if model.pixel_encoder is not None else [])
    for module in (*image_side, sam.prompt_encoder):
        module.requires_grad_(False)
        module.eval()
    model.trainable_encoder = False
    sam.mask_decoder.requires_grad_(True)
    return list(sam.mask_decoder.parameters())
