"""Stage 1: the coarse segmenter. Trained on the source train split with Dice + BCE (Adam), selected
on the source VALIDATION split's per-volume Dice only (never on target data); then its
probabilities for every slice of every split are stored in ``predictions/<split>.pt``
({"probs": float16 (N,t,t), or (N,C,t,t) for C > 1 structures, "keys": [(domain, case, slice)]}).

Under torchrun the segmenter trains in DistributedDataParallel, each rank on its share of every
epoch's batches (``segmenter_batch`` slices per rank per step), and the probabilities are computed
in shards of whole inference batches, gathered on every rank; rank 0 writes the files.

Cross-fitting (``decoder_prompts="crossfit"``): the training volumes are dealt into folds and one
more segmenter is trained per fold on the other folds; each fold's slices are then predicted by the
segmenter that never saw them (``predictions/train_crossfit.pt``), which gives the decoder training
boxes as imperfect as the ones it meets at test time, from source data only.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sammed_fast.atomic import save_torch_atomic
from sammed_fast.experiment import distributed
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.seeding import epoch_generator, seed_everything, stage_seed
from sammed_fast.experiment.fitting import EpochLoss, FitResult, fit, shuffled_batches
from sammed_fast.method.losses import dice_bce_loss
from sammed_fast.data import SliceDataset, Volume
from sammed_fast.experiment.run_data import RunData, Split
from sammed_fast.experiment.run_folder import RunFolder, load_torch
from sammed_fast.experiment.scoring import mean_volume_dice
from sammed_fast.method.predictor import SEGMENTER_THRESHOLD, STORED_DTYPE, Predictor, coarse_probs
from sammed_fast.models import Segmenter, build_segmenter

__all__ = ["CROSSFIT", "build_run_segmenter", "segmenter_probs", "train_segmenter",
           "crossfit_folds", "crossfit_probs", "load_segmenter", "predict_splits", "load_predictions"]

#: The predictions file of the training split's cross-fitted probabilities.
CROSSFIT = "train_crossfit"


def build_run_segmenter(config: TrainConfig) -> Segmenter:
    """The configured segmenter, from scratch or from ``config.segmenter_weights``."""
    try:
        return build_segmenter(config.segmenter, weights=config.segmenter_weights,
                               structures=len(config.label_table), in_channels=config.image_channels)
    except (FileNotFoundError, ValueError) as error:
        flag = "--segmenter-weights" if config.segmenter_weights is not None else "--segmenter"
        raise ConfigError(f"{flag}: {error}") from error


def segmenter_probs(model: Segmenter, split: Split, device: torch.device, *, progress: bool = False
                    ) -> torch.Tensor:
    """Full-precision sigmoid probabilities of every slice of ``split``: float32 (N,t,t) on the CPU,
    on every rank (each rank computes a share of the inference batches)."""
    return coarse_probs(model, split.slices.images, device, progress=progress,
                        desc=f"segmenter on {split.name}", mapper=distributed.map_sharded)


def _fit_segmenter(run: RunFolder, *, name: str, train: SliceDataset, val: Split, config: TrainConfig,
                   device: torch.device, resume: bool, stream: int) -> tuple[Segmenter, FitResult]:
    """Trains one segmenter on ``train``, selected on ``val``; checkpoints under ``name``."""
    seed_everything(stage_seed(config.seed, "segmenter") + stream)
    model = build_run_segmenter(config).to(device)
    trained = distributed.wrap(model, device)  # the model itself for one process
    optimizer = torch.optim.Adam(model.parameters(), lr=config.segmenter_lr)

    def train_epoch(epoch: int) -> float | None:
        generator = epoch_generator(config.seed, "segmenter", epoch, stream=stream)
        epoch_loss = EpochLoss()
        for index in shuffled_batches(len(train), config.segmenter_batch, generator):
            images = train.images[index].to(device)
            labels = train.labels[index].float().to(device)
            epoch_loss.step(optimizer, dice_bce_loss(trained(images), labels), len(index))
        return epoch_loss.mean

    def validate() -> float:
        return mean_volume_dice(val, segmenter_probs(model, val, device), threshold=SEGMENTER_THRESHOLD)

    result = fit(run=run, name=name, module=model, optimizer=optimizer, epochs=config.segmenter_epochs,
                 train_epoch=train_epoch, validate=validate, resume=resume, progress=config.progress,
                 lr_option="--segmenter-lr")
    return model, result


def crossfit_folds(volumes: list[Volume], folds: int) -> list[list[Volume]]:
    """The source training volumes dealt into ``folds`` folds in their sorted order (volume i to
    fold i % folds); each needs at least one volume."""
    if len(volumes) < folds:
        raise ConfigError(f"--crossfit-folds {folds}: the source training split has only "
                          f"{len(volumes)} volume(s); use fewer folds")
    return [volumes[k::folds] for k in range(folds)]


def fold_name(k: int) -> str:
    return f"segmenter_fold{k}"


def train_segmenter(run: RunFolder, data: RunData, config: TrainConfig, device: torch.device, *,
                    resume: bool) -> tuple[Segmenter, FitResult]:
    """Trains and selects the segmenter; leaves the best weights in checkpoints/segmenter_best.pt.
    For cross-fitted decoder prompts (``config.folds`` > 0) it then trains one segmenter per fold
    of the training volumes on the other folds (``checkpoints/segmenter_fold<k>_best.pt``), so that
    each fold's boxes come from a model that never saw it."""
    train, val = data.splits["train"], data.splits["val"]
    model, result = _fit_segmenter(run, name="segmenter", train=train.slices, val=val, config=config,
                                   device=device, resume=resume, stream=0)
    if config.folds:
        folds = crossfit_folds(train.volumes, config.folds)
        for k in range(config.folds):
            others = [v for j, fold in enumerate(folds) if j != k for v in fold]
            _fit_segmenter(run, name=fold_name(k), train=SliceDataset(others, tile_size=config.tile_size),
                           val=val, config=config, device=device, resume=resume, stream=k + 1)
    return model, result


