"""Stage 4: SAM mask-decoder fine-tuning (the predictor's SAM; its decoding is ``Predictor.decode``).

Only the mask decoder trains (image and prompt encoders frozen), with Dice + BCE on logits, Adam,
on the source train slices (one box per structure: row i*C+c decodes slice i's tile) prompted
with the segmenter's FILTERED boxes (the paper; another kind
with ``decoder_prompts``, for the Table 3 ablation), against their labels at the tile size.
Optional box noise (each side moved by up to box_noise of the box's extent, inward or outward) and
box jitter (each side 0..box_jitter px outward) are applied at training time only, drawn from the
epoch's seeded generator. Every
epoch is scored on the source validation split (per-volume Dice at theta2, with the same kind of
boxes) and the best epoch is kept: nothing selects on target data.

Under torchrun only the mask decoder is wrapped in DistributedDataParallel (the frozen encoders
stay plain on every rank) and each rank trains on its share of every epoch's batches
(``decoder_batch`` boxes per rank per step).
"""
from __future__ import annotations


import torch
from torch import nn

from sammed_fast.experiment import distributed
from sammed_fast.experiment.boxes_stage import load_boxes
from sammed_fast.method.predictor import Predictor
from sammed_fast.method.prompts import jitter_boxes, noise_boxes, structure_rows
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.seeding import epoch_generator, seed_everything, stage_seed
from sammed_fast.experiment.embedding_cache import EmbeddingCache
from sammed_fast.experiment.fitting import EpochLoss, FitResult, fit, shuffled_batches
from sammed_fast.method.losses import dice_bce_loss
from sammed_fast.experiment.run_data import RunData
from sammed_fast.experiment.run_folder import RunFolder
from sammed_fast.experiment.scoring import mean_volume_dice
from sammed_fast.models import TiledSam, freeze_for_decoder_training

__all__ = ["train_decoder", "load_decoder"]


class _DecoderStep(nn.Module):
    """``model.decode`` as a module whose only submodule is the mask decoder, so that
    DistributedDataParallel can wrap the decoding (DDP averages gradients only when called through
    its forward) while syncing just the decoder's weights, not the frozen encoders'."""

    def __init__(self, model: TiledSam) -> None:
        super().__init__()
        self.mask_decoder = model.sam.mask_decoder
        self.decode = model.decode  # a bound method: not a submodule

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor, tile_index: torch.Tensor
                ) -> torch.Tensor:
        return self.decode(embeddings, boxes, tile_index)


def load_decoder(run: RunFolder, model: TiledSam) -> None:
    """Loads the run's selected decoder (checkpoints/decoder_best.pt) into ``model``."""
    run.load_best_weights("decoder", model.sam.mask_decoder)
    model.eval()


def train_decoder(run: RunFolder, data: RunData, config: TrainConfig, predictor: Predictor,
                  cache: EmbeddingCache, device: torch.device, *, resume: bool) -> FitResult:
    """Fine-tunes the mask decoder of ``predictor.sam``; leaves the best epoch's weights in it."""
    model = predictor.sam
    seed_everything(stage_seed(config.seed, "decoder"))
    parameters = freeze_for_decoder_training(model)
    # The IoU head and the three multimask outputs never reach the loss: DDP must skip them.
    decode = distributed.wrap(_DecoderStep(model), device, find_unused_parameters=True)
    optimizer = torch.optim.Adam(parameters, lr=config.decoder_lr)
    train, val = data.splits["train"], data.splits["val"]
    train_boxes, keep = predictor.prompter.prompts(load_boxes(run, train), config.decoder_prompts)
    val_boxes, val_keep = predictor.prompter.prompts(load_boxes(run, val), config.decoder_prompts)
    rows = torch.nonzero(keep).flatten()
    if len(rows) == 0:
        run.log(f"warning: no source training slice has a {config.decoder_prompts} box, so the "
                "decoder has nothing to train on and keeps its initial weights")
    embeddings = cache.get("train").to(device)
    val_embeddings = cache.get("val")
    structures = train.slices.structures  # box row i*C+c: slice i, structure c
    labels = train.slices.labels if structures == 1 else structure_rows(train.slices.labels).unsqueeze(1)

    def train_epoch(epoch: int) -> float | None:
        generator = epoch_generator(config.seed, "decoder", epoch)
        batches = shuffled_batches(len(rows), config.decoder_batch, generator)
        if distributed.rank() > 0:  # this rank's own jitter; rank 0 goes on with the shared stream
            generator = epoch_generator(config.seed, "decoder", epoch, rank=distributed.rank())
        epoch_loss = EpochLoss()
        for batch in batches:
            if len(batch) == 0:  # no slice has a box: nothing to decode
                continue
            index = rows[batch]
            boxes = noise_boxes(train_boxes[index], config.box_noise, config.tile_size, generator)
            boxes = jitter_boxes(boxes, config.box_jitter, config.tile_size, generator)
            tiles = index if structures == 1 else torch.div(index, structures, rounding_mode="floor")
            logits = decode(embeddings, boxes.to(device), tiles.to(device))
            epoch_loss.step(optimizer, dice_bce_loss(logits, labels[index].float().to(device)), len(index))
        return epoch_loss.mean

    def validate() -> float:
        probs = predictor.decode(val_embeddings, val_boxes, val_keep, structures=structures)
        return mean_volume_dice(val, probs, threshold=config.theta2)

    return fit(run=run, name="decoder", module=model.sam.mask_decoder, optimizer=optimizer,
               epochs=config.decoder_epochs, train_epoch=train_epoch, validate=validate,
               resume=resume, progress=config.progress)
