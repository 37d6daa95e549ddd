"""The run's SAM: which base weights it starts from, checking them early, and building the TiledSam.

Base weights: the user's checkpoint (``--sam vit_b --sam-checkpoint PATH``, or a compact one);
otherwise, for ``--sam compact``, the pretrained compact SAM in the user cache
(``pretrain.ensure_compact_sam``, pretrained on procedural shapes the first time). The knob
``compact_pretrain_steps`` (tests, quick checks) instead pretrains a few steps into the run folder
(``sam_base.pth``), or with 0 keeps the random initialisation.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sammed_fast.atomic import save_torch_atomic
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.run_data import cache_dir
from sammed_fast.experiment.run_folder import RunFolder
from sammed_fast.files import load_torch_file
from sammed_fast.experiment.pretraining import PretrainConfig, ensure_compact_sam, find_compact_sam, pretrain_compact_sam
from sammed_fast.models import TiledSam, build_sam, config_for, describe_state_dict, freeze_for_decoder_training
from sammed_fast.models.sam_registry import compact_config, expected_description, sam_from_config

__all__ = ["check_sam", "base_checkpoint", "build_run_sam", "weights_fingerprint"]

GRID = 2  # 2x2 tiles per SAM canvas


def check_sam(config: TrainConfig) -> None:
    """Tile size against the SAM input, and the checkpoint's architecture, before any work."""
    canvas = GRID * config.tile_size
    try:
        sam_config = config_for(config.sam, canvas)
    except ValueError as error:
        raise ConfigError(f"--tile-size {config.tile_size} does not fit --sam {config.sam} "
                          f"({GRID}x{GRID} tiles make a {canvas}x{canvas} canvas): {error}") from error
    if config.sam_checkpoint is None:
        if config.sam != "compact":
            raise ConfigError(f"--sam {config.sam} needs its weights: pass --sam-checkpoint PATH "
                              "(e.g. sam_vit_b_01ec64.pth; they cannot be downloaded here)")
        return
    path = Path(config.sam_checkpoint)
    if not path.is_file():
        raise ConfigError(f"--sam-checkpoint {path}: file not found")
    # mmap: reads the key shapes without loading a multi-GB file into memory
    state = load_torch_file(path, mmap=True, error=ConfigError,
                            message="--sam-checkpoint {path}: cannot be read as a state dict with "
                                    "weights_only=True ({reason})")
    if not isinstance(state, dict):
        raise ConfigError(f"--sam-checkpoint {path}: not a plain state dict "
                          f"(got {type(state).__name__})")
    found, wanted = describe_state_dict(state), expected_description(config.sam, sam_config)
    if found != wanted:
        raise ConfigError(f"--sam-checkpoint {path} looks like {found}, but --sam {config.sam} with "
                          f"--tile-size {config.tile_size} needs {wanted}")


def base_checkpoint(run: RunFolder, config: TrainConfig, *, create: bool = True) -> Path:
    """The SAM state dict the run starts from (see module docs); creates it when needed and
    ``create``, else (a finished run applied to new data must use the very weights its decoder was
    trained on) a missing or unusable file is a ConfigError."""
    if config.sam_checkpoint is not None:
        path = Path(config.sam_checkpoint)
        if not create and not path.is_file():
            raise ConfigError(f"the run's SAM checkpoint {path} is missing")
        return path
    if config.sam != "compact":
        raise ConfigError(f"--sam {config.sam} needs --sam-checkpoint")
    steps = config.compact_pretrain_steps
    if steps is None:
        if create:
            return ensure_compact_sam(tile_size=config.tile_size, cache_dir=cache_dir(config),
                                      progress=config.progress)
        return find_compact_sam(tile_size=config.tile_size, cache_dir=cache_dir(config))
    path = run.paths.sam_base
    if path.is_file():
        return path
    if not create:
        raise ConfigError(f"the SAM base weights of run {run.path} ({path}) are missing; finish the "
                          f"run with `python -m sammed_fast.train --out {run.path} --resume`")
    if steps == 0:
        torch.manual_seed(config.seed)
        sam = sam_from_config(compact_config(GRID * config.tile_size))
        save_torch_atomic(path, sam.state_dict())
    else:
        recipe = PretrainConfig(tile_size=config.tile_size, steps=steps, seed=config.seed,
                                canvases_per_step=2, warmup_steps=min(50, steps), heldout_slices=8)
        pretrain_compact_sam(config=recipe, out=path, progress=config.progress)
    return path


def weights_fingerprint(path: Path) -> str:
    """Identifies a weights file cheaply (path, size, modification time): keys the embedding cache."""
    stat = Path(path).stat()
    return hashlib.sha256(f"{Path(path).absolute()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def build_run_sam(checkpoint: Path, config: TrainConfig, device: torch.device, *,
                  compile_parts: bool = False) -> TiledSam:
    """TiledSam over 2x2 canvases with frozen image and prompt encoders, on ``device``;
    ``compile_parts``: encoder and per-box decoding under torch.compile."""
    try:
        sam = build_sam(config.sam, checkpoint=checkpoint, canvas_size=GRID * config.tile_size)
        model = TiledSam(sam=sam, tile_size=config.tile_size, grid=GRID,
                         encoder_precision=config.precision, input_scaling=config.sam_scaling)
    except (FileNotFoundError, ValueError) as error:
        if config.sam_checkpoint is not None:
            raise ConfigError(f"--sam-checkpoint: {error}") from error
        raise ConfigError(f"the SAM base weights that this run made for itself are unusable: {error}. "
                          f"Delete {checkpoint} and run again with --resume to rebuild them") from error
    freeze_for_decoder_training(model)
    model = model.to(device)
    return model.compile_parts() if compile_parts else model
