"""The epoch loop shared by the segmenter and the SAM decoder: train, select on source val, checkpoint.

After every epoch the loop writes ``<name>_latest.pt`` (weights, optimiser, epoch, best so far,
history) and, when the validation score improves, ``<name>_best.pt``; both atomically. With
``resume`` it continues after the last finished epoch. Epochs draw their randomness from
per-epoch generators (see experiment.seeding), so a resumed fit equals an uninterrupted one.

Under torchrun every rank runs the loop: the epoch loss is the mean over the ranks, rank 0's
BatchNorm statistics are copied to the others before validation, rank 0's validation score decides
for every rank, and rank 0 alone writes the checkpoints (the RunFolder sees to that).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from sammed_fast.experiment import distributed
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.run_folder import RunFolder

__all__ = ["EpochLoss", "FitResult", "TrainingDiverged", "fit", "shuffled_batches"]


class TrainingDiverged(ConfigError):
    """A fit produced a NaN or infinite loss or validation score (the CLI prints the message)."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    best_epoch: int  # 0-based
    best_score: float  # validation score of best_epoch (higher is better)
    history: list[dict]  # per epoch: epoch, loss, score, seconds


def fit(
    *,
    run: RunFolder,
    name: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    train_epoch: Callable[[int], float | None],
    validate: Callable[[], float],
    resume: bool,
    progress: bool = True,
    lr_option: str | None = None,
) -> FitResult:
    """Runs ``epochs`` epochs of ``train_epoch(epoch) -> mean loss`` (None: the epoch had nothing
    to train on), scores each with ``validate() -> score`` and leaves ``module`` holding the best
    epoch's weights (first best wins). A NaN or infinite loss or score stops the fit with
    :class:`TrainingDiverged` before that epoch's weights are saved."""
    lr_option = lr_option or f"--{name}-lr"
    start, best_score, best_epoch, history = 0, -math.inf, -1, []
    latest = run.load_checkpoint(name, "latest") if resume else None
    if latest is not None and not run.checkpoint_path(name, "best").is_file():
        latest = None  # a latest without its best cannot be finished correctly: start over
    if latest is not None:
        module.load_state_dict(latest["model"])
        optimizer.load_state_dict(latest["optimizer"])
        start = int(latest["epoch"]) + 1
        best_score, best_epoch = float(latest["best_score"]), int(latest["best_epoch"])
        history = list(latest["history"])
        run.log(f"{name}: resuming after epoch {start} of {epochs}")
        if latest.get("world_size", 1) != distributed.world_size():
            run.log(f"warning: {name} trained its first {start} epochs in {latest.get('world_size', 1)} "
                    f"process(es) and goes on in {distributed.world_size()}: the effective batch changes")
    distributed.barrier()  # every rank has read the checkpoints before rank 0 writes new ones
    bar = tqdm(range(start, epochs), desc=f"training {name}", unit="epoch", disable=not progress,
               initial=start, total=epochs)
    for epoch in bar:
        began = time.perf_counter()
        module.train()
        epoch_loss = train_epoch(epoch)
        loss = math.nan if epoch_loss is None else distributed.mean_over_ranks(epoch_loss)
        if epoch_loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(f"stage {name}, epoch {epoch + 1}/{epochs}: the training loss is "
                                   f"{loss} (training diverged); nothing of this epoch was saved. "
                                   f"Lower {lr_option} (now {optimizer.param_groups[0]['lr']:g})")
        module.eval()
        distributed.broadcast_buffers(module)
        score = distributed.broadcast(float(validate()))
        if not math.isfinite(score):
            raise TrainingDiverged(f"stage {name}, epoch {epoch + 1}/{epochs}: the source validation "
                                   f"score is {score} (non-finite model outputs); nothing of this "
                                   f"epoch was saved. Lower {lr_option}")
        seconds = time.perf_counter() - began
        history.append({"epoch": epoch, "loss": loss, "score": score, "seconds": round(seconds, 3)})
        run.scalar(f"{name}/train_loss", loss, epoch)
        run.scalar(f"{name}/val_dice", score, epoch)
        run.log(f"{name} epoch {epoch + 1}/{epochs}: loss {loss:.4f}, source val Dice {score:.4f}",
                echo=not progress)  # without a progress bar, one console line per epoch
        if score > best_score:
            best_score, best_epoch = score, epoch
            run.save_checkpoint(name, "best", {"model": module.state_dict(), "epoch": epoch,
                                               "score": score})
        run.save_checkpoint(name, "latest", {
            "model": module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "epochs": epochs, "best_score": best_score, "best_epoch": best_epoch, "history": history,
            "world_size": distributed.world_size(),
        })
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.3f}", best=f"{best_score:.3f}")
    run.flush()
    distributed.check_in_sync(module, name)
    distributed.barrier()  # rank 0 has written the best checkpoint
    best = run.load_checkpoint(name, "best")
    if best is None:
        raise RuntimeError(f"{name}: no best checkpoint after {epochs} epochs")
    module.load_state_dict(best["model"])
    module.eval()
    return FitResult(best_epoch=int(best["epoch"]), best_score=float(best["score"]), history=history)


def shuffled_batches(n: int, batch: int, generator: torch.Generator, *, rank: int | None = None,
                     world_size: int | None = None) -> list[torch.Tensor]:
    """This rank's batches of one epoch (default: this process's rank of all of them).

    A random permutation of range(n), the same on every rank, is split between the ranks as
    DistributedSampler does (padded by repeating its start so that every rank gets as many slices,
    then every world_size-th slice) and cut into batches of ``batch``; a last batch of one joins
    the previous one (BatchNorm cannot train on a single slice). One process: the permutation cut
    into batches.
    """
    order = torch.randperm(n, generator=generator)
    mine = distributed.shard_indices(n, strided=True, pad=True, rank=rank, world_size=world_size)
    chunks = list(order[torch.tensor(mine, dtype=torch.long)].split(batch))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


class EpochLoss:
    """Optimiser steps of one epoch and their mean loss, weighted by batch size."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, batch_size: int) -> None:
        """Zeroes the gradients, backpropagates ``loss`` (the mean over ``batch_size`` samples),
        steps ``optimizer`` and records the loss."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.total, self.count = self.total + loss.item() * batch_size, self.count + batch_size

    @property
    def mean(self) -> float | None:
        """The epoch's mean loss; None when no batch was trained."""
        return self.total / self.count if self.count else None
