"""The method as one object: slices in; coarse probabilities, box prompts, canvas embeddings and
SAM probabilities out.

    predictor = Predictor(segmenter=..., prompter=BoxPrompter(theta1=0.75, downscale=1), sam=tiled_sam)
    out = predictor.predict(images)        # images (B,1,t,t) z-scored slices, 4 per SAM canvas
    masks = out.probs > predictor.theta2   # (B,t,t)

A run of the main job calls the same steps one at a time and keeps their outputs in the run folder
(coarse probabilities, boxes, embeddings); ``evaluate`` and ``predict`` call this object too, so a
volume gets the same mask from both. Coarse probabilities and canvas embeddings pass through
``STORED_DTYPE`` (float16), the precision a run stores them in: boxes and masks computed from
stored values equal those computed in one go.

The batched steps go through ``map_batches(fn, items, desc=, unit=, progress=)`` (default: a plain
loop); a torchrun launch passes ``experiment.distributed.map_sharded``, which shares the batches
between the ranks and gives every rank the whole result.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from sammed_fast.method.prompts import BoxPrompter, structure_count
from sammed_fast.models import Segmenter, TiledSam

__all__ = ["STORED_DTYPE", "SEGMENTER_THRESHOLD", "Prediction", "Predictor", "coarse_probs", "map_batches"]

#: The precision of stored coarse probabilities and canvas embeddings.
STORED_DTYPE = torch.float16
#: Threshold of the "segmenter alone" mask (the box filter uses theta1 instead).
SEGMENTER_THRESHOLD = 0.5
SEGMENTER_BATCH = 64  # slices per segmenter call
DECODER_BATCH = 64  # boxes per mask-decoder call
ENCODER_CANVASES = {"cuda": 16, "cpu": 8}  # canvases per image-encoder call


T = TypeVar("T")
Item = TypeVar("Item")
MapBatches = Callable[..., list]


def map_batches(fn: Callable[[Item], T], items: Sequence[Item], *, desc: str = "", unit: str = "batch",
                progress: bool = False) -> list[T]:
    """[fn(item) for item in items], with a progress bar when asked (one process)."""
    return [fn(item) for item in tqdm(items, desc=desc, unit=unit, disable=not progress)]


@torch.no_grad()
def coarse_probs(segmenter: Segmenter, images: torch.Tensor, device: torch.device, *,
                 progress: bool = False, desc: str = "segmenter", mapper: MapBatches = map_batches
                 ) -> torch.Tensor:
    """Sigmoid probabilities of the segmenter, float32 (B,t,t) on the CPU for one structure,
    (B,C,t,t) for C > 1 (``segmenter.structures``), at full precision (the validation score that
    selects the segmenter's epoch uses these)."""
    segmenter.eval()
    channels = () if segmenter.structures == 1 else (segmenter.structures,)

    def batch(start: int) -> torch.Tensor:
        logits = segmenter(images[start:start + SEGMENTER_BATCH].to(device))
        probs = torch.sigmoid(logits.float())
        return (probs[:, 0] if not channels else probs).cpu()

    out = mapper(batch, range(0, len(images), SEGMENTER_BATCH), desc=desc, unit="batch", progress=progress)
    return torch.cat(out) if out else torch.zeros(0, *channels, *images.shape[-2:])


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the method makes of B slices: coarse (B,t,t) and probs (B,t,t) float32 probabilities,
    boxes (B,4) the SAM prompts (tile frame, inclusive xyxy) and keep (B,) bool (False: no box,
    the slice's mask is empty and SAM was not called). With C > 1 structures: coarse and probs
    (B,C,t,t), boxes (B*C,4) and keep (B*C,), row i*C+c for slice i, structure c."""

    coarse: torch.Tensor
    boxes: torch.Tensor
    keep: torch.Tensor
    probs: torch.Tensor


@dataclasses.dataclass(eq=False, kw_only=True)
class Predictor:
    """The coarse segmenter, the box prompter and the tiled SAM with its decoder, on ``device``.

    A part may be None while a run is still making it (the SAM before the segmenter has
    finished, say); a step that needs a missing part raises ValueError. ``mapper`` runs the
    batches of a step (see the module docs)."""

    segmenter: Segmenter | None
    prompter: BoxPrompter
    sam: TiledSam | None
    theta2: float = 0.5
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    mapper: MapBatches = map_batches

    def _need(self, part: str):
        value = getattr(self, part)
        if value is None:
            raise ValueError(f"this predictor has no {part} yet")
        return value

    # ------------------------------------------------------------------ the steps
    def coarse(self, images: torch.Tensor, *, progress: bool = False, desc: str = "segmenter") -> torch.Tensor:
        """(B,1,t,t) z-scored slices -> coarse probabilities (B,t,t), or (B,C,t,t) for C > 1
        structures, float32 on the CPU, rounded to STORED_DTYPE."""
        probs = coarse_probs(self._need("segmenter"), images, self.device, progress=progress, desc=desc,
                             mapper=self.mapper)
        return probs.to(STORED_DTYPE).float()

    def boxes(self, coarse: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every prompt kind for coarse probabilities (B,t,t) or (B,C,t,t) (``BoxPrompter.boxes``:
        row i*C+c for slice i, structure c)."""
        return self.prompter.boxes(coarse, labels)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, *, progress: bool = False, desc: str = "SAM encoder") -> torch.Tensor:
        """(B,1,t,t) slices -> canvas embeddings (ceil(B/4),C,h,w) in STORED_DTYPE on the CPU, C =
        ``TiledSam.embedding_channels`` (the pixel features packed after the E token channels);
        canvas c holds slices 4c..4c+3."""
        sam = self._need("sam").eval()
        step = ENCODER_CANVASES.get(self.device.type, ENCODER_CANVASES["cpu"]) * sam.tiles_per_canvas

        def encode(start: int) -> torch.Tensor:
            return sam.encode(images[start:start + step].to(self.device)).to(STORED_DTYPE).cpu()

        parts = self.mapper(encode, range(0, len(images), step), desc=desc, unit="call", progress=progress)
        return torch.cat(parts) if parts else sam.encode(images[:0].to(self.device)).to(STORED_DTYPE).cpu()

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor, keep: torch.Tensor, *,
               structures: int = 1, progress: bool = False, desc: str = "SAM decoder") -> torch.Tensor:
        """SAM probabilities (N,t,t) float32 on the CPU for slices prompted with ``boxes`` (N,4);
        slice i's embedding is canvas i // 4 of ``embeddings``; slices with keep False get 0.
        With C = ``structures`` > 1, ``boxes`` (N*C,4) holds row i*C+c for slice i, structure c
        (one mask per box, slice i's tile) and the probabilities are (N,C,t,t)."""
        sam = self._need("sam").eval()
        t = sam.tile_size
        out = torch.zeros(boxes.shape[0], t, t)
        chunks = torch.nonzero(keep).flatten().split(DECODER_BATCH)
        embeddings = embeddings.to(self.device)

        def chunk_probs(chunk: torch.Tensor) -> torch.Tensor:
            tiles = chunk if structures == 1 else torch.div(chunk, structures, rounding_mode="floor")
            logits = sam.decode(embeddings, boxes[chunk].to(self.device), tiles.to(self.device))
            return torch.sigmoid(logits.float())[:, 0].cpu()

        probs = self.mapper(chunk_probs, chunks, desc=desc, unit="batch", progress=progress)
        for chunk, chunk_out in zip(chunks, probs):
            out[chunk] = chunk_out
        return out if structures == 1 else out.reshape(-1, structures, t, t)

    # ------------------------------------------------------------------ all of it
    def predict(self, images: torch.Tensor, *, kind: str = "filtered") -> Prediction:
        """The whole method on (B,1,t,t) z-scored slices (4 per canvas, in order)."""
        coarse = self.coarse(images)
        boxes, keep = self.prompter.prompts(self.boxes(coarse), kind)
        probs = self.decode(self.embed(images), boxes, keep, structures=structure_count(coarse))
        return Prediction(coarse=coarse, boxes=boxes, keep=keep, probs=probs)
