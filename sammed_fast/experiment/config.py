"""TrainConfig: every setting of one run of the main job, checked on construction.

The command ``sammed-fast train`` parses arguments into a TrainConfig and calls
``sammed_fast.experiment.jobs.train(config)``; Python users build the same object. The fields
declared with :func:`sammed_fast.options.option` are that command's options: their help, group and
choices are stated here, next to their defaults. Fields left at None get
defaults that depend on other fields (see :meth:`TrainConfig.resolved`), e.g. the epochs differ
between the built-in synthetic set and real data.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from sammed_fast.atomic import write_text_atomic
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.devices import resolve_device
from sammed_fast.method.prompts import EMPTY_BOX_POLICIES, PROMPT_KINDS, BoxPrompter
from sammed_fast.data.images2d import read_image_2d
from sammed_fast.data.labels import PROSTATE_LABELS, LabelTable
from sammed_fast.data.manifest import DatasetDescription, describe_dataset
from sammed_fast.data.prostate import DOMAINS
from sammed_fast.models import SEGMENTERS
from sammed_fast.models.tiled_sam import PRECISIONS
from sammed_fast.options import option

__all__ = ["ConfigError", "TrainConfig", "STAGES", "SYNTHETIC_EPOCHS", "REAL_EPOCHS", "SAM_CHOICES"]


#: The stages of one run, in order; ``stop_after`` and the resume state use these names.
STAGES = ("segmenter", "predict", "boxes", "decoder", "evaluate")
SAM_CHOICES = ("compact", "vit_b", "vit_l", "vit_h")
SAM_SCALINGS = ("sam", "medsam")
#: Where the frozen encoder's embeddings are kept: the run folder (reused on resume) or memory.
EMBEDDING_CACHES = ("disk", "memory")
#: (segmenter epochs, decoder epochs) for the built-in synthetic set: sized so that the whole
#: default run, first compact-SAM pretraining included, stays within 15 minutes on 2 CPU cores.
SYNTHETIC_EPOCHS = (60, 40)
#: (segmenter epochs, decoder epochs) for real data: the reference code's 100, the paper's 200.
REAL_EPOCHS = (100, 200)
#: Seeds are drawn from [0, MAX_SEED]: every generator the run seeds (numpy's, torch's per-epoch
#: ones derived from it) takes such a seed without wrapping around.
MAX_SEED = 2**32 - 1
#: Cells per tile side the box filter works on: the paper's 512 px slices downscaled by 4.
FILTER_CELLS = 128
CPU_SEGMENTER, GPU_SEGMENTER = "resnet18_lite", "deeplabv3_resnet50"
DEFAULT_TILE = {"compact": 64, "vit_b": 512, "vit_l": 512, "vit_h": 512}
#: Fields that may differ when a run is resumed (they change no number it produces beyond
#: floating-point rounding).
RESUMABLE_CHANGES = ("resume", "progress", "device", "stop_after", "threads", "out", "embedding_cache",
                     "all_sources", "figure_slices", "compile", "seeds")


_data_option = functools.partial(option, group="data")
_segmenter_option = functools.partial(option, group="stage 1: segmenter")
_box_option = functools.partial(option, group="stage 2: boxes")
_sam_option = functools.partial(option, group="stages 3-4: SAM")
_run_option = functools.partial(option, group="run")


def filter_downscale(tile_size: int, cells: int) -> int:
    """The box filter's area-downscale factor that leaves at least ``cells`` cells per tile side:
    the paper's 4 at a 512 px tile (128 cells), none (1) at tiles of fewer than 2 x cells pixels."""
    return max(1, tile_size // cells)


#: The run's split names; a domain of a dataset description may not be named like them.
SPLIT_NAMES = ("train", "val", "test")
#: Domain names a run can use: they name files of the run folder (predictions/<domain>.pt).
_DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: config.json entries derived from the data (written for a dataset description, not read back).
DERIVED_KEYS = ("data_form", "label_table")


def _tokens(value: Any) -> list[str]:
    """'B,C', 'b c' or ['B', 'C,D'] -> the names given, split at commas and white space."""
    values = [value] if isinstance(value, str) else list(value)
    return [token for v in values for token in str(v).replace(",", " ").split()]


def is_description(path: Path) -> bool:
    """Whether ``--data`` names a dataset description (a manifest file, an nnU-Net folder with its
    dataset.json) rather than the six-site release folder."""
    return path.suffix.lower() in (".csv", ".json") or (path / "dataset.json").is_file()


def _checked_domains(domains: tuple[str, ...], name: str, known: Sequence[str], *, what: str,
                     known_as: str) -> tuple[str, ...]:
    """``domains`` when each is one of ``known`` and none repeats, else a ConfigError naming the
    option (``what``: "domain" or "domain letter"; ``known_as``: how the message lists ``known``)."""
    bad = [v for v in domains if v not in known]
    if bad or not domains:
        raise ConfigError(f"{name}: unknown {what}(s) {bad or '(none given)'}; {known_as} "
                          f"{', '.join(known) or '(none)'}")
    if len(set(domains)) != len(domains):
        raise ConfigError(f"{name}: {what}s repeat: {' '.join(domains)}")
    return domains


def _names(value: Any, name: str, description: DatasetDescription) -> tuple[str, ...]:
    """Domain names of a dataset description; unknown or repeated names -> ConfigError."""
    return _checked_domains(tuple(_tokens(value)), name, description.domains, what="domain",
                            known_as=f"--data {description.source} has domains")


def _letters(value: Any, name: str) -> tuple[str, ...]:
    """'BC', 'B,C', 'b c' or ['B', 'C'] -> ('B', 'C'); unknown or repeated letters -> ConfigError."""
    letters = tuple(c.upper() for token in _tokens(value) for c in token)
    return _checked_domains(letters, name, tuple(DOMAINS), what="domain letter", known_as="choose from")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One run: data, the two models, the schedule, and where the run folder goes.

    Units: tile_size in pixels (slices are resized to tile_size x tile_size; the 2x2 SAM canvas is
    2 x tile_size); box_jitter in pixels of the tile; thresholds are probabilities. Fields without
    an option (theta2_sweep, figure_slices) are not on the command line.
    """

    data: Path | None = _data_option(
        None, "root of the six-site prostate release (folders ISBI, ISBI_1.5, I2CVB, UCL, BIDMC, HK), "
              "or a dataset description: a manifest .csv/.json or an nnU-Net raw folder (docs/byod.md); "
              "default: the built-in synthetic set, written to the cache if missing")
    source: str | None = _data_option(
        None, "source domain: a letter A..F of the six-site release (default A), or a domain name of "
              "a dataset description (required there)")
    targets: tuple[str, ...] | None = _data_option(
        None, "target domains: letters (BCD, B C D) or a description's domain names (siteB siteC) "
              "(default: all others)")
    labels: str | None = _data_option(
        None, "label table, e.g. 'inner=1,outer=2' or 'prostate=*' (every non-zero value): replaces a "
              "dataset description's own; for the six-site release (default prostate=*) it keeps label "
              "values apart, e.g. 'cg=1,pz=2' on sites that label both zones")
    all_sources: bool = _data_option(False, "one run per source domain and their average (the paper's Table 1)")
    synthetic_cases: int | None = _data_option(None, "cases per domain of a smaller synthetic set (quick checks)")
    cache_dir: Path | None = _data_option(
        None, "cache of the synthetic set and the compact SAM (default $SAMMED_FAST_CACHE or "
              "~/.cache/sammed_fast)")
    tile_size: int | None = _data_option(
        None, "slice side in pixels; the SAM canvas is 2x2 tiles (default "
              f"{DEFAULT_TILE['compact']} for the compact SAM, {DEFAULT_TILE['vit_b']} for vit_*)")
    segmenter: str | None = _segmenter_option(
        None, f"default: {GPU_SEGMENTER} (the paper's) on a GPU, {CPU_SEGMENTER} on the CPU",
        choices=sorted(SEGMENTERS))
    segmenter_weights: Path | None = _segmenter_option(None, "local initial weights file")
    segmenter_epochs: int | None = _segmenter_option(
        None, f"default: {SYNTHETIC_EPOCHS[0]} on the synthetic set, {REAL_EPOCHS[0]} on real data")
    segmenter_batch: int = _segmenter_option(8, "slices per training step (per process under torchrun)")
    segmenter_lr: float = _segmenter_option(1e-3, "learning rate")
    theta1: float = _box_option(0.75, "coarse-mask threshold")
    filter_cells: int = _box_option(
        FILTER_CELLS, "the box filter area-downscales each coarse map to at least this many cells per "
                      "tile side before its largest component (the paper: 512 px / 4 = 128), so the "
                      "filter's geometry is the same at every tile size")
    downscale: int | None = _box_option(
        None, "explicit area-downscale factor, overriding --filter-cells (1 = exact; default: tile size "
              f"// filter cells, at least 1: {filter_downscale(512, FILTER_CELLS)} at 512 px, "
              f"{filter_downscale(64, FILTER_CELLS)} at 64 px)")
    empty_box: str = _box_option(
        "skip", "slice without a coarse box: 'skip' -> empty mask, 'full' -> whole-image box",
        choices=EMPTY_BOX_POLICIES)
    sam: str = _sam_option(
        "compact", "'compact' is a small stand-in pretrained on procedural shapes; real conclusions "
                   "need vit_b/l/h with --sam-checkpoint", choices=SAM_CHOICES)
    sam_checkpoint: Path | None = _sam_option(None, "SAM state dict (.pth)")
    sam_scaling: str | None = _sam_option(
        None, "how slices are scaled for the image encoder: 'sam' (SAM's pixel mean/std; the "
              "published SAM checkpoints) or 'medsam' (each slice min-max scaled to 0..1; MedSAM's "
              "vit_b checkpoint). Default sam; a checkpoint named like MedSAM's must say which",
        choices=SAM_SCALINGS)
    compact_pretrain_steps: int | None = _sam_option(
        None, "testing: pretrain the compact SAM for this many steps into the run folder (0 = random "
              "weights) instead of using the cached one")
    decoder_epochs: int | None = _sam_option(
        None, f"default: {SYNTHETIC_EPOCHS[1]} on the synthetic set, {REAL_EPOCHS[1]} on real data")
    decoder_batch: int = _sam_option(16, "boxes per training step (per process under torchrun)")
    decoder_lr: float = _sam_option(1e-4, "learning rate")
    decoder_prompts: str = _sam_option(
        "filtered", "boxes the decoder is fine-tuned and selected with: 'filtered' is the method; "
                    "'gt', 'whole', 'unfiltered' give the paper's Table 3 ablation rows; 'crossfit': "
                    "filtered boxes of the training slices from segmenters that did not train on them "
                    "(--crossfit-folds), like the boxes met at test time", choices=PROMPT_KINDS)
    crossfit_folds: int = _sam_option(
        3, "with --decoder-prompts crossfit: folds of the source training volumes (one extra "
           "segmenter per fold)")
    box_jitter: int = _sam_option(0, "training only: move each box side 0..N px outward")
    box_noise: float = _sam_option(
        0.0, "training only: move each box side by a random fraction in [-F, F] of the box's extent "
             "(shift, shrink, grow; SAM was trained with about 0.1)")
    embedding_cache: str = _sam_option(
        "disk", "where the frozen encoder's embeddings are kept: the run folder (reused on resume) or "
                "memory", choices=EMBEDDING_CACHES)
    precision: str = _sam_option(
        "bf16", "the frozen SAM image encoder on a GPU: bf16 autocast or fp32 (the CPU always runs fp32)",
        choices=PRECISIONS)
    compile: bool = _sam_option(
        False, "run SAM's image encoder and per-box mask decoding under torch.compile (inductor): "
               "faster epochs on a GPU after a one-off compile (about 40 s per shape for the compact "
               "SAM on a 2-core CPU, where it gains little)")
    theta2: float = _sam_option(0.5, "SAM mask threshold")
    theta2_sweep: tuple[float, ...] = (0.5, 0.75, 0.9)
    out: Path | None = _run_option(
        None, "run folder (default runs/sammed_fast_<source>, or runs/sammed_fast_all)")
    resume: bool = _run_option(False, "continue the run in --out: finished stages are not redone")
    seed: int = _run_option(0, "seed of the run")
    seeds: tuple[int, ...] | None = _run_option(
        None, "one run per seed (out/seed_<n>) and results.md with the mean and standard deviation of "
              "every row over the seeds, e.g. --seeds 0 1 2")
    device: str = _run_option("auto", "auto, cpu or cuda")
    threads: int = _run_option(
        0, "torch CPU threads; 0 = auto: 1 when training on the CPU (small models gain little from "
           "more, and lose badly on a shared machine), torch's default on a GPU")
    stop_after: str | None = _run_option(None, "stop after this stage", choices=STAGES)
    figure_slices: int = 4
    progress: bool = _run_option(
        True, "no progress bars (they are off anyway when stderr is not a terminal: a redirected run "
              "logs one line per stage and per epoch instead)")

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name in ("data", "cache_dir", "segmenter_weights", "sam_checkpoint", "out"):
            value = getattr(self, name)
            if value is not None:
                set_(name, Path(value).expanduser().absolute())
        description = self._describe()
        object.__setattr__(self, "_description", description)
        if description is None:
            source = _letters("A" if self.source is None else self.source, "--source") \
                if isinstance(self.source, str) or self.source is None else ()
            if len(source) != 1:
                raise ConfigError(f"--source: give one domain letter from {', '.join(DOMAINS)}, "
                                  f"got {self.source!r}")
        else:
            if self.source is None:
                raise ConfigError(f"--source: give the source domain, one of "
                                  f"{', '.join(description.domains)} (--data {description.source})")
            source = _names(self.source, "--source", description)
            if len(source) != 1:
                raise ConfigError(f"--source: give one domain, got {self.source!r}")
        set_("source", source[0])
        if self.targets is not None:
            if self.all_sources:
                raise ConfigError("--targets cannot be combined with --all-sources (each run "
                                  "evaluates on every other domain)")
            targets = (_letters if description is None else
                       lambda value, name: _names(value, name, description))(self.targets, "--targets")
            if self.source in targets:
                raise ConfigError(f"--targets: {self.source} is the source domain; targets must be "
                                  "unseen domains")
            set_("targets", targets)
        if description is not None:
            for domain in (self.source, *self.target_domains):
                if domain in SPLIT_NAMES or not _DOMAIN_NAME_RE.match(domain):
                    raise ConfigError(
                        f"--data {description.source}: domain {domain!r} cannot name a run's split "
                        f"(it names files of the run folder): use letters, digits, '_', '-', '.', not "
                        f"{'/'.join(SPLIT_NAMES)}; rename it in the description or leave it out with "
                        "--targets")
        if self.sam not in SAM_CHOICES:
            raise ConfigError(f"--sam: unknown SAM variant {self.sam!r}; choose one of "
                              f"{', '.join(SAM_CHOICES)}")
        if self.empty_box not in EMPTY_BOX_POLICIES:
            raise ConfigError(f"--empty-box must be one of {EMPTY_BOX_POLICIES}, got {self.empty_box!r}")
        if self.decoder_prompts not in PROMPT_KINDS:
            raise ConfigError(f"--decoder-prompts must be one of {PROMPT_KINDS}, got {self.decoder_prompts!r}")
        if self.sam_scaling is not None and self.sam_scaling not in SAM_SCALINGS:
            raise ConfigError(f"--sam-scaling must be one of {SAM_SCALINGS}, got {self.sam_scaling!r}")
        if (self.sam_checkpoint is not None and self.sam_scaling is None
                and "medsam" in Path(self.sam_checkpoint).name.lower()):
            # Right architecture, wrong scaling would be a silent error: the user must choose.
            raise ConfigError(f"--sam-checkpoint {self.sam_checkpoint} looks like a MedSAM checkpoint, "
                              "which expects each slice min-max scaled to 0..1 without SAM's mean/std: "
                              "say which input scaling to use, --sam-scaling medsam (or sam)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.embedding_cache not in EMBEDDING_CACHES:
            raise ConfigError(f"--embedding-cache must be 'disk' or 'memory', got {self.embedding_cache!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ConfigError(f"--stop-after must be one of {', '.join(STAGES)}, got {self.stop_after!r}")
        if isinstance(self.crossfit_folds, bool) or not isinstance(self.crossfit_folds, int) or self.crossfit_folds < 2:
            raise ConfigError(f"--crossfit-folds must be an integer of at least 2, got {self.crossfit_folds!r}")
        positive = ("segmenter_batch", "decoder_batch", "filter_cells", "figure_slices")
        optional_positive = ("segmenter_epochs", "decoder_epochs", "tile_size", "synthetic_cases", "downscale")
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is None and name in optional_positive:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("box_jitter", "threads"):  # the seeds are checked below
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-negative integer, got {value!r}")
        if self.compact_pretrain_steps is not None and (
                not isinstance(self.compact_pretrain_steps, int) or self.compact_pretrain_steps < 0):
            raise ConfigError(f"compact_pretrain_steps must be None or >= 0, got {self.compact_pretrain_steps!r}")
        if self.seeds is not None:
            set_("seeds", tuple(self.seeds))
            if not self.seeds or len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"--seeds: give distinct seeds, got {list(self.seeds)}")
            if self.all_sources:
                raise ConfigError("--seeds cannot be combined with --all-sources; run each seed's "
                                  "--all-sources with --seed")
        for seed in (self.seed, *(self.seeds or ())):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"--seed(s) must be integers from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
        for name in ("segmenter_lr", "decoder_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite positive number, got {value!r}")
        if (isinstance(self.box_noise, bool) or not isinstance(self.box_noise, (int, float))
                or not 0.0 <= self.box_noise < 1.0):
            raise ConfigError(f"--box-noise must be a fraction in [0, 1), got {self.box_noise!r}")
        set_("theta2_sweep", tuple(float(t) for t in self.theta2_sweep))
        for name, value in (("theta1", self.theta1), ("theta2", self.theta2),
                            *(("theta2_sweep", t) for t in self.theta2_sweep)):
            if not 0.0 < float(value) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must lie strictly between 0 and 1, got {value!r}")
        if self.sam != "compact" and self.compact_pretrain_steps is not None:
            raise ConfigError("compact_pretrain_steps applies to --sam compact only")

    def _describe(self) -> DatasetDescription | None:
        """The dataset description ``--data`` names (its manifest read, not its files), or None for
        the six-site release and the synthetic set; ``--labels`` replaces its table."""
        if self.labels is not None and not isinstance(self.labels, str):
            raise ConfigError(f"--labels: give the table as text, e.g. 'inner=1,outer=2', got {self.labels!r}")
        if self.data is None:
            if self.labels is not None:
                raise ConfigError(f"--labels: the built-in synthetic set has one structure, read as "
                                  f"{PROSTATE_LABELS.spec()}")
            return None
        labels = None if self.labels is None else LabelTable.parse(self.labels, where="--labels")
        if not (Path(self.data).is_file() or is_description(Path(self.data))):
            return None  # the six-site release: its labels are read with `labels` (label_table)
        return describe_dataset(self.data, labels=labels)

    # ------------------------------------------------------------------ derived values
    @property
    def dataset(self) -> DatasetDescription | None:
        """The dataset description of ``--data`` (manifest read, files not yet checked), or None."""
        return self._description

    @property
    def data_form(self) -> str:
        """'synthetic', 'six-site' or the description's form ('csv', 'json', 'nnunet')."""
        if self.dataset is not None:
            return self.dataset.form
        return "synthetic" if self.data is None else "six-site"

    @property
    def label_table(self) -> LabelTable:
        """The structures a run segments: the description's table; for the six-site release the
        --labels table (e.g. its ISBI sites' central gland and peripheral zone values apart), else
        prostate=*."""
        if self.dataset is not None:
            return self.dataset.labels
        return PROSTATE_LABELS if self.labels is None else LabelTable.parse(self.labels, where="--labels")

    @functools.cached_property
    def image_channels(self) -> int:
        """1 (grey) or 3 (RGB): the channels the segmenter takes. A 2D description's images are RGB
        when the first image of the source domain is (a run cannot mix both: refused on reading)."""
        if self.dataset is None or not self.dataset.is_2d:
            return 1
        return 3 if read_image_2d(self.dataset.cases_of(self.source)[0].image).ndim == 3 else 1

    @property
    def domains(self) -> tuple[str, ...]:
        """Every domain of the data: the description's names, else the letters A..F."""
        return self.dataset.domains if self.dataset is not None else tuple(DOMAINS)

    @property
    def folds(self) -> int:
        """Cross-fitting folds of this run: ``crossfit_folds`` when the decoder trains on
        cross-fitted boxes, else 0 (no fold segmenters)."""
        return self.crossfit_folds if self.decoder_prompts == "crossfit" else 0

    def notes(self) -> list[str]:
        """Departures from the paper's recipe that a reader of the results must know about (for
        the resolved config; printed at the start of a run and written into results.md)."""
        notes = []
        if self.data is not None and self.segmenter is not None and self.segmenter != GPU_SEGMENTER:
            notes.append(f"the segmenter is {self.segmenter}, not the paper's {GPU_SEGMENTER} (the "
                         f"default on a CPU; pass --segmenter {GPU_SEGMENTER} to use the paper's)")
        return notes

    def prompter(self) -> BoxPrompter:
        """The box filter of this (resolved) config."""
        return BoxPrompter(theta1=self.theta1, downscale=self.downscale, empty_box=self.empty_box)

    @property
    def synthetic(self) -> bool:
        return self.data is None

    @property
    def target_domains(self) -> tuple[str, ...]:
        if self.targets is not None:
            return tuple(t for t in self.targets if t != self.source)
        return tuple(d for d in self.domains if d != self.source)

    def resolved(self) -> "TrainConfig":
        """A copy with every None default filled in (segmenter, tile size, downscale, epochs,
        targets, out)."""
        seg_epochs, dec_epochs = SYNTHETIC_EPOCHS if self.synthetic else REAL_EPOCHS
        name = "all" if self.all_sources else self.source + ("_seeds" if self.seeds else "")
        out = self.out or Path("runs") / f"sammed_fast_{name}"
        segmenter = self.segmenter or (
            GPU_SEGMENTER if resolve_device(self.device).type == "cuda" else CPU_SEGMENTER)
        tile_size = self.tile_size or DEFAULT_TILE[self.sam]
        return dataclasses.replace(
            self,
            segmenter=segmenter,
            tile_size=tile_size,
            downscale=self.downscale or filter_downscale(tile_size, self.filter_cells),
            sam_scaling=self.sam_scaling or "sam",
            segmenter_epochs=self.segmenter_epochs or seg_epochs,
            decoder_epochs=self.decoder_epochs or dec_epochs,
            targets=None if self.all_sources else self.target_domains,
            out=out,
        )

    def for_seed(self, seed: int, out: Path) -> "TrainConfig":
        """The single-seed run of a --seeds run."""
        return dataclasses.replace(self, seed=seed, seeds=None, out=out)

    def for_source(self, source: str, out: Path) -> "TrainConfig":
        """The single-source run of an --all-sources run."""
        return dataclasses.replace(self, source=source, targets=None, all_sources=False, out=out)

    # ------------------------------------------------------------------ (de)serialisation
    def to_json(self) -> dict:
        """Every field (``labels`` only when given), and for a dataset description the data form and
        label table it gives (DERIVED_KEYS, for the reader; not read back)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "labels" and value is None:
                continue
            out[f.name] = str(value) if isinstance(value, Path) else (
                list(value) if isinstance(value, tuple) else value)
        if self.dataset is not None:
            out.update(data_form=self.data_form, label_table=self.label_table.as_mapping())
        return out

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)} | set(DERIVED_KEYS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config.json has unknown fields {unknown} (written by another version?)")
        kwargs = {k: v for k, v in data.items() if k not in DERIVED_KEYS}
        for name in ("targets", "theta2_sweep", "seeds"):
            if kwargs.get(name) is not None:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Fields (other than RESUMABLE_CHANGES) whose values differ, as 'name: a != b'."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k}: {theirs.get(k)!r} != {mine.get(k)!r}" for k in dict.fromkeys([*mine, *theirs])
                if k not in RESUMABLE_CHANGES and mine.get(k) != theirs.get(k)]

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read run config {path}: {error}") from error
