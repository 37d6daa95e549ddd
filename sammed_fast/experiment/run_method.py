"""The method of a run: the :class:`~sammed_fast.method.predictor.Predictor` of a run folder (its
config's box prompter and theta2, its selected segmenter, its SAM base weights with its selected
decoder), built part by part as the run's stages make the parts, and the embedding cache of its
SAM. Training, evaluation and prediction all get their predictor here."""
from __future__ import annotations

from pathlib import Path

import torch

from sammed_fast.errors import ConfigError
from sammed_fast.experiment import distributed
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.embedding_cache import EmbeddingCache
from sammed_fast.experiment.run_data import RunData
from sammed_fast.experiment.run_folder import MARKER, RunFolder, RunPaths, is_run_folder
from sammed_fast.experiment.sam_model import base_checkpoint, build_run_sam, weights_fingerprint
from sammed_fast.experiment.sam_stage import load_decoder
from sammed_fast.experiment.segmenter_stage import load_segmenter
from sammed_fast.method.predictor import Predictor

__all__ = ["RunMethod", "open_finished_run"]


class RunMethod:
    """The predictor of ``run`` on ``device``; its parts are loaded on first use."""

    def __init__(self, run: RunFolder, config: TrainConfig, device: torch.device, *,
                 create_sam: bool = True) -> None:
        self.run, self.config, self.device = run, config, device
        self.create_sam = create_sam  # False: never pretrain/write SAM base weights (finished runs)
        self.predictor = Predictor(segmenter=None, prompter=config.prompter(), sam=None, theta2=config.theta2,
                                   device=device, mapper=distributed.map_sharded)
        self._checkpoint: Path | None = None
        self._caches: dict[int, EmbeddingCache] = {}

    def with_segmenter(self) -> Predictor:
        """The predictor with the run's selected segmenter (checkpoints/segmenter_best.pt)."""
        if self.predictor.segmenter is None:
            self.predictor.segmenter = load_segmenter(self.run, self.config, self.device)
        return self.predictor

    def with_sam(self) -> Predictor:
        """The predictor with the run's SAM at its base weights (the decoder as it starts)."""
        if self.predictor.sam is None:
            self._checkpoint = distributed.main_only(
                lambda: base_checkpoint(self.run, self.config, create=self.create_sam))
            self.predictor.sam = build_run_sam(self._checkpoint, self.config, self.device,
                                               compile_parts=self.config.compile)
        return self.predictor

    def with_decoder(self) -> Predictor:
        """The predictor with the run's SAM and its selected decoder (checkpoints/decoder_best.pt)."""
        load_decoder(self.run, self.with_sam().sam)
        return self.predictor

    def embeddings(self, data: RunData) -> EmbeddingCache:
        """The canvas embeddings of ``data``'s splits under the run's SAM (built on first use)."""
        self.with_sam()
        if id(data) not in self._caches:
            paths = self.run.paths if self.config.embedding_cache == "disk" else None
            self._caches[id(data)] = EmbeddingCache(
                predictor=self.predictor, data=data, weights_id=weights_fingerprint(self._checkpoint),
                paths=paths, progress=self.config.progress)
        return self._caches[id(data)]


def open_finished_run(run_dir: Path, config: TrainConfig | None = None, *, option: str = "--run"
                      ) -> tuple[RunFolder, TrainConfig]:
    """A finished run folder for reading (its config, unless given): a ConfigError names what is
    missing when ``run_dir`` is not a run folder or has no config.json."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise ConfigError(f"{option} {run_dir}: run folder does not exist")
    if not is_run_folder(paths.root):
        raise ConfigError(f"{option} {run_dir}: not a sammed_fast run folder (no {MARKER} marker)")
    if not paths.config.is_file():
        raise ConfigError(f"{option} {run_dir}: incomplete run folder (no config.json); finish it with "
                          f"`python -m sammed_fast.train --out {run_dir} --resume`")
    config = config or TrainConfig.read(paths.config)
    return RunFolder(path=paths.root, config=config), config
