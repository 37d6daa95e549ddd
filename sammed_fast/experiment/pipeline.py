"""One run of the main job, stage by stage, resumable; and the re-evaluation of a finished run.

Stages (experiment.config.STAGES): segmenter -> predict -> boxes -> decoder -> evaluate. With
--resume a stage whose state says finished (and whose outputs exist) is skipped; the first stage
that runs may continue an interrupted fit from its latest checkpoint, and every stage after it is
redone, because its inputs may have changed.

Under torchrun (WORLD_SIZE > 1) every rank runs the same stages in one process group (see
experiment.distributed): training, segmenter predictions, SAM embeddings and evaluation are shared
between the ranks; rank 0 alone writes the run folder, derives the boxes, and (when missing)
writes the synthetic set and the compact SAM, while the others wait.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from sammed_fast.errors import ConfigError
from sammed_fast.experiment import distributed
from sammed_fast.experiment.boxes_stage import compute_split_boxes
from sammed_fast.experiment.config import STAGES, TrainConfig
from sammed_fast.experiment.devices import resolve_device
from sammed_fast.experiment.evaluation import evaluate_run_data
from sammed_fast.experiment.figure import write_figure
from sammed_fast.experiment.fitting import FitResult
from sammed_fast.experiment.report import write_results
from sammed_fast.experiment.run_data import RunData, check_data, check_dataset, data_root, load_run_data
from sammed_fast.experiment.run_folder import RunFolder
from sammed_fast.experiment.run_method import RunMethod, open_finished_run
from sammed_fast.experiment.sam_model import check_sam
from sammed_fast.experiment.sam_stage import train_decoder
from sammed_fast.experiment.segmenter_stage import (CROSSFIT, build_run_segmenter, fold_name, load_predictions,
                                                    predict_splits, train_segmenter)

__all__ = ["preflight", "run_pipeline", "evaluate_run"]


def preflight(config: TrainConfig) -> TrainConfig:
    """Checks everything that can be checked before any work; returns the resolved config."""
    config = config.resolved()
    resolve_device(config.device)
    check_sam(config)
    check_dataset(config, progress=config.progress)
    build_run_segmenter(config)  # unknown name or unusable weights file
    return config


@contextlib.contextmanager
def _cpu_threads(threads: int, device: str):
    """torch's CPU thread count for the duration of a run, restored afterwards.

    threads 0 (auto): one thread when the run computes on the CPU, torch's default otherwise. The
    models of a CPU run are small, so intra-op threads gain little on a dedicated machine, while on a
    shared one OpenMP threads waiting for a busy core made training 5-10x slower (measured on the
    2-core development machine). Results are reproducible for a given thread count.
    """
    before = torch.get_num_threads()
    if threads == 0 and resolve_device(device).type == "cpu":
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _selection(run: RunFolder) -> dict:
    return {stage: {k: run.stage_info(stage)[k] for k in ("best_epoch", "val_dice")}
            for stage in ("segmenter", "decoder")}


def _evaluate(run: RunFolder, data: RunData, config: TrainConfig, method: RunMethod) -> dict:
    predictor = method.with_decoder()
    result = evaluate_run_data(run=run, data=data, config=config, predictor=predictor,
                               cache=method.embeddings(data), extra={"selection": _selection(run)})
    if run.writes:
        write_results(run.paths, result.results, result.cases)
        write_figure(run.paths.figure, result.samples)
    for row, entry in result.results["rows"].items():
        run.scalar(f"results/{row}_dice3d_target_mean", entry["dice3d"]["target_mean"], 0)
    return result.results


def _fit_info(fitted: FitResult) -> dict:
    """state.json info of a training stage; processes x the configured batch = the effective batch."""
    return {"best_epoch": fitted.best_epoch, "val_dice": fitted.best_score,
            "processes": distributed.world_size()}


def _run_stage(stage: str, run: RunFolder, data: RunData, config: TrainConfig, method: RunMethod,
               *, may_resume: bool) -> tuple[list[str], dict]:
    """Runs one stage; returns (outputs relative to the run folder, info for state.json)."""
    device = method.device
    if stage == "segmenter":
        _, fitted = train_segmenter(run, data, config, device, resume=may_resume)
        names = ["segmenter", *(fold_name(k) for k in range(config.folds))]
        return [run.paths.relative(run.paths.checkpoint(name, "best")) for name in names], _fit_info(fitted)
    if stage == "predict":
        predictor = method.with_segmenter()
        return predict_splits(run, data, predictor, device, config=config, progress=config.progress), {}
    if stage == "boxes":  # cheap: rank 0 alone
        def boxes() -> list[str]:
            probs = {name: load_predictions(run, split) for name, split in data.splits.items()}
            crossfit = load_predictions(run, data.splits["train"], name=CROSSFIT) if config.folds else None
            return compute_split_boxes(run, data, probs, config, crossfit=crossfit)

        return distributed.main_only(boxes), {}
    if stage == "decoder":
        predictor = method.with_sam()
        fitted = train_decoder(run, data, config, predictor, method.embeddings(data), device, resume=may_resume)
        return [run.paths.relative(run.paths.checkpoint("decoder", "best"))], _fit_info(fitted)
    if stage == "evaluate":
        _evaluate(run, data, config, method)
        return [run.paths.relative(path) for path in run.paths.evaluation], {}
    raise ValueError(f"unknown stage {stage!r}")


def _rank_config(config: TrainConfig) -> TrainConfig:
    """``config`` as this rank runs it: progress bars on rank 0 only."""
    return config if distributed.is_main() else dataclasses.replace(config, progress=False)


def run_pipeline(config: TrainConfig) -> Path:
    """Runs (or resumes) one single-source run; returns its folder. Under torchrun every rank calls
    it with the same config."""
    with distributed.session(resolve_device(config.device)), _cpu_threads(config.threads, config.device):
        return _run_pipeline(preflight(_rank_config(config)))


def _run_pipeline(config: TrainConfig) -> Path:
    device = resolve_device(config.device)
    run = RunFolder.open(config)
    try:
        root = distributed.main_only(lambda: data_root(config, progress=config.progress))
        if config.dataset is None:  # a description was validated by preflight
            check_data(root, (config.source, *config.target_domains))
        data = load_run_data(config, root, progress=config.progress)
        processes = distributed.world_size()
        run.log(f"source {config.source} (train {len(data.splits['train'].volumes)}, val "
                f"{len(data.splits['val'].volumes)}, test {len(data.splits['test'].volumes)} volumes), "
                f"targets {', '.join(data.targets)}; device {device}; tile {config.tile_size}"
                + (f"; {processes} processes (torchrun)" if processes > 1 else ""))
        for note in config.notes():
            run.log(f"note: {note}")
        method = RunMethod(run, config, device)
        may_skip = config.resume
        for stage in STAGES:
            if may_skip and run.is_finished(stage):
                run.log(f"stage {stage}: already finished, skipped")
            else:
                run.start_stage(stage, may_resume=may_skip)
                outputs, info = _run_stage(stage, run, data, config, method, may_resume=may_skip)
                run.finish_stage(stage, outputs=outputs, info=info)
                may_skip = False
            if stage == config.stop_after:
                run.log(f"stopping after stage {stage} (--stop-after)")
                break
    finally:
        run.close()
    return run.path


def evaluate_run(run_dir: str | Path, *, device: str = "auto", progress: bool = True) -> dict:
    """Re-evaluates a finished run folder with the same code path as training; rewrites its
    results.json, results.md, cases.csv and figure.png and returns the results. Under torchrun the
    ranks share the work, rank 0 writes, and every rank returns the results."""
    run_dir = Path(run_dir)
    _, stored = open_finished_run(run_dir)
    with distributed.session(resolve_device(device)), _cpu_threads(stored.threads, device):
        return _evaluate_run(run_dir, stored, device=device, progress=progress and distributed.is_main())


def _evaluate_run(run_dir: Path, stored: TrainConfig, *, device: str, progress: bool) -> dict:
    config = preflight(dataclasses.replace(stored, device=device, progress=progress, resume=True))
    run = RunFolder.open_existing(run_dir, config)
    try:
        for stage in STAGES[:-1]:
            if not run.is_finished(stage):
                raise ConfigError(f"--run {run_dir}: stage {stage!r} has not finished; finish the run "
                                  f"with `python -m sammed_fast.train --out {run_dir} --resume`")
        root = distributed.main_only(lambda: data_root(config, progress=progress))
        data = load_run_data(config, root, progress=progress)
        run.start_stage("evaluate", may_resume=False)
        results = _evaluate(run, data, config, RunMethod(run, config, resolve_device(device), create_sam=False))
        run.finish_stage("evaluate", outputs=[run.paths.relative(path) for path in run.paths.evaluation])
    finally:
        run.close()
    return results
