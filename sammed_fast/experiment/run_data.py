"""The volumes and slices of one run: the source domain's train/val/test split and every target.

Splits are named "train", "val", "test" (the source domain, 70/10/20 by sorted case id) and by the
name of each target domain (every volume): a letter of the six-site release or a domain of a
dataset description (``--data`` a manifest or an nnU-Net folder, read by ``data.manifest``). Each split holds its volumes and a SliceDataset of
all their slices at the tile size; slice i of a split is row i of every per-split tensor the stages
write (predictions, boxes, embeddings).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from sammed_fast.data import SliceDataset, Volume, find_cases, load_domain, split_source
from sammed_fast.data.labelled import with_label_table
from sammed_fast.data.synthetic import ensure_synthetic
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.cache import default_cache_dir

__all__ = ["Split", "RunData", "data_root", "check_data", "check_dataset", "read_domain",
           "check_source_labels", "load_run_data",
           "SOURCE_SPLITS"]

SOURCE_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Split:
    """One split: its volumes and their slices (image (N,1,t,t), label (N,1,t,t), keys)."""

    name: str
    domain: str
    volumes: list[Volume]
    slices: SliceDataset

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def keys(self) -> list[tuple[str, str, int]]:
        return self.slices.keys


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunData:
    source: str
    targets: tuple[str, ...]
    splits: dict[str, Split]

    @property
    def eval_splits(self) -> list[str]:
        """The source test split, then every target domain."""
        return ["test", *self.targets]


def cache_dir(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir is not None else default_cache_dir()


def data_root(config: TrainConfig, *, progress: bool = True) -> Path:
    """The data folder: ``config.data`` (also a dataset description), or the synthetic set in the
    cache (written if missing)."""
    if config.dataset is not None:
        return Path(config.data)
    if config.data is not None:
        if not Path(config.data).is_dir():
            raise ConfigError(f"--data {config.data}: folder does not exist")
        return Path(config.data)
    if config.synthetic_cases is None:
        folder = cache_dir(config) / "synthetic"
        kwargs = {}
    else:  # a smaller set of only the run's domains (tests, quick checks)
        domains = sorted({config.source, *config.target_domains})
        folder = cache_dir(config) / f"synthetic_{config.synthetic_cases}cases_{''.join(domains)}"
        kwargs = dict(cases_per_domain=config.synthetic_cases, domains=domains)
    try:
        return ensure_synthetic(folder, progress=progress, **kwargs)
    except FileExistsError as error:
        raise ConfigError(str(error)) from error


def check_data(root: Path, domains: tuple[str, ...]) -> None:
    """Six-site layout: every domain's folder exists and pairs images with labels (files are read
    later)."""
    for letter in domains:
        try:
            find_cases(root, letter)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"--data: {error}") from error


def check_dataset(config: TrainConfig, *, progress: bool = False) -> None:
    """The data of ``config`` before any training: a dataset description is validated (every
    problem of every case, each naming its file, in one ConfigError); the six-site release's
    folders are checked for the run's domains."""
    if config.dataset is not None:
        config.dataset.validate(progress=progress)
    elif config.data is not None:
        if not Path(config.data).is_dir():
            raise ConfigError(f"--data {config.data}: folder does not exist")
        check_data(Path(config.data), (config.source, *config.target_domains))


def read_domain(config: TrainConfig, root: Path, domain: str, *, progress: bool = True) -> list[Volume]:
    """The volumes of one domain, from the description or the six-site layout under ``root``."""
    try:
        if config.dataset is not None:
            return config.dataset.read(domain, progress=progress)
        volumes = load_domain(root, domain, progress=progress)
        if config.labels is None:
            return volumes
        return [with_label_table(volume, config.label_table) for volume in volumes]
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--data: {error}") from error


def check_source_labels(train: list[Volume], source: str) -> None:
    """Both stages learn from the source training volumes' labels: refuses (ConfigError naming the
    label files) a training split without a single foreground voxel, before any training."""
    if any(volume.label.any() for volume in train):
        return
    files = ", ".join(str(volume.label_path) for volume in train)
    raise ConfigError(f"source domain {source}: every label of its training split is empty (no "
                      f"voxel > 0), so there is nothing to learn: {files}")


def load_run_data(config: TrainConfig, root: Path, *, progress: bool = True) -> RunData:
    """Reads and normalises the source and target volumes and slices them at the tile size."""
    def read(domain: str) -> list[Volume]:
        return read_domain(config, root, domain, progress=progress)

    try:
        parts = split_source(read(config.source))
    except ValueError as error:
        raise ConfigError(f"source domain {config.source}: {error}") from error
    check_source_labels(parts["train"], config.source)
    parts.update({domain: read(domain) for domain in config.target_domains})
    splits = {}
    for name, volumes in parts.items():
        domain = config.source if name in SOURCE_SPLITS else name
        try:
            slices = SliceDataset(volumes, tile_size=config.tile_size)
        except ValueError as error:  # grey and RGB images mixed, say
            raise ConfigError(f"--data {config.data}: split {name}: {error}") from error
        splits[name] = Split(name=name, domain=domain, volumes=volumes, slices=slices)
    return RunData(source=config.source, targets=tuple(config.target_domains), splits=splits)