def crossfit_probs(run: RunFolder, data: RunData, config: TrainConfig, device: torch.device, *,
                   progress: bool = False) -> torch.Tensor:
    """Cross-fitted probabilities of the source training split, float32 (N,t,t) in its slice order:
    each fold's slices predicted by the segmenter that did not train on that fold."""
    train = data.splits["train"]
    folds = crossfit_folds(train.volumes, config.folds)
    channels = () if len(config.label_table) == 1 else (len(config.label_table),)
    out = torch.zeros(len(train), *channels, config.tile_size, config.tile_size)
    row_of = {key: row for row, key in enumerate(train.keys)}
    for k, fold in enumerate(folds):
        model = build_segmenter(config.segmenter, structures=len(config.label_table),
                                in_channels=config.image_channels)
        run.load_best_weights(fold_name(k), model)
        part = Split(name=f"train_fold{k}", domain=train.domain, volumes=fold,
                     slices=SliceDataset(fold, tile_size=config.tile_size))
        rows = torch.tensor([row_of[key] for key in part.keys], dtype=torch.long)
        out[rows] = segmenter_probs(model.to(device).eval(), part, device, progress=progress)
    return out


def load_segmenter(run: RunFolder, config: TrainConfig, device: torch.device) -> Segmenter:
    """The selected segmenter of a run (checkpoints/segmenter_best.pt)."""
    model = build_segmenter(config.segmenter, structures=len(config.label_table),
                            in_channels=config.image_channels)
    run.load_best_weights("segmenter", model)
    return model.to(device).eval()


def predict_splits(run: RunFolder, data: RunData, predictor: Predictor, device: torch.device, *,
                   config: TrainConfig, progress: bool = True) -> list[str]:
    """Writes predictions/<split>.pt (the predictor's coarse probabilities, STORED_DTYPE) for every
    split (rank 0), and with cross-fitting the training split's cross-fitted predictions
    (``predictions/train_crossfit.pt``); returns their paths relative to the run."""
    outputs = []

    def save(name: str, split: Split, probs: torch.Tensor) -> None:
        path = run.paths.predictions(name)
        if run.writes:
            save_torch_atomic(path, {"probs": probs.to(STORED_DTYPE), "keys": [list(k) for k in split.keys]})
        outputs.append(run.paths.relative(path))

    for name, split in tqdm(data.splits.items(), desc="segmenter predictions", unit="split",
                            disable=not progress):
        save(name, split, predictor.coarse(split.slices.images, progress=progress, desc=f"segmenter on {name}"))
    if config.folds:
        save(CROSSFIT, data.splits["train"], crossfit_probs(run, data, config, device, progress=progress))
    return outputs


def load_predictions(run: RunFolder, split: Split, *, name: str | None = None) -> torch.Tensor:
    """float32 (N,t,t) (or (N,C,t,t): C structures) probabilities of ``split`` (``name``: another file of its slices, e.g. the
    cross-fitted ``train_crossfit``); checks that they belong to its slices."""
    path = run.paths.predictions(name or split.name)
    stored = load_torch(path)
    if [tuple(k) for k in stored["keys"]] != list(split.keys):
        raise ConfigError(f"{path} was computed for other slices than split {split.name} has now; "
                          "the data changed since this run: start it over")
    return stored["probs"].float()
